"""Vision Mamba (ViM-T): official weight layout, the PyTorch scan and conv against step-by-step
references, the bidirectional mixer, class-token tracking under pruning, MAC counts, kernel errors."""
import argparse
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

from repshift.configs import CONFIG_DIR
from repshift.models.vim import (
    BiMambaMixer,
    VisionMamba,
    count_macs,
    gather_streams,
    load_official_checkpoint,
    load_state_dict_checked,
)
from repshift.ops import (
    KernelsUnavailableError,
    causal_conv1d,
    causal_conv_macs,
    scan_macs,
    selective_scan,
    selective_scan_reference,
    tally_macs,
)

# 64x64 input: 16 patches + the class token at index 8; width 32 -> d_inner 64, dt_rank 2.
TINY = dict(img_size=64, embed_dim=32, depth=2, d_state=4, num_classes=5)


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return VisionMamba(**{**TINY, **overrides}).eval()


def scan_inputs(batch=2, dim=16, length=197, state=4, dtype=torch.float32, seed=0):
    """Magnitudes as in a trained ViM: Δ = softplus(~N(-2, 1)), A = -(1..state) scaled per channel."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(
        u=r(batch, dim, length), delta=r(batch, dim, length) - 2, B=r(batch, state, length), C=r(batch, state, length),
        A=-torch.arange(1, state + 1, dtype=dtype) * torch.rand(dim, 1, generator=g, dtype=dtype).add(0.5),
        D=r(dim), z=r(batch, dim, length), delta_bias=r(dim) * 0.1, delta_softplus=True,
    )


# ------------------------------------------------------------------------------ official layout
def official_vim_t_shapes():
    """Key names and shapes of vim_t_midclstok_76p1acc.pth (research notes §4.3)."""
    shapes = {
        "patch_embed.proj.weight": (192, 3, 16, 16), "patch_embed.proj.bias": (192,),
        "cls_token": (1, 1, 192), "pos_embed": (1, 197, 192),
        "head.weight": (1000, 192), "head.bias": (1000,), "norm_f.weight": (192,),
    }
    per_direction = {"conv1d.weight": (384, 1, 4), "conv1d.bias": (384,), "x_proj.weight": (44, 384),
                     "dt_proj.weight": (384, 12), "dt_proj.bias": (384,)}
    for i in range(24):
        p = f"layers.{i}."
        shapes[p + "norm.weight"] = (192,)
        shapes[p + "mixer.in_proj.weight"] = (768, 192)
        shapes[p + "mixer.out_proj.weight"] = (192, 384)
        for suffix in ("", "_b"):
            for name, shape in per_direction.items():
                module, param = name.split(".")
                shapes[f"{p}mixer.{module}{suffix}.{param}"] = shape
        shapes[p + "mixer.A_log"] = shapes[p + "mixer.A_b_log"] = (384, 16)
        shapes[p + "mixer.D"] = shapes[p + "mixer.D_b"] = (384,)
    return shapes


CONFIGS = CONFIG_DIR / "model"


def test_vim_t_config_has_exactly_the_official_keys_and_shapes():
    config = yaml.safe_load((CONFIGS / "vim_t.yaml").read_text())
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = timm.create_model(config["name"], **config["kwargs"])
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official_vim_t_shapes()
    assert sum(p.numel() for p in model.parameters()) == 7_148_008  # "7M" in Vim's README
    tiny_config = yaml.safe_load((CONFIGS / "vim_tiny.yaml").read_text())
    with torch.device("meta"):
        small = timm.create_model(tiny_config["name"], **tiny_config["kwargs"])
    assert small.pos_embed.shape == (1, 197, 32) and small.cls_position == 98


def test_official_checkpoint_format_loads_strictly(tmp_path):
    source = tiny(seed=1)
    # hustvl/Vim saves the weights under "model" beside the training argparse.Namespace.
    payload = {"model": source.state_dict(), "args": argparse.Namespace(lr=5e-4, model="vim"), "epoch": 299}
    torch.save(payload, tmp_path / "vim.pth")
    model = timm.create_model("vim_t_midclstok", **TINY).eval()
    load_official_checkpoint(model, str(tmp_path / "vim.pth"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(images), source(images))


def test_a_wrong_shape_names_the_key_and_both_shapes():
    model = tiny()
    state = model.state_dict()
    state["layers.1.mixer.x_proj.weight"] = torch.zeros(11, 64)
    with pytest.raises(ValueError, match=r"layers\.1\.mixer\.x_proj\.weight has shape \(11, 64\) in the checkpoint "
                                         r"but \(10, 64\) in the model"):
        load_state_dict_checked(model, state)
    state = model.state_dict()
    del state["layers.0.mixer.A_b_log"]
    with pytest.raises(KeyError, match=r"missing layers\.0\.mixer\.A_b_log, unexpected none"):
        load_state_dict_checked(model, state)


def test_registered_with_timm_with_vims_preprocessing():
    model = timm.create_model("vim_t_midclstok", **TINY)
    assert isinstance(model, VisionMamba) and model.head.out_features == 5
    config = timm.data.resolve_data_config(model=model)
    assert (config["interpolation"], config["crop_pct"], config["input_size"]) == ("bicubic", 0.875, (3, 64, 64))
    with pytest.raises(ValueError, match="model.checkpoint="):
        timm.create_model("vim_t_midclstok", pretrained=True)


# --------------------------------------------------------------------------- scan and conv maths
@pytest.mark.parametrize("method", ["blocked", "parallel"])
@pytest.mark.parametrize("length,block", [(197, None), (197, 1), (197, 197), (17, 5), (1, None)])
def test_scan_matches_the_step_by_step_reference(method, length, block):
    x = scan_inputs(length=length)
    expected = selective_scan_reference(**x)
    assert torch.allclose(selective_scan(**x, method=method, block=block), expected, atol=1e-5, rtol=1e-5)
    bare = {k: x[k] for k in ("u", "delta", "A", "B", "C")}  # no skip, gate, bias or softplus
    bare["delta"] = bare["delta"].abs() * 0.1
    assert torch.allclose(selective_scan(**bare, method=method, block=block), selective_scan_reference(**bare),
                          atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["blocked", "parallel"])
def test_scan_matches_the_reference_when_decays_underflow(method):
    # Large steps and strongly negative A (Δ·A down to about -400): the exp floor must not show.
    x = scan_inputs(length=64)
    x["delta"] = x["delta"] + 6
    x["A"] = x["A"] * 40
    assert torch.allclose(selective_scan(**x, method=method), selective_scan_reference(**x), atol=1e-5, rtol=1e-5)


def test_scan_in_float64_agrees_to_float64_rounding():
    x = scan_inputs(dtype=torch.float64)
    out = selective_scan(**x)
    assert out.dtype == torch.float64
    assert torch.allclose(out, selective_scan_reference(**x), atol=1e-12, rtol=1e-12)


def test_the_reference_follows_the_recurrence_by_hand():
    # One channel, one state, 3 steps, Δ = 1 (no softplus), A = -ln 2 -> decay 1/2, B = C = 1, D = 0:
    # h = [1, 1/2 + 2, 5/4 + 3] = [1, 2.5, 4.25].
    u = torch.tensor([[[1.0, 2.0, 3.0]]])
    ones = torch.ones(1, 1, 3)
    A = torch.tensor([[-torch.log(torch.tensor(2.0))]])
    for fn in (selective_scan_reference, selective_scan):
        assert torch.allclose(fn(u, ones, A, ones, ones), torch.tensor([[[1.0, 2.5, 4.25]]]))


def test_causal_conv_matches_a_hand_loop_and_the_padded_module():
    torch.manual_seed(0)
    x, conv = torch.randn(2, 3, 7), torch.nn.Conv1d(3, 3, 4, groups=3, padding=3)
    w, b = conv.weight[:, 0].detach(), conv.bias.detach()
    expected = torch.zeros(2, 3, 7)
    for t in range(7):
        for k in range(4):  # output t sees inputs t-3 .. t
            if t - 3 + k >= 0:
                expected[:, :, t] += w[:, k] * x[:, :, t - 3 + k]
    expected += b[:, None]
    with torch.no_grad():
        assert torch.allclose(causal_conv1d(x, conv.weight, b), expected, atol=1e-6)
        assert torch.allclose(causal_conv1d(x, w, b, activation="silu"), F.silu(expected), atol=1e-6)
        assert torch.allclose(conv(x)[..., :7], expected, atol=1e-6)  # Vim's slow path: pad both sides, truncate


def test_gradients_flow_through_the_scan():
    x = scan_inputs(length=9)
    x["A"].requires_grad_(True)
    selective_scan(**x).sum().backward()
    expected = torch.autograd.grad(selective_scan_reference(**x).sum(), x["A"])[0]
    assert torch.allclose(x["A"].grad, expected) and expected.abs().sum() > 0
    model = tiny()
    model(torch.randn(1, 3, 64, 64)).sum().backward()
    assert model.layers[0].mixer.A_b_log.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------- the mixer
def mixer_by_the_formula(mixer, hidden):
    """bimamba v2 written out with the module conv, dt_proj's own bias and the reference scan."""
    L = hidden.shape[1]

    def direction(xz, conv, x_proj, dt_proj, A_log, D):
        x, z = xz.chunk(2, dim=1)
        x = F.silu(conv(x)[..., :L])
        dt, B, C = x_proj(x.mT).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
        return selective_scan_reference(x, dt_proj(dt).mT, -A_log.exp(), B.mT, C.mT, D, z, delta_softplus=True)

    xz = mixer.in_proj(hidden).mT
    forward = direction(xz, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D)
    backward = direction(xz.flip(-1), mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log, mixer.D_b)
    return mixer.out_proj(((forward + backward.flip(-1)) / 2).mT)


@torch.no_grad()
def test_mixer_matches_the_written_out_formula():
    torch.manual_seed(0)
    mixer = BiMambaMixer(32, d_state=4)
    mixer.reset_parameters(depth=2)
    hidden = torch.randn(2, 17, 32)
    assert torch.allclose(mixer(hidden), mixer_by_the_formula(mixer, hidden), atol=1e-5)


@torch.no_grad()
def test_with_shared_direction_parameters_the_mixer_commutes_with_reversal():
    # out(x) = P((f(x) + rev f(rev x)) / 2): if the backward direction has the forward's
    # parameters, reversing the input reverses the output; a missing or extra flip breaks this.
    torch.manual_seed(0)
    mixer = BiMambaMixer(32, d_state=4)
    mixer.reset_parameters(depth=2)
    for name in ("conv1d", "x_proj", "dt_proj"):
        getattr(mixer, name + "_b").load_state_dict(getattr(mixer, name).state_dict())
    mixer.A_b_log.copy_(mixer.A_log)
    mixer.D_b.copy_(mixer.D)
    hidden = torch.randn(2, 17, 32)
    assert torch.allclose(mixer(hidden.flip(1)), mixer(hidden).flip(1), atol=1e-5)
    mixer.D_b.add_(1.0)  # directions differ again: the symmetry is gone
    assert not torch.allclose(mixer(hidden.flip(1)), mixer(hidden).flip(1), atol=1e-3)


# ------------------------------------------------------------------------ class token and pruning
@torch.no_grad()
def test_class_token_sits_in_the_middle_and_feeds_the_head():
    model = tiny()
    images = torch.randn(2, 3, 64, 64)
    tokens, cls_index = model.embed(images)
    assert tokens.shape == (2, 17, 32) and cls_index.tolist() == [8, 8]
    assert torch.allclose(tokens[:, 8], (model.cls_token[0] + model.pos_embed[:, 8]).expand(2, -1))
    hidden, residual, _ = model.forward_layers(tokens, cls_index)
    assert torch.equal(model.forward_features(images), model.final_norm(hidden, residual)[:, 8])


class PruneAfterFirstLayer(VisionMamba):
    """A stand-in for a pruning adapter: keeps ``keep`` after layer 0 and records the streams."""

    keep: torch.Tensor

    def forward_layers(self, hidden, cls_index):
        residual = None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual)
            if i == 0:
                self.before = (hidden, residual, cls_index)
                hidden, residual, cls_index = gather_streams(hidden, residual, cls_index, self.keep)
                self.after = (hidden, residual, cls_index)
        return hidden, residual, cls_index


@torch.no_grad()
def test_after_pruning_the_head_still_reads_the_class_token():
    model = PruneAfterFirstLayer(**TINY).eval()
    model.load_state_dict(tiny(seed=3).state_dict())
    images = torch.randn(3, 3, 64, 64)
    # Per sample: drop only after the class token (index stays 8), only before it (-> 3),
    # on both sides (-> 5); 12 of 17 tokens kept, in scan order.
    model.keep = torch.tensor([
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        [0, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 4],
        [1, 2, 4, 6, 7, 8, 9, 11, 12, 13, 15, 16],
    ]).sort(dim=1).values
    features = model.forward_features(images)
    (h0, r0, c0), (h1, r1, c1) = model.before, model.after
    assert c1.tolist() == [8, 3, 5]
    rows = torch.arange(3)
    assert torch.equal(h1[rows, c1], h0[rows, c0]) and torch.equal(r1[rows, c1], r0[rows, c0])
    assert torch.equal(r1, r0.gather(1, model.keep[..., None].expand(-1, -1, 32)))  # both streams, same indices
    hidden, residual = model.layers[1](h1, r1)
    assert torch.equal(features, model.final_norm(hidden, residual)[rows, c1])


@torch.no_grad()
def test_keeping_every_token_changes_nothing():
    model = PruneAfterFirstLayer(**TINY).eval()
    reference = tiny(seed=4)
    model.load_state_dict(reference.state_dict())
    model.keep = torch.arange(17).expand(2, -1)
    images = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(images), reference(images))


# ------------------------------------------------------------------------------------------ MACs
def test_macs_count_linear_layers_and_convs_and_the_scans_explicitly():
    model = tiny()
    macs = count_macs(model, torch.randn(1, 3, 64, 64))
    L, d, inner, state, rank = 17, 32, 64, 4, 2
    per_layer = L * d * 2 * inner + 2 * (L * inner * (rank + 2 * state) + L * rank * inner) + L * inner * d
    convs = 2 * 2 * L * inner * 4  # 2 layers x 2 directions, width 4
    assert macs["counted"] == 2 * per_layer + 16 * (3 * 16 * 16) * d + d * 5 + convs
    assert macs["causal_conv"] == convs
    assert macs["scan"] == 2 * 2 * L * inner * (6 * state + 5) // 2 == 63_104
    assert macs["total"] == macs["counted"] + macs["scan"]


def test_flop_counter_sees_the_torch_conv_as_counted_and_not_the_scan():
    x = scan_inputs(length=33)
    with tally_macs() as tally, FlopCounterMode(display=False) as counter:
        selective_scan(**x)
    assert counter.get_total_flops() == 0 and tally.scan == scan_macs(2, 33, 16, 4)
    conv_input, weight = torch.randn(2, 16, 33), torch.randn(16, 1, 4)
    with tally_macs() as tally, FlopCounterMode(display=False) as counter:
        causal_conv1d(conv_input, weight)
    assert counter.get_total_flops() // 2 == tally.conv == causal_conv_macs(2, 33, 16, 4)


# ----------------------------------------------------------------------------------- bad requests
def test_cuda_backend_without_the_kernels_fails_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # makes `import mamba_ssm` raise ImportError
    monkeypatch.setitem(sys.modules, "causal_conv1d", None)
    x = scan_inputs(length=5)
    with pytest.raises(KernelsUnavailableError, match="needs the mamba_ssm package.*backend='torch'"):
        selective_scan(**x, backend="cuda")
    with pytest.raises(KernelsUnavailableError, match="needs the causal_conv1d package"):
        causal_conv1d(x["u"], torch.randn(16, 4), backend="cuda")
    model = tiny(scan_backend="cuda").requires_grad_(False)
    with pytest.raises(KernelsUnavailableError, match="scan_backend=torch"):
        model(torch.randn(1, 3, 64, 64))
    model.scan_backend = "auto"  # falls back to PyTorch without kernels or a GPU
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    with pytest.raises(ValueError, match="scan_backend='triton' is not one of"):
        model.scan_backend = "triton"
    with pytest.raises(ValueError, match="method 'fast' is not one of"):
        selective_scan(**x, method="fast")
