"""The timm CNN adapter (EfficientNet family, ConvNeXt): equivalence, scores by hand, grids, GMACs, bad input.

Models are timm's own architectures with random weights (counting and equivalence need none), their norms
and ConvNeXt's layer scales drawn away from their initial values so that every branch matters.
"""

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet

import repshift
from repshift.bench import count_gmacs
from repshift.patch.timm_cnn import grid_sizes, scored_stages, stages


def cnn(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias, 0.0, 0.1)
        if getattr(module, "gamma", None) is not None:  # ConvNeXt layer scale starts at 1e-6
            nn.init.uniform_(module.gamma, 0.5, 1.5)
    return model.eval()


def images(batch=2, height=64, width=64, seed=1):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def capture_input(module):
    seen = {}
    handle = module.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    return seen, handle


def stage_input_before_and_after(name, stage, **schedule):
    """What ``stage`` of model ``name`` receives on :func:`images`, unpatched and then patched with ``schedule``
    (score maps recorded); returns (unpatched input, patched input, patched model)."""
    model = cnn(name)
    x = images()
    reference, handle = capture_input(stage(model))
    model(x)
    handle.remove()
    repshift.patch(model, **schedule)
    model.repshift.record = True
    pruned, _ = capture_input(stage(model))
    model(x)
    return reference["x"], pruned["x"], model


def capture_io(module):
    seen = {}
    handle = module.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    return seen, handle


# --------------------------------------------------------------------------- grids, tokens and GMACs


def test_grid_sizes_at_224():
    lite0 = timm.create_model("tf_efficientnet_lite0")
    sizes = grid_sizes(lite0, (224, 224), layers=(1, 2), num=(8, 4))
    # stem 112; blocks.1 and .2 and .3 and .5 halve (ceil); .0, .4, .6 keep the grid
    assert [(s["stage"], s["output"], s["pruned"]) for s in sizes] == [
        ("blocks.0", (112, 112), None), ("blocks.1", (56, 56), (48, 48)), ("blocks.2", (24, 24), (20, 20)),
        ("blocks.3", (10, 10), None), ("blocks.4", (10, 10), None), ("blocks.5", (5, 5), None), ("blocks.6", (5, 5), None)]
    convnext = timm.create_model("convnext_atto")
    assert [(s["output"], s["pruned"]) for s in grid_sizes(convnext, (224, 224), (0, 1), (8, 4))] == [
        ((56, 56), (48, 48)), ((24, 24), (20, 20)), ((10, 10), None), ((5, 5), None)]


@pytest.mark.parametrize("name, schedule, side, expected_tokens", [
    # 70 -> stem 35 (TF "same": ceil) -> blocks.0 35 -> .1 18, pruned 15 -> .2 8, pruned 6 -> .3 3 -> .4 3 -> .5 2 -> .6 2
    ("tf_efficientnet_lite0", ((1, 2), (3, 2)), 70, [35 * 35, 35 * 35, 15 * 15, 6 * 6, 9, 9, 4]),
    # 70 -> stem 17 (4x4/4, no padding: floor) -> stages.0 17, pruned 13 -> .1 6 (2x2/2: floor), pruned 4 -> .2 2 -> .3 1
    ("convnext_atto", ((0, 1), (4, 2)), 70, [17 * 17, 13 * 13, 4 * 4, 2 * 2]),
])
@torch.no_grad()
def test_real_forward_has_the_predicted_grids(name, schedule, side, expected_tokens):
    model = cnn(name)
    layers, num = schedule
    repshift.patch(model, metric="l2", layers=layers, num=num, mode="token")
    features = model.forward_features(images(height=side, width=side))
    assert model.repshift.tokens == expected_tokens
    predicted = grid_sizes(model, (side, side), layers, num)
    handed_on = [s["pruned"] or s["output"] for s in predicted]
    assert [h * w for h, w in handed_on[:-1]] == expected_tokens[1:]
    assert features.shape[2:] == handed_on[-1]


class Cropped(nn.Module):
    """The unpatched model's own modules with each scheduled stage's output cropped: the reference pruned forward."""

    def __init__(self, model, drops):
        super().__init__()
        self.model, self.drops = model, drops

    def forward(self, x):
        model = self.model
        x = model.bn1(model.conv_stem(x)) if isinstance(model, EfficientNet) else model.stem(x)
        for layer, stage in enumerate(stages(model)):
            x = stage(x)
            if layer in self.drops:
                x = x[:, :, : x.shape[2] - self.drops[layer], : x.shape[3] - self.drops[layer]]
        if isinstance(model, EfficientNet):
            return model.forward_head(model.bn2(model.conv_head(x)))
        return model.forward_head(model.norm_pre(x))


def reference_gmacs(model, drops) -> float:
    with FlopCounterMode(display=False) as counter:
        Cropped(model, drops)(torch.zeros(1, 3, 224, 224))
    return counter.get_total_flops() / 2e9


@pytest.mark.parametrize("name, layers, base", [
    # timm's model cards list 0.4 and 4.47 GMACs; torch's counter (repshift.bench) leaves out norms and activations
    ("tf_efficientnet_lite0", (1, 2), 0.385),
    ("convnext_tiny", (0, 1), 4.456),
])
@torch.no_grad()
def test_gmacs_count_the_pruned_grids(name, layers, base):
    model = timm.create_model(name).eval()
    assert count_gmacs(model) == pytest.approx(base, abs=0.005)
    expected = reference_gmacs(model, dict(zip(layers, (8, 4))))
    print(f"{name}: {count_gmacs(model):.3f} GMACs unpruned, {expected:.3f} with num=(8, 4) at stages {layers}")
    assert expected < 0.8 * base
    for mode in ("line", "token"):
        repshift.patch(model, metric="l2", layers=layers, num=(8, 4), mode=mode)
        assert count_gmacs(model) == pytest.approx(expected, rel=1e-6)
        repshift.unpatch(model)


# --------------------------------------------------------------------------- equivalence and scores


@pytest.mark.parametrize("name, site, mode", [
    ("tf_efficientnet_lite0", "mlp", "line"), ("tf_efficientnet_lite0", "stage", "token"),
    ("efficientnet_b0", "mlp", "token"),  # squeeze-excite in every block
    ("tf_efficientnetv2_b0", "stage", "line"),  # conv-bn-act and edge-residual blocks
    ("convnext_atto", "mlp", "token"), ("convnext_atto", "stage", "line"),
    ("convnext_zepto_rms", "mlp", "line"),  # conv MLP (1x1 convs), RMS norms
])
@torch.no_grad()
def test_nothing_dropped_is_the_plain_forward(name, site, mode):
    model = cnn(name)
    x = images()
    reference = model(x)
    classes = [type(model)] + [type(stage) for stage in stages(model)]
    layers = tuple(scored_stages(model))
    repshift.patch(model, metric="l2", site=site, layers=layers, num=0, mode=mode)
    model.repshift.record = True  # every stage scores through the adapter's own block code
    assert torch.equal(model(x), reference)
    assert len(model.repshift.recorded) == len(classes) - 1
    repshift.unpatch(model)
    assert [type(model)] + [type(stage) for stage in stages(model)] == classes
    assert torch.equal(model(x), reference)


@torch.no_grad()
def test_convnext_scores_are_the_shift_of_the_last_block():
    # stages.0 of ConvNeXt-atto has two blocks; its last: out = x + gamma * mlp(norm(dwconv(x))) (shortcut = x)
    model = cnn("convnext_atto")
    block = model.stages[0].blocks[-1]
    seen, _ = capture_io(block)
    raw_seen = {}
    assert block.use_conv_mlp  # ConvNeXt-atto: 1x1-conv MLP, NCHW throughout
    block.mlp.register_forward_hook(lambda m, args, out: raw_seen.update(raw=out))
    x = images()
    model(x)
    x_in, out, raw = seen["x"], seen["out"], raw_seen["raw"]
    expected = {
        "literal": ((out - x_in) - x_in).norm(dim=1),  # D(gamma * F(x), x)
        "update": (out - x_in).norm(dim=1),  # D(x + gamma * F(x), x)
        "normed": (raw - x_in).norm(dim=1),  # D(F(x), x): before the layer scale
    }
    for reading, want in expected.items():
        repshift.patch(model, metric="l2", reading=reading, layers=(), num=(), mode="line")
        model.repshift.record = True
        model(x)
        assert torch.allclose(model.repshift.recorded[0], want, atol=1e-4), reading
        repshift.unpatch(model)
    assert not torch.allclose(expected["literal"], expected["normed"])  # the layer scale matters


@torch.no_grad()
def test_efficientnet_scores_are_the_shift_of_the_last_residual_block():
    model = cnn("tf_efficientnet_lite0")
    seen, _ = capture_io(model.blocks[3][-1])  # blocks.3: one block 40 -> 80 (stride 2), then two residual ones
    x = images()
    model(x)
    branch = seen["out"] - seen["x"]
    for reading, want in (("literal", (branch - seen["x"]).abs().sum(1)), ("update", branch.abs().sum(1))):
        repshift.patch(model, metric="l1", reading=reading, layers=(), num=(), mode="line")
        model.repshift.record = True
        model(x)
        assert torch.allclose(model.repshift.recorded[3], want, rtol=1e-4, atol=1e-3), reading
        repshift.unpatch(model)


@pytest.mark.parametrize("name, layer, first_residual", [
    ("convnext_atto", 1, lambda stage: stage.blocks[0]),  # input of the first block = downsample(stage input)
    ("tf_efficientnet_lite0", 3, lambda stage: stage[1]),  # input of the first residual block
])
@torch.no_grad()
def test_stage_site_scores_the_stage_output_against_its_first_residual_input(name, layer, first_residual):
    model = cnn(name)
    stage = stages(model)[layer]
    before, _ = capture_input(first_residual(stage))
    after, _ = capture_io(stage)
    x = images()
    model(x)
    expected = 1 - torch.cosine_similarity(after["out"], before["x"], dim=1)
    repshift.patch(model, metric="cos", site="stage", layers=(), num=(), mode="line")
    model.repshift.record = True
    model(x)
    assert torch.allclose(model.repshift.recorded[layer], expected, atol=1e-5)


@torch.no_grad()
def test_a_stage_without_a_residual_block_records_nan_and_refuses_the_shift():
    model = cnn("tf_efficientnet_lite0")
    assert scored_stages(model) == [1, 2, 3, 4, 5]  # blocks.0 (32 -> 16) and blocks.6 (192 -> 320): one block each
    repshift.patch(model, metric="l2", layers=(), num=(), mode="line")
    model.repshift.record = True
    model(images())
    recorded = model.repshift.recorded
    assert [r.isnan().all().item() for r in recorded] == [True, False, False, False, False, False, True]
    repshift.unpatch(model)
    with pytest.raises(ValueError, match=r"stage 0 \(blocks.0\): that stage has no residual block.*\[1, 2, 3, 4, 5\]"):
        repshift.patch(model, metric="l2", layers=(0,), num=(4,), mode="line")
    repshift.patch(model, metric="random", layers=(0,), num=(4,), mode="line")  # the controls prune any stage
    model(images())
    assert model.repshift.tokens[:2] == [32 * 32, 28 * 28]


# --------------------------------------------------------------------------- selection


@torch.no_grad()
def test_line_wise_keeps_the_best_rows_and_columns_in_order():
    reference, pruned, model = stage_input_before_and_after("convnext_atto", lambda m: m.stages[1], metric="l2",
                                                            layers=(0,), num=(5,), mode="line")
    score = model.repshift.recorded[0]  # 16 x 16 at 64 px
    for b in range(reference.shape[0]):
        rows = sorted(score[b].mean(1).argsort(descending=True)[:11].tolist())
        cols = sorted(score[b].mean(0).argsort(descending=True)[:11].tolist())
        assert torch.equal(pruned[b], reference[b][:, rows][:, :, cols])


@torch.no_grad()
def test_token_wise_keeps_a_dense_grid_of_the_best_tokens():
    reference, pruned, model = stage_input_before_and_after("tf_efficientnet_lite0", lambda m: m.blocks[2],
                                                            metric="l2", layers=(1,), num=(3,), mode="token")
    score = model.repshift.recorded[1]  # 16 x 16
    assert pruned.shape[2:] == (13, 13)
    for b in range(reference.shape[0]):  # every kept feature vector is one of the map's, and the weakest token is gone
        kept = pruned[b].flatten(1).T
        full = reference[b].flatten(1).T
        assert all((full == row).all(1).any() for row in kept)
        weakest = full[score[b].flatten().argmin()]
        assert not (kept == weakest).all(1).any()


@torch.no_grad()
def test_static_control_crops_the_first_rows_and_columns():
    reference, pruned, _ = stage_input_before_and_after("tf_efficientnet_lite0", lambda m: m.blocks[2],
                                                        metric="none", layers=(1,), num=(4,), mode="line")
    assert torch.equal(pruned, reference[:, :, :12, :12])


def test_pruned_model_trains_through_the_gathers():
    model = cnn("convnext_atto").train()
    repshift.patch(model, metric="l2", layers=(0, 1), num=(4, 2), mode="token")
    model(images()).sum().backward()
    assert model.stem[0].weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=(7,), num=(1,)), r"layer index 7 is out of range: the model has blocks 0..6"),
    (dict(layers=(1,), num=(60,)), r"num=60 at blocks.1 .* 56x56 output map"),
    (dict(layers=(1, 2), num=(8, 24)), r"num=24 at blocks.2 .* 24x24"),
    (dict(metric="attn"), r"metric='attn' scores tokens with an attention map, and a EfficientNet has none"),
    (dict(mode="sequence"), r"mode='sequence' does not apply to timm-cnn"),
    (dict(site="attn"), r"unknown site 'attn' for timm-cnn"),
    (dict(ratio=0.2, num=None), r"ratio=\(0.2, 0.2\): on a EfficientNet give num="),
])
def test_bad_options_are_clear_errors(kwargs, message):
    options = dict(metric="l2", layers=(1, 2), num=(8, 4), mode="line") | kwargs
    model = timm.create_model("tf_efficientnet_lite0")
    with pytest.raises(ValueError, match=message):
        repshift.patch(model, **{k: v for k, v in options.items() if v is not None})
    assert not repshift.is_patched(model) and type(model) is EfficientNet


def test_a_grid_too_small_for_the_input_fails_at_the_forward():
    model = cnn("convnext_atto")
    repshift.patch(model, metric="l2", layers=(0,), num=(8,), mode="line")  # fine at 224 (56 x 56)
    with pytest.raises(ValueError, match=r"num=8 at stage index 0 \(stages.0\) .* 8x8 output map"):
        model(images(height=32, width=32))


def test_unsupported_blocks_are_refused():
    model = timm.create_model("tf_efficientnet_cc_b0_4e")  # CondConv blocks route per sample
    with pytest.raises(TypeError, match=r"blocks.4.1 is a CondConvResidual; repshift.patch supports"):
        repshift.patch(model, metric="l2", layers=(1,), num=(1,), mode="line")
    assert type(model) is EfficientNet and isinstance(timm.create_model("convnext_atto"), ConvNeXt)
