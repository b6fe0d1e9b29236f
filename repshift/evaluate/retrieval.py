"""Video-text retrieval evaluated as UMT does it: ITC candidates, ITM re-ranking, R@1/5/10 both ways.

Two rankings come out of :func:`evaluate_retrieval`, and every table must say which one it shows:

* ``"itm"`` - UMT's reported numbers (its ``test/`` rows): for each text the ``k_test`` (128) videos with the
  highest ITC similarity are scored by the ITM head, and for each video the ``k_test`` texts likewise; the
  ranking uses the ITM logit alone (every non-candidate scores -100, below any candidate), ITC only picks the
  candidates.
* ``"emb"`` - embedding-only ranking (UMT's ``test_emb/`` rows): the ITC similarity itself.

ITC similarity (:func:`itc_similarity`): each frame's projected feature and the text's projected feature are
L2-normalised, their cosine is taken per frame, and the cosines are averaged over frames (normalise first, then
average - not a cosine with the frame-averaged feature). No temperature.

The model is used through four methods (the UMT retrieval model provides them)::

    model.encode_video(video [B, T, 3, H, W]) -> (video_tokens [B, N, C], frame_feats [B, T, D])
    model.encode_text(input_ids, attention_mask) -> (text_hidden [B, L, Ct], text_feat [B, D])
    model.itm_scores(video_tokens [B, N, C], text_hidden [B, L, Ct], text_mask [B, L]) -> [B]
    model.tokenize(texts, max_length) -> (input_ids [B, L], attention_mask [B, L])

Under torchrun each rank encodes a strided shard of the videos and of the texts; frame and text features are
all-gathered (small), the video tokens stay on the rank that encoded them, and each ITM (text, video) pair is
scored by the rank that owns the video. Every rank then holds the same score matrices, so the metrics equal a
single process's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import repshift.distributed as D
from repshift.evaluate.errors import nothing_evaluated

__all__ = [
    "RANKINGS",
    "retrieval_metrics",
    "itc_similarity",
    "topk_candidates",
    "itm_rerank",
    "encode_videos",
    "encode_texts",
    "evaluate_retrieval",
    "format_metrics",
]

#: What each ranking in :func:`evaluate_retrieval`'s result is, for tables and logs.
RANKINGS = {
    "itm": "ITM re-ranked (top-k ITC candidates scored by the ITM head; UMT's reported test/ numbers)",
    "emb": "embedding-only (ITC cosine similarity; UMT's test_emb/ numbers)",
}

#: The score UMT gives every pair outside the top-k candidates.
NOT_A_CANDIDATE = -100.0

_METRIC_KEYS = ("t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "r_mean", "hm_r1", "hm_r5", "hm_r10")


# -------------------------------------------------------------------------------------------------- metrics
def _to_numpy(scores) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        return scores.detach().float().cpu().numpy()
    return np.asarray(scores, dtype=np.float64)


def _gt_lists(gts: Sequence, n_candidates: int, what: str) -> list[list[int]]:
    out = []
    for q, gt in enumerate(gts):
        gt_list = [int(gt)] if isinstance(gt, (int, np.integer)) else [int(g) for g in gt]
        if not gt_list:
            raise ValueError(f"{what}[{q}] is empty: every query needs at least one ground truth")
        if min(gt_list) < 0 or max(gt_list) >= n_candidates:
            raise ValueError(f"{what}[{q}]={gt_list} is out of range for {n_candidates} candidates")
        out.append(gt_list)
    return out


def _ranks(scores: np.ndarray, gts: list[list[int]]) -> np.ndarray:
    """0-based rank of each query's best-placed ground truth; candidates sorted by descending score, ties by index."""
    order = np.argsort(-scores, axis=1, kind="stable")
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.broadcast_to(np.arange(scores.shape[1]), scores.shape), axis=1)
    return np.array([position[q, gt].min() for q, gt in enumerate(gts)], dtype=np.int64)


def _harmonic(a: float, b: float) -> float:
    return 2.0 * a * b / (a + b) if a + b > 0 else 0.0


def retrieval_metrics(sim_t2v, txt2vid: Sequence, vid2txt: Sequence, sim_v2t=None) -> dict[str, float]:
    """Recall@1/5/10 (percent) text-to-video and video-to-text, their mean, and their harmonic means.

    Args:
        sim_t2v: ``[texts, videos]`` scores (tensor or array); higher is better.
        txt2vid: ``txt2vid[t]`` the ground-truth video of text ``t`` (an int) or its videos (a list).
        vid2txt: ``vid2txt[v]`` the texts of video ``v`` (a list of ints).
        sim_v2t: ``[videos, texts]`` scores for video-to-text when they are not ``sim_t2v`` transposed (ITM
            re-ranking scores the two directions over different candidate sets).

    A text's T2V rank is the best rank among its ground-truth videos; a video's V2T rank is the best rank among
    its captions. R@K is the percentage of queries ranked within the first K. ``r_mean`` is the mean of the six
    recalls (UMT's ``r_mean``); ``hm_rK`` is the harmonic mean of T2V and V2T R@K (0 when both are 0).
    Ties are broken towards the lower index.
    """
    t2v = _to_numpy(sim_t2v)
    if t2v.ndim != 2:
        raise ValueError(f"sim_t2v must be [texts, videos], got shape {t2v.shape}")
    n_texts, n_videos = t2v.shape
    v2t = t2v.T if sim_v2t is None else _to_numpy(sim_v2t)
    if v2t.shape != (n_videos, n_texts):
        raise ValueError(f"sim_v2t must be [videos, texts] = {(n_videos, n_texts)}, got {v2t.shape}")
    if len(txt2vid) != n_texts or len(vid2txt) != n_videos:
        raise ValueError(
            f"sim_t2v is {n_texts} texts x {n_videos} videos but txt2vid has {len(txt2vid)} entries "
            f"and vid2txt {len(vid2txt)}"
        )
    t2v_ranks = _ranks(t2v, _gt_lists(txt2vid, n_videos, "txt2vid"))
    v2t_ranks = _ranks(v2t, _gt_lists(vid2txt, n_texts, "vid2txt"))
    out: dict[str, float] = {}
    for k in (1, 5, 10):
        out[f"t2v_r{k}"] = 100.0 * float(np.mean(t2v_ranks < k))
    for k in (1, 5, 10):
        out[f"v2t_r{k}"] = 100.0 * float(np.mean(v2t_ranks < k))
    out["r_mean"] = sum(out[f"{d}_r{k}"] for d in ("t2v", "v2t") for k in (1, 5, 10)) / 6.0
    for k in (1, 5, 10):
        out[f"hm_r{k}"] = _harmonic(out[f"t2v_r{k}"], out[f"v2t_r{k}"])
    return {key: out[key] for key in _METRIC_KEYS}


# ------------------------------------------------------------------------------------------------- scoring
def itc_similarity(frame_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """``[texts, videos]``: mean over frames of cos(frame feature, text feature).

    ``frame_feats`` is ``[videos, T, D]`` (or ``[videos, D]`` for one pooled vector), ``text_feats`` ``[texts, D]``;
    both are L2-normalised here, per frame, before the frame average.
    """
    video = F.normalize(frame_feats.float(), dim=-1)
    if video.dim() == 2:
        video = video[:, None]
    text = F.normalize(text_feats.float(), dim=-1)
    return torch.einsum("vfd,td->tvf", video, text).mean(-1)


def topk_candidates(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of each row's ``min(k, columns)`` highest scores, best first (ties towards the lower index)."""
    k = min(int(k), scores.shape[1])
    return torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]


def _pairs_by_video(t2v_candidates: torch.Tensor, v2t_candidates: torch.Tensor) -> dict[int, list[int]]:
    """The texts each video must be ITM-scored against: its own top-k texts and every text that has it in its top-k."""
    pairs: dict[int, set[int]] = {v: set(row) for v, row in enumerate(v2t_candidates.tolist())}
    for t, row in enumerate(t2v_candidates.tolist()):
        for v in row:
            pairs.setdefault(v, set()).add(t)
    return {v: sorted(ts) for v, ts in pairs.items()}


@torch.inference_mode()
def _itm_scores_for_videos(
    model, video_tokens: dict[int, torch.Tensor], texts_of: dict[int, list[int]], text_hidden: torch.Tensor,
    text_mask: torch.Tensor, *, batch_size: int, device: torch.device, amp_dtype: torch.dtype | None, progress: bool,
) -> list[tuple[int, int, float]]:
    """``(text, video, ITM logit)`` for every text in ``texts_of[v]`` of every video ``v`` in ``video_tokens``."""
    out: list[tuple[int, int, float]] = []
    for v in tqdm(sorted(video_tokens), desc="ITM re-rank", disable=not progress):
        tokens = video_tokens[v].to(device)
        texts = texts_of.get(v, [])
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            hidden = text_hidden[chunk].to(device)
            mask = text_mask[chunk].to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                scores = model.itm_scores(tokens.unsqueeze(0).expand(len(chunk), *tokens.shape), hidden, mask)
            out.extend((t, v, s) for t, s in zip(chunk, scores.float().cpu().tolist()))
    return out


def itm_rerank(
    model, sim_t2v: torch.Tensor, video_tokens: dict[int, torch.Tensor], text_hidden: torch.Tensor,
    text_mask: torch.Tensor, *, k_test: int = 128, batch_size: int = 32, device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None, progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """UMT's ITM re-ranking: ``(score_t2v [texts, videos], score_v2t [videos, texts])``.

    For each text its ``k_test`` best videos by ``sim_t2v``, for each video its ``k_test`` best texts, are
    scored with ``model.itm_scores``; all other entries are -100. ``video_tokens`` maps a video index to its
    tokens ``[N, C]``; under torchrun each rank passes the videos it encoded and scores only their pairs, and
    the pair scores are gathered, so every rank returns the full matrices. ``text_hidden`` / ``text_mask``
    cover every text.
    """
    device = torch.device(device)
    t2v_candidates = topk_candidates(sim_t2v, k_test)
    v2t_candidates = topk_candidates(sim_t2v.T, k_test)
    texts_of = _pairs_by_video(t2v_candidates, v2t_candidates)
    mine = _itm_scores_for_videos(
        model, video_tokens, texts_of, text_hidden, text_mask,
        batch_size=batch_size, device=device, amp_dtype=amp_dtype, progress=progress,
    )
    pair_score = {(t, v): s for part in D.all_gather_objects(mine) for t, v, s in part}
    n_texts, n_videos = sim_t2v.shape
    score_t2v = torch.full((n_texts, n_videos), NOT_A_CANDIDATE, dtype=torch.float64)
    score_v2t = torch.full((n_videos, n_texts), NOT_A_CANDIDATE, dtype=torch.float64)
    for t, row in enumerate(t2v_candidates.tolist()):
        for v in row:
            score_t2v[t, v] = pair_score[(t, v)]
    for v, row in enumerate(v2t_candidates.tolist()):
        for t in row:
            score_v2t[v, t] = pair_score[(t, v)]
    return score_t2v, score_v2t


# ------------------------------------------------------------------------------------------------ encoding
class _IndexedVideos(Dataset):
    """``(dataset_index, clip, returned_index)`` for a subset of a video dataset (``returned_index`` -1: skipped)."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        clip, returned = self.dataset[self.indices[i]]
        return self.indices[i], clip, returned


def _collate_videos(batch):
    indices = torch.tensor([b[0] for b in batch], dtype=torch.long)
    clips = torch.stack([b[1] for b in batch])
    valid = torch.tensor([b[2] >= 0 for b in batch], dtype=torch.bool)
    return indices, clips, valid


@torch.inference_mode()
def encode_videos(
    model, dataset, indices: Sequence[int], *, batch_size: int = 32, num_workers: int = 0,
    device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None, progress: bool = False,
    keep_tokens: bool = True,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], list[int]]:
    """Encode ``dataset``'s videos ``indices``, decoded in ``num_workers`` DataLoader workers.

    Returns ``(frame_feats {i: [T, D] float32}, video_tokens {i: [N, C]} on the CPU in the model's output dtype,
    skipped)``, where ``skipped`` lists the videos the dataset could not read (``skip_corrupt``). With
    ``keep_tokens=False`` (no ITM re-ranking to come) the tokens are not kept.
    """
    device = torch.device(device)
    loader = DataLoader(
        _IndexedVideos(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_collate_videos, pin_memory=device.type == "cuda",
    )
    frame_feats: dict[int, torch.Tensor] = {}
    video_tokens: dict[int, torch.Tensor] = {}
    skipped: list[int] = []
    for idx, clips, valid in tqdm(loader, desc="encode videos", disable=not progress):
        skipped.extend(idx[~valid].tolist())
        if not bool(valid.any()):
            continue
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            tokens, feats = model.encode_video(clips[valid].to(device, non_blocking=True))
        for i, tok, feat in zip(idx[valid].tolist(), tokens.cpu(), feats.float().cpu()):
            if keep_tokens:
                video_tokens[i] = tok.clone()  # own storage: a view would keep the whole batch alive
            frame_feats[i] = feat.clone()
    return frame_feats, video_tokens, skipped


def _pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, length - x.shape[1])) if x.dim() == 3 else F.pad(x, (0, length - x.shape[1]))


@torch.inference_mode()
def encode_texts(
    model, texts: Sequence[str], max_length: int, *, batch_size: int = 256, device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(text_hidden [n, L, Ct], text_mask [n, L], text_feat [n, D] float32)`` on the CPU, ``batch_size`` texts at a time.

    Texts are tokenised to ``max_length`` (UMT pads every text to it); chunks padded to different lengths are
    zero-padded (mask 0) to the longest.
    """
    device = torch.device(device)
    hidden, masks, feats = [], [], []
    for start in range(0, len(texts), batch_size):
        input_ids, attention_mask = model.tokenize(list(texts[start : start + batch_size]), max_length)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            text_hidden, text_feat = model.encode_text(input_ids, attention_mask)
        hidden.append(text_hidden.cpu())
        masks.append(attention_mask.cpu())
        feats.append(text_feat.float().cpu())
    if not hidden:
        raise ValueError("no texts to encode")
    length = max(h.shape[1] for h in hidden)
    return (torch.cat([_pad_to(h, length) for h in hidden]), torch.cat([_pad_to(m, length) for m in masks]),
            torch.cat(feats))


# -------------------------------------------------------------------------------------------------- driver
def _keep_subproblem(n_videos: int, txt2vid: Sequence, vid2txt: Sequence, skipped: set[int]):
    """Drop skipped videos, and texts left with no ground-truth video; return kept ids and re-indexed maps."""
    keep_v = [v for v in range(n_videos) if v not in skipped]
    new_v = {v: i for i, v in enumerate(keep_v)}
    gts = [[int(gt)] if isinstance(gt, (int, np.integer)) else [int(g) for g in gt] for gt in txt2vid]
    keep_t = [t for t, gt in enumerate(gts) if any(v in new_v for v in gt)]
    new_t = {t: i for i, t in enumerate(keep_t)}
    sub_txt2vid = [[new_v[v] for v in gts[t] if v in new_v] for t in keep_t]
    sub_vid2txt = [[new_t[t] for t in vid2txt[v] if t in new_t] for v in keep_v]
    return keep_v, keep_t, sub_txt2vid, sub_vid2txt


def evaluate_retrieval(
    model, dataset, *, batch_size: int = 32, num_workers: int = 0, device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None, k_test: int = 128, itm: bool = True, max_txt_len: int | None = None,
    text_batch_size: int = 256, itm_batch_size: int = 32, progress: bool = True,
) -> dict:
    """Retrieval metrics of ``model`` on a video-text ``dataset``, single process or sharded under torchrun.

    ``dataset`` is a :class:`~repshift.data.video_text.VideoTextRetrievalDataset` or anything with its interface:
    ``len`` = number of videos, ``dataset[i] -> (clip [T, 3, H, W], i or -1 when skipped)``, and attributes
    ``texts``, ``txt2vid``, ``vid2txt``, ``max_txt_len``. Skipped videos are left out of both rankings (texts whose
    ground-truth videos were all skipped too) and counted.

    Returns ``{"emb": metrics, "itm": metrics or None, "rankings": RANKINGS, "k_test", "n_videos", "n_texts",
    "skipped_videos", "skipped_texts"}`` with ``metrics`` as :func:`retrieval_metrics` gives them;
    ``itm=False`` skips the re-ranking (embedding-only evaluation). Every rank returns the same dict. No video
    left to rank (all skipped as unreadable, or none in the split) is an
    :class:`~repshift.evaluate.errors.EmptyEvaluationError`.
    """
    device = torch.device(device)
    rank, world = D.get_rank(), D.get_world_size()
    show = progress and rank == 0
    max_txt_len = int(max_txt_len if max_txt_len is not None else dataset.max_txt_len)
    was_training = model.training
    model.to(device).eval()
    try:
        frame_feats, video_tokens, skipped = encode_videos(
            model, dataset, D.shard_indices(len(dataset), rank, world), batch_size=batch_size,
            num_workers=num_workers, device=device, amp_dtype=amp_dtype, progress=show, keep_tokens=itm,
        )
        text_ids = D.shard_indices(len(dataset.texts), rank, world)
        text_part = encode_texts(
            model, [dataset.texts[t] for t in text_ids], max_txt_len, batch_size=text_batch_size,
            device=device, amp_dtype=amp_dtype,
        ) if text_ids else None
        gathered = D.all_gather_objects((frame_feats, skipped, text_ids, text_part))

        all_frame_feats: dict[int, torch.Tensor] = {}
        all_skipped: set[int] = set()
        text_rows: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for feats, skips, ids, part in gathered:
            all_frame_feats.update(feats)
            all_skipped.update(skips)
            if part is not None:
                text_rows.update({t: (part[0][j], part[1][j], part[2][j]) for j, t in enumerate(ids)})
        keep_v, keep_t, txt2vid, vid2txt = _keep_subproblem(len(dataset), dataset.txt2vid, dataset.vid2txt, all_skipped)
        if not keep_v or not keep_t:
            raise nothing_evaluated(dataset, total=len(dataset), skipped=len(all_skipped), unit="videos")
        length = max(text_rows[t][0].shape[0] for t in keep_t)
        text_hidden = torch.stack([_pad_to(text_rows[t][0][None], length)[0] for t in keep_t])
        text_mask = torch.stack([_pad_to(text_rows[t][1][None], length)[0] for t in keep_t])
        text_feat = torch.stack([text_rows[t][2] for t in keep_t])
        sim_t2v = itc_similarity(torch.stack([all_frame_feats[v] for v in keep_v]), text_feat)

        result = {
            "emb": retrieval_metrics(sim_t2v, txt2vid, vid2txt),
            "itm": None,
            "rankings": dict(RANKINGS),
            "k_test": int(k_test),
            "n_videos": len(keep_v),
            "n_texts": len(keep_t),
            "skipped_videos": len(all_skipped),
            "skipped_texts": len(dataset.texts) - len(keep_t),
        }
        if itm:
            new_v = {v: i for i, v in enumerate(keep_v)}
            mine = {new_v[v]: tok for v, tok in video_tokens.items() if v in new_v}
            score_t2v, score_v2t = itm_rerank(
                model, sim_t2v, mine, text_hidden, text_mask, k_test=k_test, batch_size=itm_batch_size,
                device=device, amp_dtype=amp_dtype, progress=show,
            )
            result["itm"] = retrieval_metrics(score_t2v, txt2vid, vid2txt, sim_v2t=score_v2t)
    finally:
        model.train(was_training)
    return result


def format_metrics(metrics: dict[str, float] | None) -> str:
    """One log line: ``T2V R@1/5/10 | V2T R@1/5/10 | mean | HM R@1`` (``-`` for a ranking that was not run)."""
    if metrics is None:
        return "-"
    m = {k: f"{v:.2f}" for k, v in metrics.items()}
    return (f"T2V {m['t2v_r1']}/{m['t2v_r5']}/{m['t2v_r10']} | V2T {m['v2t_r1']}/{m['v2t_r5']}/{m['v2t_r10']} | "
            f"mean {m['r_mean']} | HM R@1 {m['hm_r1']}")
