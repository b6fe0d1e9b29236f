"""repshift.patch and friends on real timm ViTs (CPU)."""
import math
import pickle

import pytest
import timm
import torch

import repshift
from repshift import scores
from repshift.attention import attend_with_map, record_kernels
from repshift.bench import count_gmacs
from repshift.select import drop_count, gather_tokens, keep_indices, protected_mask
from support import distance_by_hand, tiny_vit, vit_block_tensors

DEIT_S_SCHEDULE = dict(metric="l2", site="mlp", layers=(0, 3, 6), ratio=0.2)


def make(name="deit_tiny_patch16_224", **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))


# --- equivalence with timm's own forward -------------------------------------------------


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("nothing", [dict(layers=(0, 3, 6), ratio=0.0), dict(layers=(), ratio=0.2)])
@torch.no_grad()
def test_nothing_to_drop_equals_timm(images, attention, nothing):
    model = make()
    reference = model(images)
    repshift.patch(model, metric="l2", attention=attention, **nothing)
    assert (model(images) - reference).abs().max() <= 1e-5
    assert model.repshift.tokens == [197] * 12


@torch.no_grad()
def test_attn_metric_with_nothing_to_drop_equals_timm(images):
    model = make()
    reference = model(images)
    repshift.patch(model, metric="attn_cls", layers=(0, 5), ratio=0.0, attention="sdpa")
    assert (model(images) - reference).abs().max() <= 1e-5


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("flash_attn") is not None, reason="flash-attn is installed"
)
def test_flash_attn_backend_without_package_is_a_clear_error():
    with pytest.raises(ImportError, match="flash-attn package"):
        repshift.patch(make(), metric="l2", layers=(0,), ratio=0.2, attention="flash_attn")


@torch.no_grad()
def test_eager_and_sdpa_agree_when_pruning(images):
    eager = repshift.patch(make(), attention="eager", **DEIT_S_SCHEDULE)
    sdpa = repshift.patch(make(), attention="sdpa", **DEIT_S_SCHEDULE)
    assert (eager(images) - sdpa(images)).abs().max() <= 1e-4
    assert eager.repshift.tokens == sdpa.repshift.tokens


@torch.no_grad()
def test_unpatch_restores_bit_identical_outputs_and_state_dict(images):
    model = make()
    reference = model(images)
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    repshift.patch(model, **DEIT_S_SCHEDULE)
    assert set(model.state_dict()) == set(keys)
    assert not torch.equal(model(images), reference)
    repshift.unpatch(model)
    assert type(model) is timm.models.vision_transformer.VisionTransformer
    assert type(model.blocks[0]) is timm.models.vision_transformer.Block
    assert torch.equal(model(images), reference)
    assert all(torch.equal(v, keys[k]) for k, v in model.state_dict().items())
    assert not hasattr(model, "repshift") and not hasattr(model.blocks[0], "repshift_state")


# --- hand-computed scores -----------------------------------------------------------------


def test_shift_distances_by_hand():
    after = torch.tensor([[[1.0, 2.0], [0.0, -1.0], [3.0, 4.0]]])
    before = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    # diffs: (0, 2), (0, -2), (2, 3)
    assert torch.allclose(scores.shift(after, before, "l2"), torch.tensor([[2.0, 2.0, math.sqrt(13)]]))
    assert torch.allclose(scores.shift(after, before, "l1"), torch.tensor([[2.0, 2.0, 5.0]]))
    cos = torch.tensor([[1 - 1 / math.sqrt(5), 2.0, 1 - 7 / (5 * math.sqrt(2))]])
    assert torch.allclose(scores.shift(after, before, "cos"), cos, atol=1e-6)
    # The same tokens with their channels strided (a [B, C, N] map seen as tokens) give the same distances
    strided_after, strided_before = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (after, before))
    assert strided_after.stride(-1) != 1
    assert torch.allclose(scores.shift(strided_after, strided_before, "l2"), torch.tensor([[2.0, 2.0, math.sqrt(13)]]))
    assert torch.allclose(scores.shift(strided_after, strided_before, "l1"), torch.tensor([[2.0, 2.0, 5.0]]))
    assert torch.equal(strided_after, after)  # the inputs are not written to


def test_attention_scores_by_hand():
    attn = torch.tensor(
        [[[[0.5, 0.25, 0.25], [0.2, 0.2, 0.6], [0.0, 1.0, 0.0]], [[0.1, 0.3, 0.6], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]]]]
    )
    assert torch.allclose(scores.cls_attention(attn), torch.tensor([[0.3, 0.275, 0.425]]))
    # column sums: head 0 (0.7, 1.45, 0.85), head 1 (0.8, 1.0, 1.2); mean over 3 queries and 2 heads
    assert torch.allclose(scores.mean_attention(attn), torch.tensor([[1.5 / 6, 2.45 / 6, 2.05 / 6]]))


def test_attention_map_by_hand():
    q = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]).view(1, 1, 3, 2)
    v = torch.eye(3)[:, :2].view(1, 1, 3, 2)
    out, probs = attend_with_map(q, k, v, scale=2**-0.5)
    e = [math.exp(2**-0.5), 1.0, math.exp(-(2**-0.5))]
    expected = torch.tensor([x / sum(e) for x in e])
    assert torch.allclose(probs.flatten(), expected)
    assert torch.allclose(out.flatten(), expected[:2])


@pytest.mark.parametrize("metric", ["l2", "l1", "cos"])
@pytest.mark.parametrize("site", ["attn", "mlp", "block"])
@torch.no_grad()
def test_representation_shift_sites_by_hand(metric, site):
    model = tiny_vit(init_values=0.5)  # layer scale on, so ls1/ls2 matter
    images = torch.randn(2, 3, 32, 32)
    got = repshift.representation_shift(model, images, metric=metric, site=site)
    assert got.shape == (2, 3, 5)
    for layer, t in enumerate(vit_block_tensors(model, images)):
        after, before = {"attn": ("a", "x"), "mlp": ("m", "x_mid"), "block": ("x_out", "x")}[site]
        assert torch.allclose(got[:, layer], distance_by_hand(t[after], t[before], metric), atol=1e-5)


@torch.no_grad()
def test_attention_scores_match_the_block_maps():
    model = tiny_vit()
    images = torch.randn(2, 3, 32, 32)
    maps = []
    for x in (t["x"] for t in vit_block_tensors(model, images)):
        attn = model.blocks[len(maps)].attn
        qkv = attn.qkv(model.blocks[len(maps)].norm1(x)).reshape(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
        q, k, _ = qkv.unbind(0)
        maps.append(((q @ k.transpose(-2, -1)) * 8**-0.5).softmax(-1))
    cls = repshift.attention_scores(model, images, "attn_cls")
    mean = repshift.attention_scores(model, images, "attn_mean")
    for layer, attn_map in enumerate(maps):
        assert torch.allclose(cls[:, layer], attn_map[:, :, 0].mean(1), atol=1e-6)
        assert torch.allclose(mean[:, layer], attn_map.mean((1, 2)), atol=1e-6)


# --- which tokens survive -----------------------------------------------------------------


@torch.no_grad()
def test_deit_s_token_schedule(images):
    model = repshift.patch(make("deit_small_patch16_224"), **DEIT_S_SCHEDULE)
    model(images)
    assert model.repshift.tokens == [197, 158, 158, 158, 127, 127, 127, 102, 102, 102, 102, 102]


# The paper's GFLOPs (= GMACs, attention matmuls included), base and with the DeiT schedule.
PAPER_GMACS = {"deit_tiny_patch16_224": (1.25, 0.80), "deit_small_patch16_224": (4.60, 2.99),
               "deit_base_patch16_224": (17.56, 11.50)}
SETTINGS = {"sdpa": dict(metric="l2", attention="sdpa"), "eager": dict(metric="attn_cls", attention="eager"),
            "hybrid": dict(metric="attn_cls", attention="sdpa")}


@pytest.mark.parametrize("name", PAPER_GMACS)
@torch.no_grad()
def test_gmacs_do_not_depend_on_the_kernel(name):
    """Same token counts, same GMACs, whichever attention kernel runs (and whatever torch counts for it)."""
    base, pruned = PAPER_GMACS[name]
    model = make(name)
    assert count_gmacs(model) == pytest.approx(base, abs=0.005)
    counts = {}
    for setting, kwargs in SETTINGS.items():
        repshift.patch(model, layers=(), ratio=0.0, **{k: v for k, v in kwargs.items() if k != "metric"}, metric="l2")
        assert count_gmacs(model) == pytest.approx(base, abs=0.005), f"unpruned, {setting}"
        repshift.unpatch(model)
        repshift.patch(model, site="mlp", layers=(0, 3, 6), ratio=0.2, **kwargs)
        counts[setting] = count_gmacs(model)
        assert model.repshift.tokens[-1] == 102
        repshift.unpatch(model)
    assert counts["sdpa"] == counts["eager"] == counts["hybrid"]
    assert counts["sdpa"] == pytest.approx(pruned, abs=0.005)


def test_drop_count_floor_and_num():
    assert [drop_count(n, ratio=0.2) for n in (196, 157, 126)] == [39, 31, 25]
    assert drop_count(100, ratio=0.29) == 29  # 0.29 * 100 is 28.999… in binary floating point
    assert drop_count(10, num=10) == 10
    with pytest.raises(ValueError, match="only 9"):
        drop_count(9, num=10)


def test_keep_indices_protects_prefix_and_keeps_order():
    x = torch.arange(2 * 7, dtype=torch.float).view(2, 7, 1).expand(2, 7, 3)
    protected = protected_mask(2, 7, range(2))
    token_scores = torch.tensor([[0.0, 0.0, 5.0, 1.0, 4.0, 2.0, 3.0], [0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    kept = gather_tokens(x, keep_indices(token_scores, 2, protected))[..., 0]
    assert kept.tolist() == [[0, 1, 2, 4, 6], [7, 8, 11, 12, 13]]
    bottom = gather_tokens(x, keep_indices(token_scores, 2, protected, keep="bottom"))[..., 0]
    assert bottom.tolist() == [[0, 1, 3, 5, 6], [7, 8, 9, 10, 11]]
    assert gather_tokens(x, keep_indices(None, 3, protected))[..., 0].tolist() == [[0, 1, 2, 3], [7, 8, 9, 10]]


def test_keep_indices_protects_tokens_anywhere():
    protected = torch.tensor([[False, False, True, False, False], [False, True, False, False, False]])
    token_scores = torch.tensor([[1.0, 5.0, -9.0, 3.0, 2.0], [4.0, -9.0, 1.0, 2.0, 3.0]])
    assert keep_indices(token_scores, 2, protected).tolist() == [[1, 2, 3], [0, 1, 4]]
    assert keep_indices(None, 2, protected).tolist() == [[0, 1, 2], [0, 1, 2]]
    assert gather_tokens(torch.arange(10).view(2, 5), keep_indices(token_scores, 2, protected)).tolist() == [
        [1, 2, 3], [5, 6, 9]]


@pytest.mark.parametrize("name,prefix", [("deit_tiny_distilled_patch16_224", 2), ("deit_tiny_patch16_224", 1)])
@torch.no_grad()
def test_pruned_block_output_is_the_top_tokens_in_order(images, name, prefix):
    """Block 0's pruned output = its full output's prefix + top-k shifted patch tokens, in order."""
    model = make(name)
    captured = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    model(images)
    full = captured["out"]
    shift = repshift.representation_shift(model, images)[:, 0, prefix:]
    repshift.patch(model, metric="l2", layers=(0,), ratio=0.2)
    model(images)
    pruned = captured["out"]
    assert pruned.shape[1] == prefix + 196 - 39
    expected = shift.topk(196 - 39, dim=1).indices.sort(dim=1).values + prefix
    for b in range(images.shape[0]):
        assert torch.allclose(pruned[b, :prefix], full[b, :prefix], atol=1e-5)
        assert torch.allclose(pruned[b, prefix:], full[b, expected[b]], atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cos", "attn_cls", "attn_mean"])
@torch.no_grad()
def test_each_sample_is_pruned_by_its_own_scores(images, metric):
    model = repshift.patch(make(), metric=metric, layers=(0, 3, 6), ratio=0.2)
    together = model(images)
    for b in range(images.shape[0]):
        assert torch.allclose(model(images[b : b + 1]), together[b : b + 1], atol=1e-5)


@torch.no_grad()
def test_random_control_is_seeded_and_batch_independent(images):
    model = repshift.patch(make(), metric="random", layers=(0, 3), ratio=0.5, seed=3)
    first, again = model(images), model(images)
    assert torch.equal(first, again)
    assert torch.allclose(model(images[1:2]), first[1:2], atol=1e-5)
    other = repshift.patch(make(), metric="random", layers=(0, 3), ratio=0.5, seed=4)
    assert not torch.allclose(other(images), first)


@torch.no_grad()
def test_registers_layer_scale_and_no_class_token():
    model = tiny_vit(class_token=False, reg_tokens=2, global_pool="avg", init_values=1e-3, img_size=64)
    images = torch.randn(2, 3, 64, 64)
    reference = model(images)
    repshift.patch(model, metric="attn", layers=(0, 1), num=(5, 4), attention="sdpa")
    assert model.repshift.metric == "attn_mean"  # no class token: Eq. 3, as the paper does
    out = model(images)
    assert model.repshift.tokens == [18, 13, 9]
    assert out.shape == reference.shape
    repshift.unpatch(model)
    repshift.patch(model, metric="l2", layers=(0, 1), ratio=0.0)
    assert (model(images) - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_autocast_on_cpu(images, dtype):
    model = repshift.patch(make(), **DEIT_S_SCHEDULE)
    with torch.autocast("cpu", dtype=dtype):
        out = model(images[:2])
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert model.repshift.tokens[-1] == 102


def test_gradients_flow_through_a_patched_model(images):
    model = repshift.patch(make().train(), **DEIT_S_SCHEDULE)
    model(images[:2]).sum().backward()
    assert model.blocks[11].mlp.fc2.weight.grad is not None


@torch.no_grad()
def test_kernel_record_shows_the_hybrid_baseline(images):
    hybrid = repshift.patch(make(), metric="attn_cls", layers=(0, 3), ratio=0.2, attention="sdpa")
    assert record_kernels(hybrid, images)[0] == ["eager", "sdpa:flash(cpu)"]
    ours = repshift.patch(make(), **DEIT_S_SCHEDULE)
    assert record_kernels(ours, images)[0] == ["sdpa:flash(cpu)"]


def test_patched_model_pickles(images):
    model = repshift.patch(make(), **DEIT_S_SCHEDULE)
    clone = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        assert torch.equal(clone(images[:1]), model(images[:1]))


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(metric="l3"), ValueError, "unknown metric"),
        (dict(site="ffn"), ValueError, "unknown site"),
        (dict(attention="xformers"), ValueError, "unknown attention backend"),
        (dict(ratio=1.0), ValueError, r"ratio must be in \[0, 1\)"),
        (dict(ratio=-0.1), ValueError, r"ratio must be in \[0, 1\)"),
        (dict(ratio=(0.2, 0.2)), ValueError, "has 2 entries but layers has 3"),
        (dict(ratio=None, num=197), ValueError, "only 196"),
        (dict(ratio=None, num=(100, 50, 47)), ValueError, "only 46"),
        (dict(ratio=None, num=-1), ValueError, "non-negative"),
        (dict(layers=(0, 12)), ValueError, "out of range"),
        (dict(layers=(-1,)), ValueError, "out of range"),
        (dict(layers=(3, 3)), ValueError, "repeated"),
        (dict(num=5), ValueError, "exactly one of ratio or num"),
        (dict(ratio=None), ValueError, "exactly one of ratio or num"),
        (dict(keep="middle"), ValueError, "keep must be"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(DEIT_S_SCHEDULE)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        repshift.patch(make(), **args)


def test_unsupported_models_and_double_patching():
    with pytest.raises(TypeError, match="no repshift adapter supports RegNet.*timm VisionTransformer"):
        repshift.patch(timm.create_model("regnetx_002"), **DEIT_S_SCHEDULE)
    model = repshift.patch(make(), **DEIT_S_SCHEDULE)
    with pytest.raises(RuntimeError, match="already patched"):
        repshift.patch(model, **DEIT_S_SCHEDULE)
    with pytest.raises(RuntimeError, match="unpatch"):
        repshift.representation_shift(model, torch.randn(1, 3, 224, 224))
    with pytest.raises(RuntimeError, match="not patched"):
        repshift.unpatch(make())
    with pytest.raises(ValueError, match="l2, l1 or cos"):
        repshift.representation_shift(make(), torch.randn(1, 3, 224, 224), metric="attn")
