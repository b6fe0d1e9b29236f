import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from repshift.data import synthetic_video as S
from repshift.data.check import load_dataset_config
from repshift.data.video_text import SKIPPED_INDEX, VideoTextRetrievalDataset
from repshift.evaluate.retrieval import (
    NOT_A_CANDIDATE,
    evaluate_retrieval,
    format_metrics,
    itc_similarity,
    itm_rerank,
    retrieval_metrics,
    topk_candidates,
)

from support import run_torchrun_workers

KEYS = ["t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "r_mean", "hm_r1", "hm_r5", "hm_r10"]


# ----------------------------------------------------------------------------------------- recall by hand
# 4 texts x 3 videos. Video 0 has caption 0; video 1 has captions 1, 2; video 2 has captions 1, 3
# (text 1 has two ground-truth videos, 1 and 2).
SIM = [
    [0.9, 0.5, 0.1],  # t0, gt v0: order v0 v1 v2 -> rank 0
    [0.8, 0.2, 0.6],  # t1, gt {v1, v2}: order v0 v2 v1 -> best rank 1 (v2)
    [0.3, 0.1, 0.7],  # t2, gt v1: order v2 v0 v1 -> rank 2
    [0.4, 0.6, 0.5],  # t3, gt v2: order v1 v2 v0 -> rank 1
]
TXT2VID = [0, [1, 2], 1, 2]
VID2TXT = [[0], [1, 2], [1, 3]]
# V2T (columns): v0 [.9 .8 .3 .4] gt {t0} -> 0; v1 [.5 .2 .1 .6] gt {t1, t2}: order t3 t0 t1 t2 -> 2;
# v2 [.1 .6 .7 .5] gt {t1, t3}: order t2 t1 t3 t0 -> 1


def test_hand_computed_recall_4x3():
    m = retrieval_metrics(torch.tensor(SIM), TXT2VID, VID2TXT)
    assert list(m) == KEYS
    assert m["t2v_r1"] == pytest.approx(25.0)  # ranks 0 1 2 1
    assert m["v2t_r1"] == pytest.approx(100 / 3)  # ranks 0 2 1
    assert m["t2v_r5"] == m["t2v_r10"] == m["v2t_r5"] == m["v2t_r10"] == 100.0
    assert m["r_mean"] == pytest.approx((25 + 100 / 3 + 400) / 6)
    assert m["hm_r1"] == pytest.approx(2 * 25 * (100 / 3) / (25 + 100 / 3))  # 28.571...
    assert m["hm_r5"] == m["hm_r10"] == 100.0
    assert retrieval_metrics(np.array(SIM), TXT2VID, VID2TXT) == m  # numpy in, same numbers


def test_separate_v2t_scores_and_ties_go_to_lower_index():
    flat = torch.zeros(4, 3)
    m = retrieval_metrics(flat, TXT2VID, VID2TXT)
    # ties everywhere: candidates in index order, so T2V ranks 0 1 1 2 and V2T ranks 0 1 1
    assert m["t2v_r1"] == 25.0 and m["v2t_r1"] == pytest.approx(100 / 3)
    v2t = torch.tensor([[0.0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]])  # best text per video: t3, t2, t3
    m = retrieval_metrics(flat, TXT2VID, VID2TXT, sim_v2t=v2t)
    assert m["v2t_r1"] == pytest.approx(200 / 3) and m["t2v_r1"] == 25.0
    assert m["hm_r1"] == pytest.approx(2 * 25 * (200 / 3) / (25 + 200 / 3))
    assert retrieval_metrics(torch.zeros(1, 1), [0], [[0]])["hm_r1"] == 100.0


def test_hm_is_zero_when_both_directions_miss():
    sim = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    m = retrieval_metrics(sim, [0, 1], [[0], [1]])
    assert m["t2v_r1"] == m["v2t_r1"] == m["hm_r1"] == 0.0


def test_recall_matches_a_brute_force_count_on_a_larger_problem():
    g = torch.Generator().manual_seed(0)
    n_videos, n_texts = 30, 50
    sim = torch.rand(n_texts, n_videos, generator=g)  # continuous: no ties
    txt2vid = [int(v) for v in torch.randint(0, n_videos, (n_texts,), generator=g)]
    txt2vid[:n_videos] = list(range(n_videos))  # every video has a caption
    vid2txt = [[t for t in range(n_texts) if txt2vid[t] == v] for v in range(n_videos)]
    m = retrieval_metrics(sim, txt2vid, vid2txt)
    # rank = how many candidates score strictly higher than the best ground truth
    t2v = [int((sim[t] > sim[t, txt2vid[t]]).sum()) for t in range(n_texts)]
    v2t = [min(int((sim[:, v] > sim[t, v]).sum()) for t in vid2txt[v]) for v in range(n_videos)]
    for k in (1, 5, 10):
        assert m[f"t2v_r{k}"] == pytest.approx(100 * np.mean([r < k for r in t2v]))
        assert m[f"v2t_r{k}"] == pytest.approx(100 * np.mean([r < k for r in v2t]))
    assert 0 < m["t2v_r1"] < m["t2v_r5"] < m["t2v_r10"] < 100


def test_metrics_input_validation():
    with pytest.raises(ValueError, match="txt2vid has 3"):
        retrieval_metrics(torch.zeros(4, 3), [0, 1, 2], VID2TXT)
    with pytest.raises(ValueError, match=r"vid2txt\[1\] is empty"):
        retrieval_metrics(torch.zeros(4, 3), TXT2VID, [[0], [], [1, 3]])
    with pytest.raises(ValueError, match="out of range"):
        retrieval_metrics(torch.zeros(4, 3), [0, [1, 3], 1, 2], VID2TXT)
    with pytest.raises(ValueError, match="sim_v2t"):
        retrieval_metrics(torch.zeros(4, 3), TXT2VID, VID2TXT, sim_v2t=torch.zeros(4, 3))


def test_itc_normalises_each_frame_then_averages():
    frames = torch.tensor([[[1.0, 0.0], [0.0, 10.0]]])  # one video, two frames of different norms
    text = torch.tensor([[3.0, 0.0]])
    # cosines per frame 1 and 0 -> 0.5; (averaging first would give 0.5 / sqrt(25.25) ~ 0.0995)
    torch.testing.assert_close(itc_similarity(frames, text), torch.tensor([[0.5]]))
    assert itc_similarity(frames[:, 0], text).item() == pytest.approx(1.0)  # one pooled vector per video


def test_topk_candidates_best_first_ties_to_lower_index():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9], [1.0, 1.0, 1.0, 1.0]])
    assert topk_candidates(scores, 3).tolist() == [[1, 3, 2], [0, 1, 2]]
    assert topk_candidates(scores, 128).shape == (2, 4)


# ----------------------------------------------------------------------------------------- a fake UMT
class TableModel(nn.Module):
    """A deterministic stand-in for the UMT retrieval model, read from tables.

    A clip is filled with its video's index; text ``"text i"`` tokenises to id ``i + 1``. Frame features and text
    features are rows of fixed tables; video tokens and text hidden states one-hot code the index, so
    ``itm_scores`` can look the pair up in the ``itm`` table (and records which pairs it was asked for).
    """

    def __init__(self, frame_feats, text_feats, itm):
        super().__init__()
        self.register_buffer("frame_table", torch.as_tensor(frame_feats, dtype=torch.float32))
        self.register_buffer("text_table", torch.as_tensor(text_feats, dtype=torch.float32))
        self.register_buffer("itm_table", torch.as_tensor(itm, dtype=torch.float32))
        self.scale = nn.Parameter(torch.ones(()))  # a parameter so .to()/.eval() are real
        self.videos_seen: list[int] = []
        self.pairs_scored: list[tuple[int, int]] = []
        self.modes: list[bool] = []

    def tokenize(self, texts, max_length):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        ids[:, 0] = torch.tensor([int(t.split()[-1]) + 1 for t in texts])
        mask = (ids > 0).long()
        return ids, mask

    def encode_video(self, video):
        self.modes.append(self.training)
        idx = video[:, 0, 0, 0, 0].round().long()
        self.videos_seen.extend(idx.tolist())
        n_videos = self.itm_table.shape[1]
        tokens = nn.functional.one_hot(idx, n_videos).float()[:, None].expand(-1, 3, -1) * self.scale
        return tokens, self.frame_table[idx]

    def encode_text(self, input_ids, attention_mask):
        idx = input_ids[:, 0] - 1
        hidden = nn.functional.one_hot(idx, self.itm_table.shape[0]).float()[:, None].expand(-1, input_ids.shape[1], -1)
        return hidden * attention_mask[..., None], self.text_table[idx]

    def itm_scores(self, video_tokens, text_hidden, text_mask):
        v = video_tokens[:, 0].argmax(-1)
        t = text_hidden[:, 0].argmax(-1)
        self.pairs_scored.extend(zip(t.tolist(), v.tolist()))
        return self.itm_table[t, v]


class TableDataset(torch.utils.data.Dataset):
    """Video ``i`` is a tiny clip filled with ``i``; ``skipped`` videos come back as unreadable."""

    def __init__(self, n_videos, txt2vid, vid2txt, skipped=()):
        self.n_videos, self.skipped = n_videos, set(skipped)
        self.texts = [f"text {t}" for t in range(len(txt2vid))]
        self.txt2vid, self.vid2txt, self.max_txt_len = txt2vid, vid2txt, 4

    def __len__(self):
        return self.n_videos

    def __getitem__(self, i):
        if i in self.skipped:
            return torch.zeros(2, 3, 2, 2), SKIPPED_INDEX
        return torch.full((2, 3, 2, 2), float(i)), i


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# Videos at 0/60/120 degrees, texts at 10/50/100/130: cosine falls with the angle between them.
# ITC top-2 per text: t0 {v0, v1}, t1 {v1, v0}, t2 {v2, v1}, t3 {v2, v1};
# ITC top-2 per video: v0 {t0, t1}, v1 {t1, t2}, v2 {t3, t2}.
HAND_FRAMES = [[unit(0), unit(0)], [unit(60), unit(60)], [unit(120), unit(120)]]  # two identical frames each
HAND_TEXTS = [unit(10), unit(50), unit(100), unit(130)]
HAND_TXT2VID = [0, 0, 1, 2]
HAND_VID2TXT = [[0, 1], [2], [3]]
NOT_CAND = 50.0  # (t0, v2) is in neither top-2: a huge ITM score that must never be computed nor used
HAND_ITM = [
    [1.0, 2.0, NOT_CAND],  # t0: ITM prefers v1 over its ground truth v0 -> T2V miss after re-ranking
    [3.0, 0.0, -7.0],  # t1: v0 now first -> hit (ITC had v1 first)
    [-7.0, 5.0, 1.0],  # t2: v1 first -> hit (ITC had v2 first)
    [-7.0, -1.0, 4.0],  # t3: v2 -> hit
]
# ITM V2T: v0 {t0: 1, t1: 3} -> t1, a ground truth; v1 {t1: 0, t2: 5} -> t2 hit; v2 {t3: 4, t2: 1} -> t3 hit.


def hand_model():
    return TableModel(HAND_FRAMES, HAND_TEXTS, HAND_ITM)


def test_itm_rerank_scores_only_candidates_and_fills_minus_100():
    model = hand_model()
    sim = itc_similarity(model.frame_table, model.text_table)
    tokens = {v: model.encode_video(torch.full((1, 2, 3, 2, 2), float(v)))[0][0] for v in range(3)}
    ids, mask = model.tokenize([f"text {t}" for t in range(4)], 4)
    hidden, _ = model.encode_text(ids, mask)
    score_t2v, score_v2t = itm_rerank(model, sim, tokens, hidden, mask, k_test=2, batch_size=2)
    N = NOT_A_CANDIDATE
    assert score_t2v.tolist() == [[1, 2, N], [3, 0, N], [N, 5, 1], [N, -1, 4]]
    assert score_v2t.tolist() == [[1, 3, N, N], [N, 0, 5, N], [N, N, 1, 4]]
    # each candidate pair scored once, the pair in neither top-k never
    assert sorted(model.pairs_scored) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (2, 2), (3, 1), (3, 2)]


def test_evaluate_retrieval_hand_problem_itm_and_embedding_only():
    model = hand_model()
    model.train()
    ds = TableDataset(3, HAND_TXT2VID, HAND_VID2TXT)
    res = evaluate_retrieval(model, ds, batch_size=2, k_test=2, progress=False)
    # embedding-only: T2V ranks 0 1 1 0, V2T ranks 0 1 0
    assert res["emb"]["t2v_r1"] == 50.0 and res["emb"]["v2t_r1"] == pytest.approx(200 / 3)
    # ITM re-ranked: T2V ranks 1 0 0 0, V2T ranks 0 0 0
    assert res["itm"]["t2v_r1"] == 75.0 and res["itm"]["v2t_r1"] == 100.0
    assert res["itm"]["hm_r1"] == pytest.approx(2 * 75 * 100 / 175)
    assert (res["n_videos"], res["n_texts"], res["skipped_videos"], res["skipped_texts"], res["k_test"]) == (3, 4, 0, 0, 2)
    assert "embedding-only" in res["rankings"]["emb"] and "ITM" in res["rankings"]["itm"]
    assert model.training and not any(model.modes)  # evaluated in eval mode, mode restored
    assert sorted(model.videos_seen) == [0, 1, 2]
    assert format_metrics(res["itm"]).startswith("T2V 75.00/100.00/100.00 | V2T 100.00/")
    # k_test=128 > 3 videos: every pair is a candidate, so (t0, v2) = 50 now counts: t0 misses, and v2's best
    # text becomes t0 (a miss too)
    everything = evaluate_retrieval(hand_model(), ds, k_test=128, progress=False)["itm"]
    assert everything["t2v_r1"] == 75.0 and everything["v2t_r1"] == pytest.approx(200 / 3)
    # embedding-only evaluation never calls the ITM head
    emb_only = hand_model()
    res_emb = evaluate_retrieval(emb_only, ds, itm=False, progress=False)
    assert res_emb["itm"] is None and res_emb["emb"] == res["emb"] and emb_only.pairs_scored == []


def test_skipped_video_is_left_out_with_texts_that_lose_every_ground_truth():
    ds = TableDataset(3, HAND_TXT2VID, HAND_VID2TXT, skipped={2})
    res = evaluate_retrieval(hand_model(), ds, batch_size=2, k_test=2, progress=False)
    assert (res["n_videos"], res["n_texts"], res["skipped_videos"], res["skipped_texts"]) == (2, 3, 1, 1)
    # left: videos v0 v1, texts t0 t1 t2. ITC top-2 = both videos for every text.
    # ITM T2V: t0 -> v1 (miss), t1 -> v0 (hit), t2 -> v1 (hit); V2T top-2 of 3 texts: v0 {t0, t1} -> t1 hit,
    # v1 {t1, t2} -> t2 hit
    assert res["itm"]["t2v_r1"] == pytest.approx(200 / 3) and res["itm"]["v2t_r1"] == 100.0


def test_synthetic_videos_end_to_end_with_workers_and_a_corrupt_file(tmp_path):
    """Real decoding in DataLoader workers, a corrupt clip skipped and counted; a colour-reading fake model."""
    root = tmp_path / "syn"
    S.generate(root, n_videos=5, num_frames=8, size=32, fps=8)
    (root / "videos" / "clip_003.mp4").write_bytes(b"broken")
    cfg = load_dataset_config(["dataset=synthetic_video", f"dataset.root={root}", "dataset.img_size=16",
                               "dataset.num_frames=2", "dataset.skip_corrupt=true", "dataset.generate=null"]).dataset
    ds = VideoTextRetrievalDataset.from_config(cfg)
    colours = list(S.COLOURS)

    class ColourModel(TableModel):
        def encode_video(self, video):
            # frame feature: the mean colour of each frame (the shape's colour dominates the contrast)
            feats = video.mean(dim=(-1, -2))
            return feats.repeat(1, 1, 4), feats

        def tokenize(self, texts, max_length):
            ids = torch.zeros(len(texts), max_length, dtype=torch.long)
            ids[:, 0] = torch.tensor([colours.index(t.split()[1]) + 1 for t in texts])
            return ids, (ids > 0).long()

        def encode_text(self, input_ids, attention_mask):
            rgb = torch.tensor([S.COLOURS[c] for c in colours], dtype=torch.float32) / 255.0
            return attention_mask[..., None].float().expand(-1, -1, 2), rgb[input_ids[:, 0] - 1] - 0.45

        def itm_scores(self, video_tokens, text_hidden, text_mask):
            return video_tokens.sum(dim=(1, 2)) * 0 + text_mask.sum(1)

    model = ColourModel(torch.zeros(1, 1, 1), torch.zeros(1, 1), torch.zeros(1, 1))
    res = evaluate_retrieval(model, ds, batch_size=2, num_workers=2, k_test=4, progress=False)
    assert (res["n_videos"], res["n_texts"], res["skipped_videos"], res["skipped_texts"]) == (4, 4, 1, 1)
    assert list(res["emb"]) == KEYS and list(res["itm"]) == KEYS
    assert res["emb"]["t2v_r5"] == 100.0  # 4 candidates only


# ----------------------------------------------------------------------------------------- torchrun, 2 processes
def random_problem():
    """9 videos (one unreadable), 14 texts, some with two ground-truth videos; random features and ITM table."""
    g = torch.Generator().manual_seed(7)
    n_videos, n_texts = 9, 14
    txt2vid = [t % n_videos for t in range(n_texts)]
    txt2vid[10] = [1, 4]
    txt2vid[12] = [3, 8, 5]
    vid2txt = [[t for t, gt in enumerate(txt2vid) if v in (gt if isinstance(gt, list) else [gt])] for v in range(n_videos)]
    model = TableModel(torch.randn(n_videos, 3, 6, generator=g), torch.randn(n_texts, 6, generator=g),
                       torch.randn(n_texts, n_videos, generator=g))
    return model, TableDataset(n_videos, txt2vid, vid2txt, skipped={6})


WORKER = """
import json, os, sys
sys.path.insert(0, {tests_dir!r})
from repshift import distributed as D
from repshift.evaluate.retrieval import evaluate_retrieval
from test_retrieval import random_problem

rank, world, _ = D.init_from_env(backend="gloo")
model, ds = random_problem()
res = evaluate_retrieval(model, ds, batch_size=2, k_test=3, text_batch_size=4, itm_batch_size=2, progress=True)
with open(os.path.join({out_dir!r}, "rank%d.json" % rank), "w") as f:
    json.dump(dict(res=res, videos=sorted(model.videos_seen), pairs=sorted(model.pairs_scored)), f)
D.barrier()
D.cleanup()
"""


@pytest.mark.e2e
def test_torchrun_two_processes_match_single_process(tmp_path):
    outs = run_torchrun_workers(WORKER, tmp_path, Path(__file__).parent)

    model, ds = random_problem()
    single = evaluate_retrieval(model, ds, batch_size=2, k_test=3, text_batch_size=4, itm_batch_size=2, progress=False)
    assert (single["n_videos"], single["skipped_videos"]) == (8, 1)
    assert 0 < single["itm"]["t2v_r1"] < 100 and single["itm"] != single["emb"]
    for out in outs:
        assert out["res"] == json.loads(json.dumps(single))  # every rank: exactly the single-process result
    # videos encoded in disjoint shards; each ITM pair scored on exactly one rank
    assert outs[0]["videos"] == [0, 2, 4, 8] and outs[1]["videos"] == [1, 3, 5, 7]
    pairs0, pairs1 = {tuple(p) for p in outs[0]["pairs"]}, {tuple(p) for p in outs[1]["pairs"]}
    assert not pairs0 & pairs1 and pairs0 | pairs1 == set(model.pairs_scored)
