"""Token pruning in Vision Mamba (repshift/patch/vim.py): the adapter against a hand-written pruned
forward, ToP-ViM's score, GMACs with the selective scan counted, configs, and Table 7's SMOKE run.

Everything runs on the test model of repshift/configs/model/vim_tiny.yaml (ViM-T's 24 layers and 197
tokens at width 32), so ViM's real schedule applies; the full ViM-T only in the slow GMACs test.
"""
from __future__ import annotations

import json
import math

import pytest
import timm
import torch
import yaml
from support import CONFIGS, compose_run, make_smoke

import repshift
from repshift import scores
from repshift.bench import count_gmacs
from repshift.models.vim import VisionMamba, count_macs
from repshift.patch import record_scores
from repshift.run import recorded_method
from repshift.select import keep_indices

TINY_KWARGS = yaml.safe_load((CONFIGS / "model" / "vim_tiny.yaml").read_text())["kwargs"]
VIM_SCHEDULE = yaml.safe_load((CONFIGS / "compress" / "vim.yaml").read_text())
SCHEDULE = dict(layers=tuple(VIM_SCHEDULE["layers"]), num=tuple(VIM_SCHEDULE["num"]))
# ToP-ViM keeps ceil(0.8 * patches) tokens with the class token, made odd: 197 -> 157 -> 125.
PRUNED_TOKENS = [197] * 10 + [157] * 10 + [125] * 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """ViM's per-position scan is many small ops: on 2 shared cores a second thread only adds waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def vim_tiny(seed: int = 0) -> VisionMamba:
    torch.manual_seed(seed)
    return timm.create_model("vim_t_midclstok", **TINY_KWARGS).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


# Scores written out from the layer's tensors: r = residual input, h = mixer output, n = RMSNorm(r).
HAND_SCORES = {
    "literal": lambda r, h, n, backward: (h - r).norm(dim=-1),
    "update": lambda r, h, n, backward: h.norm(dim=-1),  # ||(r + h) - r||
    "normed": lambda r, h, n, backward: (h - n).norm(dim=-1),
    "top_vim": lambda r, h, n, backward: backward.sum(dim=1),  # reversed order, not flipped back
}


@torch.no_grad()
def reference_forward(model: VisionMamba, images, layers, nums, score):
    """ViM's forward with pruning written out: each scheduled layer keeps the top tokens of ``score``
    (the class token always) in scan order, indexing hidden and residual with the same indices.
    Returns the logits and the original positions of the surviving tokens."""
    hidden, _ = model.embed(images)
    batch, tokens = hidden.shape[:2]
    rows = torch.arange(batch)[:, None]
    positions = torch.arange(tokens).expand(batch, tokens)
    residual = None
    for index, layer in enumerate(model.layers):
        hidden, residual = layer(hidden, residual)
        if index in layers:
            normed = layer.norm(residual)
            backward = layer.mixer.directional_outputs(normed)[1]
            is_cls = positions == model.cls_position
            keep = keep_indices(score(residual, hidden, normed, backward), nums[layers.index(index)], is_cls)
            hidden, residual, positions = hidden[rows, keep], residual[rows, keep], positions[rows, keep]
    cls = (positions == model.cls_position).int().argmax(dim=1)
    features = model.final_norm(hidden, residual)[torch.arange(batch), cls]
    return model.head(features), positions


# --------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("metric,reading", [("l2", "literal"), ("l2", "update"), ("l2", "normed"),
                                            ("top_vim", "literal")])
def test_pruned_forward_matches_a_hand_written_one(images, metric, reading):
    model = vim_tiny()
    expected, positions = reference_forward(model, images, SCHEDULE["layers"], SCHEDULE["num"],
                                            HAND_SCORES["top_vim" if metric == "top_vim" else reading])
    repshift.patch(model, metric=metric, site="mixer", reading=reading, **SCHEDULE)
    with torch.no_grad():
        logits = model(images)
    state = model.repshift
    assert state.tokens == PRUNED_TOKENS
    # Both streams and the records were gathered with the same kept indices, in scan order.
    assert torch.equal(state.book["position"], positions)
    assert bool((positions.diff(dim=1) > 0).all())
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_class_token_survives_and_the_head_reads_it(images):
    model = vim_tiny()
    repshift.patch(model, metric="l2", site="mixer", **SCHEDULE)
    with torch.no_grad():
        hidden, cls_index = model.embed(images)
        hidden, residual, cls_index = model.forward_layers(hidden, cls_index)
        logits = model(images)
    book = model.repshift.book
    assert hidden.shape == residual.shape == (2, 125, 32)
    assert book["protected"].sum(dim=1).tolist() == [1, 1]
    rows = torch.arange(2)
    assert book["position"][rows, cls_index].tolist() == [98, 98]
    # The head reads the final-normed token at the class token's new index, nothing else.
    expected = model.head(model.final_norm(hidden, residual)[rows, cls_index])
    torch.testing.assert_close(logits, expected)


def test_the_class_token_keeps_its_neighbours_in_scan_order(images):
    """A random score drops tokens on both sides: the class token ends up between the kept tokens
    that were its neighbours, not re-centred (ToP-ViM's released code re-centres it)."""
    model = vim_tiny()
    repshift.patch(model, metric="random", site="mixer", seed=3, **SCHEDULE)
    with torch.no_grad():
        model(images)
    position = model.repshift.book["position"]
    cls = model.repshift.book["protected"].int().argmax(dim=1)
    assert (position[:, :-1] < position[:, 1:]).all()
    assert cls.tolist() == (position < 98).sum(dim=1).tolist()


@pytest.mark.parametrize("metric", ["none", "random", "top_vim"])
def test_token_counts_per_layer(images, metric):
    model = vim_tiny()
    repshift.patch(model, metric=metric, site="mixer", **SCHEDULE)
    with torch.no_grad():
        model(images[:1])
    assert model.repshift.tokens == PRUNED_TOKENS


def test_ratio_schedule_counts(images):
    """``ratio`` drops floor(ratio * patches): ToP-ViM's active layers 5, 10, 15 at 20 %."""
    model = vim_tiny()
    repshift.patch(model, metric="l2", site="mixer", layers=(4, 9, 14), ratio=0.2)
    with torch.no_grad():
        model(images[:1])
    assert model.repshift.tokens == [197] * 5 + [158] * 5 + [127] * 5 + [102] * 9


def test_ratio_zero_is_the_model_unchanged(images):
    model = vim_tiny()
    with torch.no_grad():
        expected = model(images)
    repshift.patch(model, metric="l2", site="mixer", layers=SCHEDULE["layers"], ratio=0.0)
    with torch.no_grad():
        assert torch.equal(model(images), expected)
    assert model.repshift.tokens == [197] * 24
    repshift.unpatch(model)
    assert type(model) is VisionMamba
    with torch.no_grad():
        assert torch.equal(model(images), expected)


def test_recorded_scores_are_the_shift_across_every_mixer(images):
    model = vim_tiny()
    recorded = record_scores(model, images[:1], metric="l2", site="mixer", reading="update")
    assert recorded.shape == (1, 24, 197)
    with torch.no_grad():
        hidden, _ = model.embed(images[:1])
        hidden, residual = model.layers[0](hidden, None)
    torch.testing.assert_close(recorded[:, 0], hidden.norm(dim=-1))


# --------------------------------------------------------------------------- ToP-ViM's score


def test_top_vim_score_by_hand():
    # Backward-scan output (batch 1, 2 channels, 3 tokens), index 0 = the last token.
    backward = torch.tensor([[[1.0, -2.0, 4.0], [0.5, 3.0, -1.0]]])
    assert scores.top_vim(backward).tolist() == [[1.5, 1.0, 3.0]]  # channel sums, no clamp, not flipped


def test_top_vim_reads_the_backward_scan_of_the_pruning_layer(images):
    model = vim_tiny()
    repshift.patch(model, metric="top_vim", site="mixer", layers=(0,), num=(1,))
    with torch.no_grad():
        model(images)
        hidden, _ = model.embed(images)
        backward = model.layers[0].mixer.directional_outputs(model.layers[0].norm(hidden))[1]
    scores_by_hand = backward.sum(dim=1)
    scores_by_hand[:, 98] = math.inf
    dropped = scores_by_hand.argmin(dim=1)
    assert model.repshift.tokens[1] == 196
    for row in range(2):
        assert int(dropped[row]) not in model.repshift.book["position"][row].tolist()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("metric", ["attn", "attn_cls", "attn_mean"])
def test_attention_metrics_are_refused(metric):
    with pytest.raises(ValueError, match="Vision Mamba has no attention"):
        repshift.patch(vim_tiny(), metric=metric, site="mixer", **SCHEDULE)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(metric="l2", site="mlp", **SCHEDULE), r"unknown site 'mlp' for vim; expected one of \('mixer',\)"),
        (dict(metric="l2", site="mixer", layers=(24,), ratio=0.2), "out of range: the model has blocks 0..23"),
        (dict(metric="l2", site="mixer", layers=(9, 19), num=(150, 50)), "only 46 non-prefix tokens are left"),
    ],
)
def test_bad_settings_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        repshift.patch(vim_tiny(), **kwargs)


def test_a_class_token_elsewhere_is_refused(images):
    model = repshift.patch(vim_tiny(), metric="l2", site="mixer", **SCHEDULE)
    hidden, cls_index = model.embed(images)
    with pytest.raises(ValueError, match="class token must enter the layers at index 98"):
        model.forward_layers(hidden, cls_index - 1)


# --------------------------------------------------------------------------- GMACs


def macs_by_hand(tokens_per_layer, dim=32, state=4, classes=1000, patches=196, patch_pixels=3 * 16 * 16) -> int:
    """ViM MACs written out: patch embedding, then per layer in_proj, out_proj and per direction
    the causal conv (width 4), x_proj (dt_rank + 2·state outputs), dt_proj and the scan
    (6·state + 5 FLOPs per channel and token, halved), then the head. Norms and activations count 0."""
    inner, dt_rank = 2 * dim, math.ceil(dim / 16)
    per_direction = inner * 4 + inner * (dt_rank + 2 * state) + dt_rank * inner + inner * (6 * state + 5) // 2
    per_token = dim * 2 * inner + 2 * per_direction + inner * dim
    return patches * patch_pixels * dim + sum(tokens_per_layer) * per_token + dim * classes


@pytest.mark.parametrize("pruned", [False, True])
def test_gmacs_count_the_selective_scan(pruned):
    model = vim_tiny()
    if pruned:
        repshift.patch(model, metric="l2", site="mixer", **SCHEDULE)
    tokens = PRUNED_TOKENS if pruned else [197] * 24
    assert round(count_gmacs(model) * 1e9) == macs_by_hand(tokens)
    assert round(count_gmacs(model) * 1e9) == count_macs(model, torch.randn(1, 3, 224, 224))["total"]


def test_gmacs_are_counted_on_the_pytorch_path_whatever_the_backend():
    model = vim_tiny()
    model.scan_backend = "cuda"  # no kernels here: a forward on this backend would raise
    assert round(count_gmacs(model) * 1e9) == macs_by_hand([197] * 24)
    assert model.scan_backend == "cuda"


@pytest.mark.slow
def test_vim_t_gmacs_against_the_paper():
    """Full ViM-T (about a minute on CPU): 1.48 G unpruned, 1.27 G on Table 7's schedule (paper: 1.5, 1.3)."""
    torch.manual_seed(0)
    model = timm.create_model("vim_t_midclstok").eval()
    base = count_gmacs(model)
    repshift.patch(model, metric="l2", site="mixer", **SCHEDULE)
    pruned = count_gmacs(model)
    assert round(base * 1e9) == macs_by_hand([197] * 24, dim=192, state=16) == 1_476_088_320
    assert round(pruned * 1e9) == macs_by_hand(PRUNED_TOKENS, dim=192, state=16)
    assert (round(base, 1), round(pruned, 1)) == (1.5, 1.3)


# --------------------------------------------------------------------------- configs and Table 7


def test_vim_model_configs_have_the_model_config_keys():
    keys = set(yaml.safe_load((CONFIGS / "model" / "deit_s.yaml").read_text()))
    for name in ("vim_t", "vim_tiny"):
        assert set(yaml.safe_load((CONFIGS / "model" / f"{name}.yaml").read_text())) == keys


@pytest.mark.parametrize(
    "method,metric,name,label,compress",
    [
        ("top_vim", "top_vim", "top_vim", "ToP-ViM", VIM_SCHEDULE),
        ("ours", "l2", "ours", "Ours", VIM_SCHEDULE),
        ("static", "none", "static", "Static (control)", VIM_SCHEDULE),
    ],
)
def test_table7_runs_compose(method, metric, name, label, compress):
    cfg = compose_run(["experiment=table7", f"method={method}"])
    assert (cfg.metric, cfg.site, recorded_method(cfg)["name"], cfg.method.label) == (metric, "mixer", name, label)
    assert dict(cfg.compress) == compress


def test_table7_base_is_unpruned():
    cfg = compose_run(["experiment=table7", "method=base", "compress=none"])
    assert recorded_method(cfg)["name"] == "base" and list(cfg.compress.layers) == []


@pytest.mark.slow
def test_make_reproduce_table7_smoke(tmp_path):
    """`make reproduce-table7 SMOKE=1` on vim_tiny (the full ViM-T takes ~1 s per image on CPU)."""
    out, outputs = make_smoke("reproduce-table7", tmp_path, "model=vim_tiny", "dataset.limit=4",
                              env={"OMP_NUM_THREADS": "1"}, timeout=1200)
    assert "Table 7" in out and "ToP-ViM" in out and "75.1" in out and "†" in out
    results = (json.loads(path.read_text()) for path in (outputs / "table7").rglob("result.json"))
    runs = {r["method"]["name"]: r for r in results}
    assert set(runs) == {"base", "top_vim", "ours", "static"}
    assert runs["base"]["tokens"] == []  # unpatched: no token counts
    for name in ("top_vim", "ours", "static"):
        assert runs[name]["tokens"] == PRUNED_TOKENS and runs[name]["model"]["family"] == "vim"
        assert runs[name]["gmacs"] == pytest.approx(macs_by_hand(PRUNED_TOKENS, classes=8) / 1e9)  # smoke: 8-class head
    assert runs["base"]["gmacs"] == pytest.approx(macs_by_hand([197] * 24, classes=8) / 1e9)
    assert (outputs / "tables" / "table7.md").exists()
