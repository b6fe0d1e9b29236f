"""repshift.patch on Hugging Face transformers vision towers: small random models built offline (CPU).

Every layer's tensors are written out by hand from transformers' own submodules (``layer_tensors``), so the
sites and readings are checked against the models' own code, not against the adapter's layout table.
"""
import pickle

import pytest
import torch
import transformers

from hf_towers import DINO, HOLDERS, PATCHES, TOWERS, VISION, config, features, make, tower_of
from support import distance_by_hand

import repshift
from repshift import scores
from repshift.attention import record_kernels
from repshift.bench import count_gmacs

# Attention and MLP widths of every tower above, for MACs by hand.
WIDTH, MLP_WIDTH = 32, 64


def first_layer(model):
    return next(m for m in model.modules() if type(m).__name__.endswith("Layer"))


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# --- equivalence with the unpatched model ---------------------------------------------------------


@pytest.mark.parametrize("name,attention,metric", [
    *((name, attention, metric) for name in TOWERS for attention in ("eager", "sdpa") for metric in ("l2", "attn")),
    *((name, "sdpa", "attn") for name in HOLDERS),  # a holder only says where its tower is
])
@torch.no_grad()
def test_nothing_to_drop_equals_the_unpatched_model(images, name, attention, metric):
    model = make(name, attention)
    reference = features(model, images)
    repshift.patch(model, metric=metric, layers=(0, 1, 2), num=0)
    assert model.repshift.attention == attention  # the implementation the model was loaded with
    assert (features(model, images) - reference).abs().max() <= 1e-5
    prefix = TOWERS[type(tower_of(model)).__name__]
    assert model.repshift.tokens == [prefix + PATCHES] * 3


@pytest.mark.parametrize("name", HOLDERS)
@torch.no_grad()
def test_unpatch_restores_classes_outputs_and_state_dict(images, name):
    model = make(name)
    reference = features(model, images)
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    layer_class = type(first_layer(model))
    repshift.patch(model, metric="l2", layers=(0, 1), num=(5, 4))
    assert set(model.state_dict()) == set(keys)
    pruned = features(model, images)
    assert pruned.shape == reference.shape and not torch.allclose(pruned, reference)
    repshift.unpatch(model)
    assert not any(type(m).__module__ == "repshift.patch.base" for m in model.modules())
    assert not any(hasattr(m, "repshift_state") for m in model.modules()) and not hasattr(model, "repshift")
    assert any(type(m) is layer_class for m in model.modules())
    assert torch.equal(features(model, images), reference)
    assert all(torch.equal(v, keys[k]) for k, v in model.state_dict().items())


# --- which tokens survive -------------------------------------------------------------------------


@pytest.mark.parametrize("name,prefix", list(TOWERS.items()))
@pytest.mark.parametrize("metric", ["l2", "attn"])
@torch.no_grad()
def test_pruned_layer_output_is_the_prefix_then_the_top_tokens_in_order(images, name, prefix, metric):
    """Layer 0's pruned output = its full output's prefix tokens (class, distillation, registers) + its top patches."""
    model = make(name)
    layer0 = first_layer(model)
    captured = {}
    layer0.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    features(model, images)
    full = captured["out"]
    token_scores = (repshift.representation_shift(model, images) if metric == "l2"
                    else repshift.attention_scores(model, images, "attn"))[:, 0, prefix:]
    repshift.patch(model, metric=metric, layers=(0,), num=6)
    features(model, images)
    pruned = captured["out"]
    assert pruned.shape[1] == prefix + PATCHES - 6
    kept = token_scores.topk(PATCHES - 6, dim=1).indices.sort(dim=1).values + prefix
    for b in range(images.shape[0]):
        assert torch.allclose(pruned[b, :prefix], full[b, :prefix], atol=1e-5)
        assert torch.allclose(pruned[b, prefix:], full[b, kept[b]], atol=1e-5)
    assert torch.equal(model.repshift.book["position"][:, :prefix], torch.arange(prefix).expand(2, prefix))


def macs_of_layer(tokens: int, mlp: int = MLP_WIDTH) -> int:
    """q, k, v, output projections; q·kᵀ and attn·v; the two MLP matmuls."""
    return 4 * tokens * WIDTH**2 + 2 * tokens**2 * WIDTH + 2 * tokens * WIDTH * mlp


@pytest.mark.parametrize("name,prefix", list(TOWERS.items()))
@pytest.mark.parametrize("attention,metric", [("eager", "l2"), ("sdpa", "l2"), ("sdpa", "attn")])
@torch.no_grad()
def test_token_counts_and_gmacs(images, name, prefix, attention, metric):
    """Per layer 5 then 4 patches dropped; the MACs saved are the pruned layers' MACs by hand, whatever the kernel."""
    model = make(name, attention)
    base = round(count_gmacs(model, input_size=(3, 32, 32)) * 1e9)
    repshift.patch(model, metric=metric, layers=(0, 1), num=(5, 4))
    features(model, images)
    tokens = model.repshift.tokens
    assert tokens == [prefix + 16, prefix + 11, prefix + 7]
    pruned = round(count_gmacs(model, input_size=(3, 32, 32)) * 1e9)
    saved = sum(macs_of_layer(tokens[0]) - macs_of_layer(n) for n in tokens[1:])
    if name == "SiglipVisionModel":  # the attention-pooling head projects keys and values of every token, 1 query
        saved += (tokens[0] - tokens[-1]) * (2 * WIDTH**2 + 2 * WIDTH)
    assert base - pruned == saved


@pytest.mark.slow
@torch.no_grad()
def test_vit_base_gmacs_are_the_papers_deit_b_figures():
    """transformers' ViT-B/16 (random weights, no pooler) with the paper's DeiT schedule: 17.56 -> 11.50 GMACs,
    the figures timm's DeiT-B gives (tests/test_core.py; the classifier head's 0.0008 is all that differs)."""
    model = transformers.ViTModel(transformers.ViTConfig(), add_pooling_layer=False).eval()
    assert count_gmacs(model) == pytest.approx(17.56, abs=0.005)
    repshift.patch(model, metric="l2", site="mlp", layers=(0, 3, 6), ratio=0.2)
    assert count_gmacs(model) == pytest.approx(11.50, abs=0.005)
    assert model.repshift.tokens == [197, 158, 158, 158, 127, 127, 127, 102, 102, 102, 102, 102]


@torch.no_grad()
def test_protected_tokens_survive_even_the_lowest_scores(images):
    """keep='bottom' keeps the lowest-scored patches; the class and register tokens stay anyway."""
    model = repshift.patch(make("Dinov2WithRegistersModel"), metric="l2", layers=(0, 1, 2), num=(8, 4, 3),
                           keep="bottom")
    out = model(pixel_values=images).last_hidden_state
    assert out.shape[1] == 5 + 1
    assert torch.equal(model.repshift.book["position"][:, :5], torch.arange(5).expand(2, 5))


@pytest.mark.parametrize("metric", ["l2", "attn", "random"])
@torch.no_grad()
def test_each_sample_is_pruned_by_its_own_scores(images, metric):
    model = repshift.patch(make("DeiTForImageClassificationWithTeacher"), metric=metric, layers=(0, 1), num=(6, 4))
    together = model(pixel_values=images).logits
    for b in range(images.shape[0]):
        assert torch.allclose(model(pixel_values=images[b : b + 1]).logits, together[b : b + 1], atol=1e-5)


@torch.no_grad()
def test_clip_model_text_side_sees_the_pruned_image_embedding(images):
    model = make("CLIPModel")
    text = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    reference = model(input_ids=text, pixel_values=images).logits_per_image
    repshift.patch(model, metric="l2", layers=(0, 1), num=(6, 4))
    pruned = model(input_ids=text, pixel_values=images).logits_per_image
    assert model.repshift.tokens == [17, 11, 7]
    assert pruned.shape == reference.shape == (2, 3) and not torch.allclose(pruned, reference)
    image_embeds = model.get_image_features(pixel_values=images).pooler_output
    text_embeds = model.get_text_features(input_ids=text).pooler_output
    normalize = torch.nn.functional.normalize
    by_hand = model.logit_scale.exp() * normalize(image_embeds, dim=-1) @ normalize(text_embeds, dim=-1).T
    assert torch.allclose(pruned, by_hand, atol=1e-5)


# --- scores against tensors written out by hand ------------------------------------------------------


def layer_tensors(tower, images) -> list[dict]:
    """Per layer of a tower, every tensor of ``x' = x + ls1(attn(norm1(x)))``, ``x̂ = x' + ls2(mlp(norm2(x')))`` and the
    softmax map, from transformers' own submodules (eager attention returns the map)."""
    name = type(tower).__name__
    with torch.no_grad():
        x = tower.embeddings(images)
        if name == "CLIPVisionModel":
            x = tower.pre_layrnorm(x)
    layers = tower.layers if name in ("ViTModel", "DeiTModel") else (
        tower.encoder.layers if hasattr(tower.encoder, "layers") else tower.encoder.layer)
    out = []
    for layer in layers:
        if name in ("ViTModel", "DeiTModel"):
            norm1, attention, norm2 = layer.layernorm_before, layer.attention, layer.layernorm_after
            ls1 = ls2 = None
        elif name.startswith("Dinov2"):
            norm1, attention, norm2 = layer.norm1, layer.attention, layer.norm2
            ls1, ls2 = layer.layer_scale1, layer.layer_scale2
        else:
            norm1, attention, norm2, ls1, ls2 = layer.layer_norm1, layer.self_attn, layer.layer_norm2, None, None
        with torch.no_grad():
            n1 = norm1(x)
            a_raw, attn_map = attention(n1)
            a = ls1(a_raw) if ls1 else a_raw
            x_mid = x + a
            n2 = norm2(x_mid)
            m_raw = layer.mlp(n2)
            m = ls2(m_raw) if ls2 else m_raw
            x_out = x_mid + m
        out.append(dict(x=x, n1=n1, a_raw=a_raw, a=a, x_mid=x_mid, n2=n2, m_raw=m_raw, m=m, x_out=x_out, map=attn_map))
        x = x_out
    return out


PAIRS = {
    ("attn", "literal"): ("a", "x"), ("attn", "update"): ("x_mid", "x"), ("attn", "normed"): ("a_raw", "n1"),
    ("mlp", "literal"): ("m", "x_mid"), ("mlp", "update"): ("x_out", "x_mid"), ("mlp", "normed"): ("m_raw", "n2"),
    ("block", "literal"): ("x_out", "x"), ("block", "update"): ("x_out", "x"), ("block", "normed"): ("x_out", "x"),
}


@pytest.mark.parametrize("name", ["Dinov2Model", "ViTModel", "CLIPVisionModel"])
@pytest.mark.parametrize("site,reading", list(PAIRS))
def test_every_site_and_reading_by_hand(images, name, site, reading):
    model = make(name, "eager")
    tensors = layer_tensors(model, images)
    after, before = PAIRS[(site, reading)]
    for metric in ("l2", "l1", "cos"):
        got = repshift.representation_shift(model, images, metric=metric, site=site, reading=reading)
        assert got.shape == (2, 3, TOWERS[name] + PATCHES)
        for layer, t in enumerate(tensors):
            assert torch.allclose(got[:, layer], distance_by_hand(t[after], t[before], metric), atol=1e-5)


@pytest.mark.parametrize("name", ["DeiTModel", "SiglipVisionModel"])
@pytest.mark.parametrize("loaded", ["sdpa", "eager"])
def test_attention_scores_are_the_eager_maps_whatever_the_implementation(images, name, loaded):
    maps = [t["map"] for t in layer_tensors(make(name, "eager"), images)]
    model = make(name, loaded)
    mean = repshift.attention_scores(model, images, "attn_mean")
    for layer, attn_map in enumerate(maps):
        assert torch.allclose(mean[:, layer], scores.mean_attention(attn_map), atol=1e-6)
    if name == "DeiTModel":
        cls = repshift.attention_scores(model, images, "attn")
        assert all(torch.allclose(cls[:, i], attn_map[:, :, 0].mean(1), atol=1e-6) for i, attn_map in enumerate(maps))
    else:  # no class token: "attn" is Eq. 3, and Eq. 2 is refused
        assert repshift.patch(model, metric="attn", layers=(0,), num=1).repshift.metric == "attn_mean"
        repshift.unpatch(model)
        with pytest.raises(ValueError, match="SiglipVisionModel has no class token, so attn_cls"):
            repshift.patch(model, metric="attn_cls", layers=(0,), num=1)


# --- the attention implementation is the model's ---------------------------------------------------


@pytest.mark.parametrize("loaded,metric,kernels", [
    ("sdpa", "l2", ["sdpa:flash(cpu)"]),
    ("sdpa", "attn", ["eager", "sdpa:flash(cpu)"]),  # the map is materialised in the scoring layer only
    ("eager", "l2", ["eager"]),
    ("eager", "attn", ["eager"]),
])
@torch.no_grad()
def test_the_loaded_implementation_runs_and_maps_are_eager_in_scoring_layers_only(images, loaded, metric, kernels):
    model = repshift.patch(make("ViTModel", loaded), metric=metric, layers=(1,), num=4)
    assert record_kernels(model, images)[0] == kernels


def test_attention_argument_cannot_change_the_loaded_implementation():
    model = make("ViTModel", "eager")
    assert repshift.patch(model, metric="l2", layers=(0,), num=1, attention="eager").repshift.attention == "eager"
    repshift.unpatch(model)
    assert repshift.patch(model, metric="l2", layers=(0,), num=1).repshift.attention == "eager"  # the default
    repshift.unpatch(model)
    sdpa = make("ViTModel", "sdpa")
    with pytest.raises(ValueError, match=r"keeps the attention implementation it was loaded with \(attn_implementation="
                                         r"'sdpa'\); attention='eager' cannot change it: load the model with "
                                         r"attn_implementation='eager'"):
        repshift.patch(sdpa, metric="l2", layers=(0,), num=1, attention="eager")
    assert not repshift.is_patched(sdpa) and type(sdpa.layers[0]) is transformers.models.vit.modeling_vit.ViTLayer


def test_flash_attention_2_is_recorded_as_flash_attn():
    """A model loaded with flash_attention_2 (set by hand: flash-attn does not run on this CPU) keeps it."""
    model = make("CLIPVisionModel")
    model.config._attn_implementation = "flash_attention_2"
    assert repshift.patch(model, metric="l2", layers=(0,), num=1).repshift.attention == "flash_attn"


def test_an_implementation_repshift_does_not_keep_is_refused():
    model = make("CLIPVisionModel")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(TypeError, match="loaded with attn_implementation='flex_attention'; repshift.patch keeps one of"):
        repshift.patch(model, metric="l2", layers=(0,), num=1)


# --- loading, saving, pickling ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ViTForImageClassification", "DeiTModel", "CLIPModel", "SiglipVisionModel",
                                  "Dinov2Model", "Dinov2WithRegistersModel"])
@torch.no_grad()
def test_from_pretrained_on_a_local_folder_offline(images, name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    original = make(name)
    reference = features(original, images)
    original.save_pretrained(tmp_path)
    model = getattr(transformers, name).from_pretrained(tmp_path, attn_implementation="eager").eval()
    repshift.patch(model, metric="l2", layers=(0, 1, 2), num=0)
    assert model.repshift.attention == "eager"
    assert torch.allclose(features(model, images), reference, atol=1e-5)
    repshift.unpatch(model)
    repshift.patch(model, metric="l2", layers=(0, 1), num=(5, 4))
    pruned = features(model, images)
    model.save_pretrained(tmp_path / "patched")  # a patched model saves the same files
    again = getattr(transformers, name).from_pretrained(tmp_path / "patched").eval()
    repshift.patch(again, metric="l2", layers=(0, 1), num=(5, 4))
    assert torch.allclose(features(again, images), pruned, atol=1e-5)


def test_patched_model_pickles(images):
    model = repshift.patch(make("Dinov2WithRegistersModel"), metric="l2", layers=(0, 1), num=(5, 4))
    clone = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        assert torch.equal(clone(pixel_values=images).last_hidden_state, model(pixel_values=images).last_hidden_state)


def test_gradients_flow_through_a_patched_model_and_checkpointing_is_refused(images):
    model = repshift.patch(make("ViTForImageClassification").train(), metric="l2", layers=(0, 1), num=(5, 4))
    model(pixel_values=images).logits.sum().backward()
    assert model.vit.layers[2].mlp.fc2.weight.grad is not None
    model.activation_checkpointing_enable()
    with pytest.raises(NotImplementedError, match=r"do not support gradient \(activation\) checkpointing"):
        model(pixel_values=images)


# --- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [
    lambda: transformers.ViTMAEModel(transformers.ViTMAEConfig(**VISION)),
    lambda: transformers.ViTForMaskedImageModeling(transformers.ViTConfig(**VISION)),
    lambda: transformers.Dinov2Backbone(transformers.Dinov2Config(**DINO)),
])
def test_an_unsupported_hf_class_lists_the_supported_ones(model):
    model = model()
    with pytest.raises(TypeError, match=rf"no repshift adapter supports {type(model).__name__}; .*hf-vision: Hugging Face "
                                        r"transformers vision towers ViTModel, DeiTModel, CLIPVisionModel, SiglipVisionModel, "
                                        r"Dinov2Model, Dinov2WithRegistersModel and the models holding one: "
                                        r"ViTForImageClassification, .*CLIPModel"):
        repshift.patch(model, metric="l2", layers=(0,), num=1)


def test_a_subclass_is_not_taken_for_its_parent():
    class MyViT(transformers.ViTModel):
        pass

    with pytest.raises(TypeError, match="no repshift adapter supports MyViT"):
        repshift.patch(MyViT(config("ViTModel")), metric="l2", layers=(0,), num=1)


def test_a_non_standard_layer_is_refused():
    class MyLayer(transformers.models.vit.modeling_vit.ViTLayer):
        pass

    model = make("ViTModel")
    model.layers[1] = MyLayer(config("ViTModel"))
    with pytest.raises(TypeError, match="layer 1 of ViTModel is a MyLayer; repshift.patch supports the standard"):
        repshift.patch(model, metric="l2", layers=(0,), num=1)


def test_a_layout_the_adapter_cannot_read_is_refused_with_the_transformers_version():
    model = make("CLIPVisionModel")
    del model.encoder.layers[2].self_attn.out_proj  # as if an older release named it otherwise
    with pytest.raises(TypeError, match=rf"CLIPVisionModel of transformers {transformers.__version__} is not laid out "
                                        r"as repshift's adapter reads it \(written against transformers 5.24; "
                                        r"CLIPAttention.out_proj not found\)"):
        repshift.patch(model, metric="l2", layers=(0,), num=1)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(num=17), ValueError, "only 16 non-prefix tokens"),
    (dict(layers=(3,)), ValueError, "out of range: the model has blocks 0..2"),
    (dict(metric="top_vim"), ValueError, "ToP-ViM's score"),
    (dict(mode="line"), ValueError, "does not apply to hf-vision models"),
    (dict(site="ffn"), ValueError, "unknown site 'ffn' for hf-vision"),
])
def test_bad_input(kwargs, error, match):
    args = dict(metric="l2", layers=(0,), num=1)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        repshift.patch(make("ViTModel"), **args)


def test_an_attention_mask_is_refused(images):
    model = repshift.patch(make("ViTModel"), metric="l2", layers=(0,), num=1)
    with pytest.raises(NotImplementedError, match="do not take an attention mask"):
        mask = torch.ones(2, 17, dtype=torch.long)
        mask[:, 16] = 0  # an all-ones mask is dropped by transformers before the layers
        model(pixel_values=images, attention_mask=mask)
