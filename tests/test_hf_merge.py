"""ToMe merging (``mode="merge"``) on Hugging Face vision towers: small random models built offline (CPU).

The reference forward is written from transformers' own submodules and :mod:`repshift.merge`'s functions, with the
attention an explicit ``softmax(q kᵀ · scale + log size) v``; the patched model must agree with it under the eager
and SDPA implementations.
"""
import pytest
import torch
from hf_towers import HOLDERS, PATCHES, TOWERS, features, make, tower_of

import repshift
from repshift import merge
from repshift.patch.hf_vision import tower_layers


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def tome_vit_by_hand(model, images, schedule, metric="none", proportional=True):
    """A ``ViTModel``'s last hidden state with ToMe after every layer's attention residual (``site="attn"``): ``r``
    per layer from ``schedule``, prefix = the class token. Returns ``(last_hidden_state, sizes)``."""
    x = model.embeddings(images)
    size = None
    for layer, r in zip(model.layers, schedule, strict=True):
        attention = layer.attention
        batch, tokens, width = x.shape
        normed = layer.layernorm_before(x)
        q, k, v = (proj(normed).view(batch, tokens, -1, attention.head_dim).transpose(1, 2)
                   for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
        logits = q @ k.transpose(-2, -1) * attention.scaling
        bias = size.log() if proportional and size is not None else torch.zeros(batch, tokens)
        probs = (logits + bias[:, None, None, :]).softmax(dim=-1)
        a = attention.o_proj((probs @ v).transpose(1, 2).reshape(batch, tokens, width))
        x_mid = x + a
        saliency = None
        if metric == "l2":  # the attention branch's shift, D(A(x), x) (literal reading)
            saliency = merge.normalize_saliency((a - x).norm(dim=-1)[:, 1:])
        elif metric == "attn":  # Eq. 2 from the map before the log(size) bias
            saliency = merge.normalize_saliency(logits.softmax(dim=-1)[:, :, 0].mean(dim=1)[:, 1:])
        if r:
            x_mid, size, _ = merge.merge_after_prefix(x_mid, k.mean(dim=1), r, 1, size, saliency)
        x = x_mid + layer.mlp(layer.layernorm_after(x_mid))
    return model.layernorm(x), size


@pytest.mark.parametrize("attention,metric,proportional", [
    ("eager", "none", True), ("sdpa", "none", True), ("sdpa", "none", False),
    ("eager", "l2", True), ("sdpa", "l2", True), ("eager", "attn", True), ("sdpa", "attn", True),
])
@torch.no_grad()
def test_vit_model_equals_the_forward_by_hand(images, attention, metric, proportional):
    model = make("ViTModel", attention)
    expected, expected_size = tome_vit_by_hand(model, images, (3, 2, 2), metric, proportional)
    repshift.patch(model, metric=metric, site="attn", mode="merge", r=[3, 2, 2], proportional=proportional)
    out = model(pixel_values=images).last_hidden_state
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.repshift.size, expected_size)
    assert model.repshift.attention == attention
    assert model.repshift.tokens == [17, 14, 12] and out.shape[1] == 10


@pytest.mark.parametrize("name", TOWERS)
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@torch.no_grad()
def test_proportional_attention_is_the_explicit_softmax_with_log_size(name, attention):
    """A patched attention module given ``log(size)`` equals ``softmax(q kᵀ · scale + log size) v`` through the
    implementation the tower was loaded with, and hands back the head-averaged keys of its own key projection."""
    model = make(name, attention)
    repshift.patch(model, metric="none", mode="merge", r=1)
    layer = tower_layers(tower_of(model))[0]
    module = layer.attention if hasattr(layer, "attention") else layer.self_attn
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(0))
    size = torch.tensor([[1.0, 3.0, 1.0, 2.0, 1.0, 5.0, 1.0, 1.0, 2.0]]).expand(2, 9)
    out, _, keys = module(x, None, repshift_bias=size.log(), repshift_keys=True)
    q, k, v = (proj(x).view(2, 9, 2, 16).transpose(1, 2) for proj in (module.q_proj, module.k_proj, module.v_proj))
    scale = module.scaling if hasattr(module, "scaling") else module.scale
    probs = (q @ k.transpose(-2, -1) * scale + size.log()[:, None, None, :]).softmax(dim=-1)
    output = module.o_proj if hasattr(module, "o_proj") else module.out_proj
    torch.testing.assert_close(out, output((probs @ v).transpose(1, 2).reshape(2, 9, 32)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(keys, k.mean(dim=1))


def test_the_map_before_the_size_bias_is_recovered_exactly():
    logits = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    bias = torch.tensor([[0.0, 1.1, 0.0, 0.7, 2.0], [0.3, 0.0, 0.0, 0.0, 1.6]])
    biased = (logits + bias[:, None, None, :]).softmax(dim=-1)
    torch.testing.assert_close(merge.unbiased_map(biased, bias), logits.softmax(dim=-1))


# --- every tower ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,attention", [*((name, attention) for name in TOWERS for attention in ("eager", "sdpa")),
                                            *((name, "sdpa") for name in HOLDERS)])
@torch.no_grad()
def test_r_zero_equals_the_unpatched_model(images, name, attention):
    model = make(name, attention)
    reference = features(model, images)
    repshift.patch(model, metric="l2", mode="merge", r=0)
    assert (features(model, images) - reference).abs().max() <= 1e-5
    prefix = TOWERS[type(tower_of(model)).__name__]
    assert model.repshift.tokens == [prefix + PATCHES] * 3 and model.repshift.size is None
    repshift.unpatch(model)
    repshift.patch(model, metric="none", mode="merge", layers=(0, 2), num=0)
    assert (features(model, images) - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("name,prefix", list(TOWERS.items()))
@torch.no_grad()
def test_token_counts_and_sizes_summing_to_the_patch_count(images, name, prefix):
    model = make(name)
    repshift.patch(model, metric="none", mode="merge", r=[4, 3, 2])
    out = model(pixel_values=images).last_hidden_state
    state = model.repshift
    assert state.tokens == [prefix + 16, prefix + 12, prefix + 9]
    assert out.shape == (2, prefix + 7, 32) and state.size.shape == (2, prefix + 7)
    assert state.size[:, prefix:].sum(dim=1).tolist() == [float(PATCHES)] * 2  # ŝ = 1: no mass lost
    assert (state.size[:, :prefix] == 1).all()
    assert torch.equal(state.book["position"][:, :prefix], torch.arange(prefix).expand(2, prefix))


@pytest.mark.parametrize("name,prefix", [(name, prefix) for name, prefix in TOWERS.items() if prefix])
@torch.no_grad()
def test_class_distillation_and_register_tokens_are_never_merged(images, name, prefix):
    """Merging after layer 0's attention residual leaves its prefix tokens as the unpatched layer 0 computes them
    (the MLP is per token); the patches are merged (fewer, and changed)."""
    model = make(name)
    captured = {}
    tower_layers(model)[0].register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    model(pixel_values=images)
    full = captured["out"]
    repshift.patch(model, metric="l2", site="attn", mode="merge", layers=(0,), num=7)
    model(pixel_values=images)
    merged = captured["out"]
    assert merged.shape == (2, prefix + PATCHES - 7, 32)
    torch.testing.assert_close(merged[:, :prefix], full[:, :prefix], rtol=1e-5, atol=1e-5)
    assert (model.repshift.size[:, :prefix] == 1).all()


@pytest.mark.parametrize("name", ["CLIPVisionModel", "SiglipVisionModel", "Dinov2WithRegistersModel"])
@pytest.mark.parametrize("metric,site", [("l1", "mlp"), ("cos", "block"), ("attn", "attn"), ("attn_mean", "attn"),
                                         ("attn_entropy", "attn"), ("random", "mlp")])
@torch.no_grad()
def test_every_score_and_site_merges_to_the_same_token_counts(images, name, metric, site):
    model = make(name)
    prefix = TOWERS[name]
    repshift.patch(model, metric=metric, site=site, mode="merge", layers=(0, 1), num=(5, 3))
    out = model(pixel_values=images).last_hidden_state
    assert torch.isfinite(out).all() and out.shape[1] == prefix + 8
    assert model.repshift.tokens == [prefix + 16, prefix + 11, prefix + 8]


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kwargs,match", [
    ("ViTModel", dict(r=9), r"block 0 asks to merge 9 of the 16 mergeable tokens .* at most half of them \(8\)"),
    ("DeiTModel", dict(r=[3, 3, 6]), "block 2 asks to merge 6 of the 10"),  # 16 -> 13 -> 10, then 6 > 5
    ("SiglipVisionModel", dict(r=2, metric="attn_cls"), "SiglipVisionModel has no class token, so attn_cls"),
    ("ViTModel", dict(r=2, metric="top_vim"), "ToP-ViM's score"),
    ("ViTModel", dict(r=2, keep="bottom"), "keep='bottom' selects tokens to drop; merging has no such choice"),
])
def test_bad_input(name, kwargs, match):
    model = make(name)
    layer_class = type(tower_layers(model)[0])
    with pytest.raises(ValueError, match=match):
        repshift.patch(model, **{"metric": "none", "mode": "merge", **kwargs})
    assert not repshift.is_patched(model) and type(tower_layers(model)[0]) is layer_class


def test_flash_attention_2_refuses_proportional_attention():
    """A tower loaded with flash_attention_2 (set by hand: flash-attn does not run on this CPU) has no per-key bias."""
    model = make("CLIPVisionModel")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match=r"CLIPVisionModel was loaded with attn_implementation='flash_attention_2', "
                                         r"which takes no per-key bias.*or merge with proportional=False"):
        repshift.patch(model, metric="none", mode="merge", r=2)
    assert not repshift.is_patched(model)
    repshift.patch(model, metric="none", mode="merge", r=2, proportional=False)
    assert model.repshift.attention == "flash_attn"
