"""vid-TLDR merging inside UMT (repshift.patch mode="merge"), its configs, Table 3 and its SMOKE sweep."""
from __future__ import annotations

import math

import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import repshift
from repshift import merge, scores
from repshift.configs import CONFIG_DIR
from repshift.models import umt
from repshift.record import Identity
from repshift.report.core import paper_numbers
from repshift.report.video_tables import DATASETS, build_table3
from repshift.select import gather_tokens

from support import clip, make_record, make_smoke, small_encoder

def hand_forward(model: umt.UMTVision, video: torch.Tensor, schedule: dict, saliency_of):
    """vid-TLDR's encoder written out with repshift.merge: proportional attention, merge after the attention
    residual of the scheduled blocks, global pooling. ``saliency_of(probs, branch, x)`` gives ŝ."""
    x, frames = model.embed(video)
    size = None
    for i, block in enumerate(model.blocks):
        attn = block.attn
        x_norm = block.norm1(x)
        q, k, v = attn.qkv_heads(x_norm)
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        probs = logits.softmax(-1)
        used = probs if size is None else (logits + size.log()[:, None, None, :]).softmax(-1)
        a = attn.merge_heads(used @ v)
        x_mid = x + a
        if schedule.get(i):
            match = merge.bipartite_match(x_mid, schedule[i])
            x_mid, size = merge.merge_tokens(x_mid, match, size, saliency_of(probs, a, x))
            frames = gather_tokens(frames, merge.surviving_positions(match, x.shape[1]))
        x = x_mid + block.mlp(block.norm2(x_mid))
    tokens = model.norm(x)
    return tokens, model.vision_proj(model.pool_norm(tokens.mean(dim=1, keepdim=True))), size, frames


@pytest.mark.parametrize("metric, attention", [("attn_entropy", "eager"), ("l2", "sdpa")])
def test_patched_umt_merges_as_the_hand_written_forward(metric, attention):
    model = small_encoder(keep_temporal=False)
    video = clip()
    if metric == "attn_entropy":
        def saliency_of(probs, a, x):
            return merge.attention_entropy_saliency(probs)
    else:  # representation shift of the attention branch, D(A(x), x) as Eqs. 4-6 write it
        def saliency_of(probs, a, x):
            return merge.normalize_saliency(torch.linalg.vector_norm(a - x, dim=-1))
    with torch.no_grad():
        expected_tokens, expected_pooled, expected_size, expected_frames = hand_forward(
            model, video, {0: 4, 1: 3}, saliency_of)
        repshift.patch(model, metric=metric, site="attn", layers=(0, 1), num=(4, 3), attention=attention, mode="merge")
        tokens, pooled = model.encode(video)
    state = model.repshift
    assert state.tokens == [16, 12, 9]
    torch.testing.assert_close(tokens, expected_tokens, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pooled, expected_pooled, rtol=1e-4, atol=1e-5)
    assert pooled.shape == (2, 1, 8)  # keep_temporal=False: one vector per clip
    torch.testing.assert_close(state.size, expected_size)
    assert torch.equal(state.book["frame"], expected_frames)
    assert torch.equal(state.book["frame"], state.book["position"] // 4)  # a merged token keeps its destination's frame


def test_msrvtt_b_schedule_token_counts_at_12_frames_from_the_configs():
    """vid-TLDR's MSRVTT UMT-B schedule [600, 200, 100]: 2352 -> 1752 -> 1552 -> 1452 (real token count, width 8)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("run", overrides=["experiment=table3", "method=vid_tldr", "model=umt_b", "dataset=msrvtt"])
    c = cfg.compress
    assert (c.mode, list(c.layers), list(c.num), c.proportional) == ("merge", [0, 1, 2, 3], [600, 200, 100, 0], True)
    model = umt.vision_encoder("b", 12, embed_dim=8, depth=4, num_heads=1, proj_dim=8).eval()
    repshift.patch(model, metric="none", site=cfg.site, layers=tuple(c.layers), num=list(c.num), mode=c.mode)
    with torch.no_grad():
        tokens, frame_embeddings = model.encode(torch.randn(1, 12, 3, 224, 224))
    assert model.repshift.tokens == [2352, 1752, 1552, 1452]
    assert tokens.shape == (1, 1452, 8) and frame_embeddings.shape == (1, 12, 8)  # per-frame pooling still works
    assert model.repshift.size.sum().item() == 2352  # ŝ = 1 (metric none): every patch is still counted


def test_configs_select_each_schedule_and_name_the_paper_columns():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        def composed(*overrides):
            return compose("run", overrides=["experiment=table3", *overrides])
        didemo_l = composed("method=vid_tldr", "model=umt_l", "dataset=didemo")
        flash = composed("method=vid_tldr_ours_flash", "dataset=ssv2_template", "smoke=video", "++vid_tldr.table=smoke")
        exact = composed("method=vid_tldr_ours")
    assert list(didemo_l.compress.num) == [800, 100, 0, 0]
    assert (didemo_l.metric, didemo_l.site, didemo_l.attention) == ("attn_entropy", "attn", "eager")
    assert list(flash.compress.num) == [133, 100, 0, 0] and flash.compress.proportional is False
    exact_choice = (exact.metric, exact.site, exact.attention, exact.compress.proportional)
    assert exact_choice == ("l2", "attn", "sdpa", True)
    assert OmegaConf.to_container(exact.model.vision) == {"keep_temporal": False}
    paper_methods = set(paper_numbers("table3")["method"])
    assert {didemo_l.method.name, exact.method.name} <= paper_methods and flash.method.name not in paper_methods


def test_the_runner_refuses_merging_a_non_umt_model_by_name():
    from repshift.run import check_merging

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        deit = compose("run", overrides=["model=deit_t", "method=vid_tldr"])
        qa = compose("run", overrides=["model=umt_b_qa", "method=vid_tldr"])
    with pytest.raises(ValueError, match="applies to UMT models.*model=deit_tiny_patch16_224.*method=tome"):
        check_merging(deit)
    check_merging(qa)  # the QA model holds a UMT encoder: merging applies


def test_keep_temporal_false_pools_all_tokens_into_one_vector():
    model = small_encoder(keep_temporal=False)
    with torch.no_grad():
        tokens, pooled = model.encode(clip())
        expected = model.vision_proj(model.pool_norm(tokens.mean(dim=1, keepdim=True)))
    torch.testing.assert_close(pooled, expected)
    per_frame = small_encoder()
    assert per_frame.keep_temporal and per_frame.state_dict().keys() == model.state_dict().keys()


def test_merge_clamps_and_refuses_what_it_cannot_do():
    model = small_encoder()
    repshift.patch(model, metric="l2", site="mlp", layers=(0, 1), num=(20, 20), mode="merge")  # r > N // 2
    with torch.no_grad():
        tokens, _ = model.encode(clip())
    assert model.repshift.tokens == [16, 8, 4] and tokens.shape[1] == 4
    repshift.unpatch(model)
    with pytest.raises(ValueError, match="unknown metric 'entropy'"):
        repshift.patch(model, metric="entropy", layers=(0,), num=4, mode="merge")
    with pytest.raises(ValueError, match="use it with mode='merge'"):
        repshift.patch(model, metric="attn_entropy", layers=(0,), num=4)
    with pytest.raises(ValueError, match="no class token"):
        repshift.patch(model, metric="attn_cls", layers=(0,), num=4, mode="merge")
    with pytest.raises(ValueError, match="flash_attn"):
        repshift.patch(model, metric="l2", layers=(0,), num=4, mode="merge", attention="flash_attn")
    assert not repshift.is_patched(model)
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=2)  # timm ViTs merge too (test_tome.py)
    with pytest.raises(ValueError, match="mode='merge' does not apply to timm-resnet"):
        repshift.patch(resnet, metric="l2", layers=(0,), num=4, mode="merge")
    assert "attn_entropy" in scores.METRICS


def test_every_merge_saliency_runs_without_proportional_attention():
    video = clip(batch=1)
    for metric in ("attn_entropy", "attn", "l1", "cos", "random", "none"):
        model = small_encoder()
        repshift.patch(model, metric=metric, site="attn", layers=(0, 2), num=(5, 3), mode="merge", proportional=False,
                       attention="eager" if metric.startswith("attn") else "sdpa")
        with torch.no_grad():
            tokens, frame_embeddings = model.encode(video)
        assert model.repshift.tokens == [16, 11, 11] and tokens.shape == (1, 8, 16), metric
        assert torch.isfinite(frame_embeddings).all(), metric


# --------------------------------------------------------------------------- Table 3


def _result(model, method, attention, *, dataset, hm=None, throughput=None, kernel=None, gmacs=None, real=True):
    """A Table 3 run record (tests.support.make_record): evaluated when ``hm`` is given, timed when ``throughput`` is."""
    return make_record(
        identity=Identity.of({"m": model, "method": method, "a": attention, "d": dataset, "hm": hm}, [],
                             "cuda:NVIDIA RTX A6000", "test"),
        experiment="table3", method={"name": method, "label": method},
        model={"name": model, "arch": "umt", "family": "umt"}, attention=attention,
        weights={"real": real, "source": "file:umt.pth"}, config={"dataset": {"name": dataset}},
        evaluator="retrieval" if hm is not None else None,
        dataset={"name": dataset, "root": "/data", "synthetic": False, "n": 1000} if hm is not None else None,
        metrics={"hm_r1": hm} if hm is not None else {},
        bench={"throughput": throughput, "unit": "vid/s", "repeats": [throughput], "kernel": [kernel or attention],
               "batch": 20, "iters": 10, "warmup": 2, "num_repeats": 1, "precision": "amp-float16",
               "device": "NVIDIA RTX A6000"} if throughput is not None else None,
        gmacs=gmacs if throughput is not None else None)


def test_table3_puts_paper_numbers_beside_ours():
    runs = [_result("umt_b", "base", "eager", dataset="msrvtt", throughput=30.0, gmacs=303.1),
            _result("umt_b", "base", "sdpa", dataset="msrvtt", throughput=80.0, gmacs=303.1)]
    for i, dataset in enumerate(DATASETS):
        runs += [_result("umt_b", "vid_tldr", "eager", dataset=dataset, throughput=40.0 + i, gmacs=180.0),
                 _result("umt_b", "vid_tldr_ours", "sdpa", dataset=dataset, throughput=120.0,
                         kernel="sdpa:efficient+bias", gmacs=180.0),
                 _result("umt_b", "vid_tldr_ours_flash", "sdpa", dataset=dataset, throughput=150.0,
                         kernel="sdpa:flash", gmacs=180.0)]
        runs += [_result("umt_b", m, a, dataset=dataset, hm=50.0 + i + j)
                 for j, (m, a) in enumerate([("base", "sdpa"), ("vid_tldr", "eager"), ("vid_tldr_ours", "sdpa"),
                                             ("vid_tldr_ours_flash", "sdpa")])]
    df = build_table3(runs)
    assert len(df.index) == 4 * 7 + 2
    assert df.loc["MSRVTT · Throughput", "UMT-B Base · ours"] == 30.0  # Base is self-attention, as the paper's 32
    assert df.loc["DiDeMo · Throughput", "UMT-B Base · paper"] == 32.0  # the same Base for every dataset
    assert df.loc["MSVD · Throughput", "UMT-B vid-TLDR · ours"] == 41.0
    assert df.loc["MSVD · Throughput", "UMT-B vid-TLDR · paper"] == 42.2
    assert df.loc["MSRVTT · Throughput", "UMT-B +Ours · Δ"] == pytest.approx(120.0 - 131.4)
    assert df.loc["MSRVTT · Speed-up ×", "UMT-B +Ours (flash) · ours"] == pytest.approx(5.0)
    assert math.isnan(df.loc["MSRVTT · Speed-up ×", "UMT-B +Ours (flash) · paper"])  # not a paper column
    assert df.loc["MSRVTT · Speed-up ×", "UMT-B +Ours · paper"] == pytest.approx(131.4 / 32.0)
    assert df.loc["LSMDC · GFLOPs", "UMT-B vid-TLDR · ours"] == 180.0
    assert df.loc["ActivityNet · R@1", "UMT-B +Ours · ours"] == 50.0 + 2 + 2
    assert df.loc["ActivityNet · R@1", "UMT-L +Ours · paper"] == 66.0
    assert df.loc["Mean of 7 · Speed-up ×", "UMT-B +Ours · paper"] == pytest.approx(3.74, abs=0.005)  # the paper's 3.74×
    assert df.loc["Mean of 7 · R@1", "UMT-B Base · ours"] == pytest.approx(53.0)
    assert df.loc["MSRVTT · Throughput", "UMT-B Base+FA · ours"] == 80.0
    assert any("+Ours: sdpa:efficient+bias" in n and "+Ours (flash): sdpa:flash" in n for n in df.attrs["notes"])
    assert not any("†" in str(i) for i in df.index)
    synthetic = build_table3([_result("umt_b", "vid_tldr", "eager", dataset="msrvtt", hm=10.0, real=False)])
    assert "MSRVTT · R@1 †" in synthetic.index


@pytest.mark.slow
def test_make_reproduce_table3_smoke_prints_table3(tmp_path):
    """`make reproduce-table3 SMOKE=1` on one model and one dataset (the full sweep: docs/video.md), then the table."""
    out, outputs = make_smoke("reproduce-table3", tmp_path, "model=umt_b", "dataset=msrvtt", timeout=900)
    assert "## Table 3" in out and (outputs / "tables" / "table3.md").exists()
    for row in ("MSRVTT · Throughput †", "MSRVTT · R@1 †", "MSRVTT · GFLOPs †"):
        assert row in out
    for column in ("UMT-B vid-TLDR · ours", "UMT-B +Ours · paper", "UMT-B +Ours (flash) · ours", "UMT-L vid-TLDR · paper"):
        assert column in out
    assert "131.4" in out and "+Ours: sdpa:flash(cpu), sdpa:flash(cpu)+bias" in out
    assert len(list((outputs / "table3").rglob("result.json"))) == 4 + 3 + 2  # evaluations, merge benches, base
