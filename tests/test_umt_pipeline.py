"""UMT with repshift: the adapter, the runner's retrieval evaluator and bench, the video tables, the SMOKE sweep."""
from __future__ import annotations

import json
import math

import pytest
import torch

import repshift
from repshift.patch import READINGS, find_adapter
from repshift import bench, tasks
from repshift.models import build_model
from repshift.models import umt
from repshift.record import Identity, RunRecord
from repshift.report.video_tables import DATASETS, build_fig1, build_fig3_umt, build_table2, fig1_points

from support import SMALL_UMT, clip, make_record, make_smoke, run_module, small_encoder

# --------------------------------------------------------------------------- adapter


def test_umt_b_token_counts_at_12_frames():
    """The paper's schedule on UMT-B at 12 frames: 20 % after blocks 0, 1, 2 -> 2352, 1882, 1506, 1205."""
    with torch.device("meta"):  # the real UMT-B, for the adapter's own view of it (nothing is computed)
        umt_b = umt.vision_encoder("b", 12)
    adapter = find_adapter(umt_b)
    assert (adapter.family, adapter.depth(umt_b), adapter.droppable(umt_b)) == ("umt", 12, 2352)
    # Token counts depend on the sequence, not the width: a 12-frame, 224x224 encoder of width 8.
    model = umt.vision_encoder("b", 12, embed_dim=8, depth=4, num_heads=1, proj_dim=8).eval()
    repshift.patch(model, metric="l2", site="mlp", layers=(0, 1, 2), ratio=0.2)
    with torch.no_grad():
        tokens, frames = model.encode(torch.randn(1, 12, 3, 224, 224))
    assert model.repshift.tokens == [2352, 1882, 1506, 1205]
    assert tokens.shape == (1, 1205, 8) and frames.shape == (1, 12, 8)


def test_frame_provenance_follows_the_kept_tokens():
    model = small_encoder()
    video = clip()
    repshift.patch(model, metric="l2", site="mlp", layers=(0, 1), ratio=0.4)
    with torch.no_grad():
        tokens, frame_embeddings = model.encode(video)
    book = model.repshift.book
    assert model.repshift.tokens == [16, 10, 6]
    # every survivor keeps the frame it came from (token t * 4 + p is patch p of frame t)
    assert torch.equal(book["frame"], book["position"] // 4)
    # pooling averages, per frame, exactly the survivors of that frame; a frame with none gets the clip mean
    for b in range(video.shape[0]):
        for t in range(4):
            mine = tokens[b, book["frame"][b] == t]
            mean = mine.mean(0) if len(mine) else tokens[b].mean(0)
            expected = model.vision_proj(model.pool_norm(mean))
            torch.testing.assert_close(frame_embeddings[b, t], expected, rtol=1e-5, atol=1e-5)


def test_a_frame_that_lost_every_token_gets_the_clip_mean():
    model = small_encoder()
    # static keeps the first tokens: dropping 12 of 16 leaves frame 0 alone
    repshift.patch(model, metric="none", layers=(0,), num=12)
    with torch.no_grad():
        tokens, frame_embeddings = model.encode(clip())
    assert torch.equal(model.repshift.book["frame"], torch.zeros(2, 4, dtype=torch.long))
    # frames 1-3 fall back to the clip mean, which is frame 0's mean here: all four embeddings agree
    for t in (1, 2, 3):
        torch.testing.assert_close(frame_embeddings[:, t], frame_embeddings[:, 0])


def test_ratio_zero_is_the_unpatched_forward_and_unpatch_restores_it():
    model = small_encoder()
    video = clip()
    with torch.no_grad():
        reference = model.encode(video)
        repshift.patch(model, metric="l2", layers=(0, 1, 2), ratio=0.0, attention="sdpa")
        patched = model.encode(video)
        assert model.repshift.tokens == [16, 16, 16]
        repshift.unpatch(model)
        restored = model.encode(video)
    for got in (patched, restored):
        torch.testing.assert_close(got[0], reference[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(got[1], reference[1], rtol=0, atol=1e-6)
    assert type(model) is umt.UMTVision and type(model.blocks[0]) is umt.Block
    assert type(model.blocks[0].attn) is umt.Attention and not repshift.is_patched(model)


def test_eager_and_sdpa_prune_the_same_tokens():
    video = clip()
    outputs = {}
    for kernel in ("eager", "sdpa"):
        model = small_encoder()
        repshift.patch(model, metric="l2", site="mlp", layers=(0, 1), ratio=0.3, attention=kernel)
        with torch.no_grad():
            outputs[kernel] = model.encode(video), model.repshift.book["position"]
    assert torch.equal(outputs["eager"][1], outputs["sdpa"][1])
    torch.testing.assert_close(outputs["eager"][0][0], outputs["sdpa"][0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs["eager"][0][1], outputs["sdpa"][0][1], rtol=1e-4, atol=1e-5)


def test_l2_mlp_keeps_the_tokens_with_the_largest_shift():
    """The shift score computed by hand from the block's own modules picks the survivors of block 0."""
    model = small_encoder()
    video = clip()
    with torch.no_grad():
        x, _ = model.embed(video)
        block = model.blocks[0]
        x_mid = x + block.attn(block.norm1(x))
        # D(MLP(LN(x')), x') = ||MLP(LN(x')) - x'||_2, as Eqs. 4-6 write it (the literal reading)
        shift = torch.linalg.vector_norm(block.mlp(block.norm2(x_mid)) - x_mid, dim=-1)
        expected = shift.topk(8, dim=1).indices.sort(dim=1).values
        repshift.patch(model, metric="l2", site="mlp", layers=(0,), ratio=0.5)
        model.encode(video)
    assert torch.equal(model.repshift.book["position"], expected)


def test_attn_is_eq3_mean_attention_and_eq2_is_refused():
    model = small_encoder()
    repshift.patch(model, metric="attn", layers=(0,), ratio=0.5, attention="eager")
    assert model.repshift.metric == "attn_mean"
    video = clip()
    with torch.no_grad():
        x, _ = model.embed(video)
        q, k, _ = model.blocks[0].attn.qkv_heads(model.blocks[0].norm1(x))
        probs = ((q * model.blocks[0].attn.scale) @ k.transpose(-2, -1)).softmax(-1)
        received = probs.mean(dim=(1, 2))  # Eq. 3: attention each token receives, over queries and heads
        model.encode(video)
    assert torch.equal(model.repshift.book["position"], received.topk(8, dim=1).indices.sort(dim=1).values)
    repshift.unpatch(model)
    with pytest.raises(ValueError, match="no class token"):
        repshift.patch(model, metric="attn_cls", layers=(0,), ratio=0.5)
    with pytest.raises(ValueError, match="another host family"):
        repshift.patch(model, metric="top_vim", layers=(0,), ratio=0.5)
    assert not repshift.is_patched(model)


def test_every_metric_site_and_reading_prunes():
    """Shift metrics under every site and reading; attention scores and the controls (which read no site) at every site."""
    model = small_encoder()
    video = clip(batch=1)
    options = [(m, s, r) for m in ("l2", "l1", "cos") for s in ("attn", "mlp", "block") for r in READINGS]
    options += [(m, s, "literal") for m in ("attn", "attn_mean", "random", "none") for s in ("attn", "mlp", "block")]
    for metric, site, reading in options:
        repshift.patch(model, metric=metric, site=site, reading=reading, layers=(0, 2), ratio=0.25)
        with torch.no_grad():
            tokens, frame_embeddings = model.encode(video)
        option = (metric, site, reading)
        assert model.repshift.tokens == [16, 12, 12], option
        assert tokens.shape == (1, 9, 16) and frame_embeddings.shape == (1, 4, 8), option
        assert torch.isfinite(frame_embeddings).all(), option
        repshift.unpatch(model)


def test_record_scores_gives_every_block():
    model = small_encoder()
    shift = repshift.representation_shift(model, clip(), metric="l2", site="mlp")
    attention = repshift.attention_scores(model, clip(), metric="attn")
    assert shift.shape == attention.shape == (2, 3, 16)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 3))  # mean attention received sums to 1


def tiny_retrieval() -> umt.UMTRetrieval:
    torch.manual_seed(0)
    text = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=128,
                max_position_embeddings=64, fusion_layer=1)
    return umt.retrieval_model("b", 4, vision=SMALL_UMT, text=text, tokenizer="tiny").eval()


def test_patching_a_retrieval_model_prunes_its_encoder():
    model = tiny_retrieval()
    video = clip()
    repshift.patch(model, metric="l2", layers=(0,), ratio=0.5)
    assert model.vision.repshift is model.repshift and repshift.is_patched(model.vision)
    ids, mask = model.tokenize(["a red circle", "a blue square"], 8)
    with torch.no_grad():
        tokens, _ = model.encode_video(video)
        hidden, _ = model.encode_text(ids, mask)
        scores = model.itm_scores(tokens, hidden, mask)
    assert tokens.shape[1] == 8 and scores.shape == (2,) and model.repshift.tokens == [16, 8, 8]
    # bench times and counts the encoder, the part pruning changes
    part, what = tasks.bench_part(model)
    assert part is model.vision and what == "vision encoder"
    assert tasks.bench_part(model.vision) == (model.vision, "whole model (UMTVision)")
    with pytest.raises(RuntimeError, match="retrieval model"):
        repshift.unpatch(model.vision)
    repshift.unpatch(model)
    assert type(model.vision) is umt.UMTVision and not repshift.is_patched(model.vision)
    assert not hasattr(model.vision, "repshift_state")


def test_gmacs_of_umt_b_count_what_the_paper_counts_but_layernorm():
    """303.12 G for UMT-B at 12 frames: linears, both attention matmuls, the Conv3d; the paper's fvcore also
    counts LayerNorm (5 per element of 25 norms of 2352 x 768 = 0.226 G): 303.3."""
    with torch.device("meta"):
        model = umt.vision_encoder("b", 12)
    n, c = 2352, 768
    per_block = n * c * (3 * c + c + 2 * 4 * c) + 2 * n * n * c
    expected = (12 * per_block + n * c * 3 * 16 * 16 + 12 * c * 512) / 1e9
    assert bench.count_gmacs(model, (12, 3, 224, 224)) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(303.12, abs=0.01)
    assert expected + 25 * n * c * 5 / 1e9 == pytest.approx(303.3, abs=0.06)


def test_build_model_builds_the_target():
    config = {"_target_": "repshift.models.umt.build", "name": "umt_b16", "size": "b", "num_frames": 4,
              "part": "vision", "pretrained": False, "checkpoint": None, "vision": SMALL_UMT, "input_size": [4, 3, 32, 32],
              "unit": "vid/s"}
    model, weights = build_model(config)
    assert isinstance(model, umt.UMTVision) and weights == {"real": False, "source": "random-init"}
    timm_config = {"_target_": "repshift.models.build_timm", "name": "vit_tiny_patch16_224", "pretrained": False,
                   "checkpoint": None, "kwargs": {"embed_dim": 16, "depth": 1, "num_heads": 1},
                   "input_size": [3, 224, 224], "unit": "img/s", "unsafe_full_unpickle": False}
    assert type(build_model(timm_config)[0]).__name__ == "VisionTransformer"
    with pytest.raises(ValueError, match="the model config has no _target_"):
        build_model({k: v for k, v in config.items() if k != "_target_"})
    with pytest.raises(ValueError, match=r"model._target_='os.system': a model is built by a function under "
                                         r"repshift.models. only"):
        build_model({**config, "_target_": "os.system"})
    with pytest.raises(ValueError, match=r"model._target_=repshift.models.umt.nothing: no such function"):
        build_model({**config, "_target_": "repshift.models.umt.nothing"})
    with pytest.raises(ValueError, match=r"unknown model config keys \['kwarg'\]"):
        build_model({**timm_config, "kwarg": {}})


# --------------------------------------------------------------------------- tables


def _result(model, method, attention, *, dataset=None, hm=None, throughput=None, gmacs=None, real=True):
    """A Table 2 run record (tests.support.make_record): evaluated on ``dataset``, or timed (``throughput``)."""
    return make_record(
        identity=Identity.of({"m": model, "method": method, "a": attention, "d": dataset}, [],
                             "cuda:NVIDIA RTX A6000", "test"),
        experiment="table2", method={"name": method, "label": method},
        model={"name": model, "arch": "umt", "family": "umt"}, attention=attention,
        weights={"real": real, "source": "file:umt.pth"}, evaluator="retrieval" if dataset else None,
        dataset={"name": dataset, "root": "/data", "synthetic": False, "n": 1000,
                 "ranking": {"name": "itm", "description": "ITM"}} if dataset else None,
        metrics={"hm_r1": hm, "hm_r5": hm + 20, "hm_r10": hm + 30} if dataset else {},
        bench={"throughput": throughput, "unit": "vid/s", "repeats": [throughput], "kernel": [attention], "batch": 20,
               "iters": 10, "warmup": 2, "num_repeats": 1, "precision": "amp-float16",
               "device": "NVIDIA RTX A6000"} if throughput is not None else None,
        gmacs=gmacs if throughput is not None else None)


def table2_results():
    runs = [
        _result("umt_b", "base", "eager", throughput=30.0, gmacs=303.12),
        _result("umt_b", "base", "sdpa", throughput=80.0, gmacs=303.12),
        _result("umt_b", "attn", "eager", throughput=60.0, gmacs=156.0),
        _result("umt_b", "ours", "sdpa", throughput=165.0, gmacs=156.0),
        _result("umt_b", "ours", "eager", throughput=50.0, gmacs=156.0),
    ]
    for i, dataset in enumerate(DATASETS):
        runs += [_result("umt_b", "base", "sdpa", dataset=dataset, hm=50.0 + i),
                 _result("umt_b", "attn", "eager", dataset=dataset, hm=45.0 + i),
                 _result("umt_b", "ours", "sdpa", dataset=dataset, hm=48.0 + i)]
    return runs


def test_table2_puts_paper_numbers_beside_ours():
    df = build_table2(table2_results())
    assert len(df.index) == 3 + 3 * 7 + 1  # throughput, speed-up, GFLOPs; R@1/5/10 of 7 datasets; mean R@1
    assert df.loc["Throughput", "UMT-B Base · ours"] == 30.0  # Base is self-attention, as the paper's 32
    assert df.loc["Throughput", "UMT-B Base · paper"] == 32.0
    assert df.loc["Throughput", "UMT-B Ours · Δ"] == pytest.approx(165.0 - 175.0)
    assert df.loc["Throughput", "UMT-B Base+FA · ours"] == 80.0  # throughput only, beside the paper's columns
    assert df.loc["Speed-up ×", "UMT-B Ours · ours"] == pytest.approx(5.5)
    assert df.loc["Speed-up ×", "UMT-B Ours · paper"] == pytest.approx(175 / 32)
    assert df.loc["GFLOPs", "UMT-B Attn · paper"] == 156.4
    assert df.loc["MSRVTT · R@1", "UMT-B Ours · ours"] == 48.0
    assert df.loc["MSRVTT · R@1", "UMT-B Ours · paper"] == 48.0
    assert df.loc["SSV2-Template · R@10", "UMT-B Attn · ours"] == 45.0 + 6 + 30
    assert df.loc["ActivityNet · R@5", "UMT-B Base · paper"] == 83.7
    assert df.loc["Speed-up ×", "UMT-B Ours (self-attn) · ours"] == pytest.approx(50.0 / 30.0)
    assert math.isnan(df.loc["DiDeMo · R@1", "UMT-B Ours (self-attn) · ours"])
    assert "UMT-L Ours (self-attn) · ours" not in df.columns and not df.attrs["notes"][-1].startswith("1 cell")
    assert df.loc["Mean of 7 · R@1", "UMT-B Base · ours"] == pytest.approx(53.0)
    paper_base = [50.0, 62.1, 57.2, 62.1, 32.7, 64.0, 74.6]
    assert df.loc["Mean of 7 · R@1", "UMT-B Base · paper"] == pytest.approx(sum(paper_base) / 7)
    assert math.isnan(df.loc["MSRVTT · R@1", "UMT-L Ours · ours"])  # no UMT-L results: an empty column
    assert df.loc["MSRVTT · R@1", "UMT-L Ours · paper"] == 56.5
    assert not any("†" in str(i) for i in df.index)


def test_fig1_points_and_png(tmp_path):
    from repshift.report.fig1 import plot_fig1

    points = {p["variant"]: p for p in fig1_points(table2_results())}
    assert points["ours"]["throughput"] == 165.0 and points["ours-sa"]["throughput"] == 50.0
    assert points["ours"]["mean_r1"] == pytest.approx(51.0) and points["ours"]["datasets"] == 7
    assert points["ours"]["paper_throughput"] == 175.0 and math.isnan(points["ours-sa"]["paper_throughput"])
    df = build_fig1(table2_results())
    assert df.loc["UMT-B Attn", "Mean R@1 · ours"] == pytest.approx(48.0)
    assert df.loc["UMT-B Ours+FA", "Throughput · paper"] == 175.0 and df.loc["UMT-B Ours", "Throughput · ours"] == 50.0
    assert df.loc["UMT-B Ours+FA", "Speed-up × · ours"] == pytest.approx(165.0 / 30.0)  # over Base, one device
    assert df.loc["UMT-B Ours+FA", "Speed-up × · paper"] == pytest.approx(175 / 32)
    assert "Throughput · Δ" not in df.columns  # absolute rates on other GPUs are not compared
    png = plot_fig1(list(points.values()), tmp_path / "fig1.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fig3_umt_reads_the_harmonic_mean():
    def run(metric, resolved, layer, hm):
        return make_record(identity=Identity.of({"m": metric, "l": layer}, [], "cpu", "test"),
                           method={"name": "x", "label": "x"}, model={"name": "umt_b", "arch": "umt", "family": "umt"},
                           metric=metric, metric_resolved=resolved, site="attn", compress={"layers": [layer]},
                           evaluator="retrieval", metrics={"hm_r1": hm}, bench=None)
    base = make_record(method={"name": "base", "label": "Base"}, model={"name": "umt_b", "arch": "umt", "family": "umt"},
                       compress=None, evaluator="retrieval", metrics={"hm_r1": 50.0}, bench=None)
    df = build_fig3_umt([run("attn", "attn_mean", 0, 40.0), run("l2", "l2", 0, 45.0), run("l2", "l2", 2, 47.0), base])
    assert df.loc["attn_mean (Eq. 3)", "layer 0"] == 40.0 and df.loc["l2-attn", "layer 2"] == 47.0
    assert df.attrs["baseline"] == {"umt_b": 50.0}


# --------------------------------------------------------------------------- the runner, end to end


def test_synthetic_video_pipeline_end_to_end(tmp_path):
    """python -m repshift.run on the tiny UMT and the synthetic clips: retrieval metrics, pruned tokens, bench."""
    run_module(tmp_path, "model=umt_tiny", "dataset=synthetic_video", "method=ours", "compress.layers=[0,1,2]",
               "task=[evaluate,bench]", "logger=none", "progress=false", "dataset.num_workers=0",
               "bench.cpu.batch_size=1", "bench.cpu.iters=1", "bench.cpu.repeats=1", "bench.cpu.warmup=0",
               f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / 'out'}")
    (path,) = (tmp_path / "out").rglob("result.json")
    result = json.loads(path.read_text())
    assert result["evaluator"] == "retrieval" and result["model"]["family"] == "umt"
    assert result["dataset"]["synthetic"] and result["dataset"]["ranking"]["name"] == "itm"
    assert (result["dataset"]["n"], result["dataset"]["n_texts"]) == (8, 8)
    metrics = result["metrics"]
    for key in ("t2v_r1", "v2t_r10", "r_mean", "hm_r1", "hm_r5", "hm_r10", "emb_hm_r1"):
        assert 0.0 <= metrics[key] <= 100.0
    assert metrics["t2v_r10"] == metrics["v2t_r10"] == 100.0  # 8 videos: every ground truth is in the top 10
    assert result["tokens"] == [784, 628, 503, 403]  # 4 frames x 196, 20 % after blocks 0, 1, 2
    assert result["bench"]["part"] == "vision encoder" and result["bench"]["unit"] == "vid/s"
    # GMACs of the pruned encoder, as counted here on a fresh encoder of the same size
    config = json.loads(json.dumps(result["config"]["model"]))
    encoder = build_model({**config, "part": "vision"})[0]
    repshift.patch(encoder, metric="l2", site="mlp", layers=(0, 1, 2), ratio=0.2)
    assert result["gmacs"] == pytest.approx(bench.count_gmacs(encoder, (4, 3, 224, 224)))
    table = build_table2([(path, RunRecord.read(path))])
    assert table.loc["synthetic_video · R@1 †", "umt_tiny Ours · ours"] == pytest.approx(metrics["hm_r1"])


@pytest.mark.slow
def test_make_reproduce_table2_smoke_prints_table2(tmp_path):
    """`make reproduce-table2 SMOKE=1`: both sweeps (54 runs) on the tiny UMT and the synthetic clips, then the table."""
    out, outputs = make_smoke("reproduce-table2", tmp_path)
    assert "## Table 2" in out and (outputs / "tables" / "table2.md").exists()
    for dataset in ("MSRVTT", "MSVD", "ActivityNet", "DiDeMo", "LSMDC", "SSV2-Label", "SSV2-Template"):
        for k in ("R@1", "R@5", "R@10"):
            assert f"{dataset} · {k} †" in out
    for column in ("UMT-B Base · ours", "UMT-L Attn · paper", "UMT-L Ours · Δ", "UMT-B Base+FA · ours"):
        assert column in out
    assert "Throughput †" in out and "GFLOPs †" in out and "175" in out  # the paper's UMT-B Ours throughput
    assert len(list((outputs / "table2").rglob("result.json"))) == 42 + 12
