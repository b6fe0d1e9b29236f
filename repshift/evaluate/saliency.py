"""Do token-importance scores find the known foreground? (the paper's Fig. 4 / 6 claim as a number)

ShapeBench images come with binary foreground masks. :func:`patch_coverage` turns a mask
into the fraction of every ViT patch that is foreground (row-major, the patch-token order),
and :func:`mask_agreement` measures, per image, how well a token score separates
foreground patches from background patches (AUROC), averaged over images.
"""

from __future__ import annotations

import math

import torch

__all__ = ["patch_coverage", "auroc", "mask_agreement"]


def patch_coverage(masks: torch.Tensor, patch_size: int = 16) -> torch.Tensor:
    """Fraction of each non-overlapping ``patch_size`` x ``patch_size`` patch covered by the mask.

    ``masks`` is ``[B, H, W]`` (``[H, W]`` is treated as ``B = 1``; ``[B, 1, H, W]`` is
    accepted too) with values in {0, 1} (bool or numeric). ``H`` and ``W`` must be
    multiples of ``patch_size``. Returns a float tensor ``[B, (H // p) * (W // p)]`` in
    row-major patch order, i.e. the order of a ViT's patch tokens (class token excluded).
    """
    m = torch.as_tensor(masks)
    if m.dim() == 2:
        m = m.unsqueeze(0)
    elif m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() != 3:
        raise ValueError(f"masks must be [B, H, W] or [H, W], got shape {tuple(masks.shape)}")
    b, h, w = m.shape
    p = int(patch_size)
    if p < 1 or h % p or w % p:
        raise ValueError(f"mask size {h}x{w} is not a multiple of patch_size={patch_size}")
    m = m.float()
    if m.numel() and (m.min() < 0 or m.max() > 1):
        raise ValueError("mask values must lie in [0, 1] (binary masks: 0 background, 1 foreground)")
    return m.reshape(b, h // p, p, w // p, p).mean(dim=(2, 4)).reshape(b, -1)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x`` (1-D), tied values sharing the mean of their ranks."""
    uniq, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)  # last 1-based rank of each value
    avg = ends - (counts.to(torch.float64) - 1) / 2  # mean of ranks ends-count+1 .. ends
    return avg[inverse]


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive).

    Computed as the Mann-Whitney U statistic divided by ``n_pos * n_neg``, with tied scores
    given their average rank (so a tie between a positive and a negative counts 1/2).
    Equals the probability that a random positive scores higher than a random negative.
    Returns NaN when either class is absent.
    """
    s = torch.as_tensor(scores).detach().reshape(-1).to(torch.float64).cpu()
    y = torch.as_tensor(labels).detach().reshape(-1).cpu()
    if s.numel() != y.numel():
        raise ValueError(f"scores ({s.numel()}) and labels ({y.numel()}) differ in size")
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN")
    pos = y.bool() if y.dtype == torch.bool else y != 0
    n_pos = int(pos.sum())
    n_neg = int(pos.numel()) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(s)
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def mask_agreement(scores: torch.Tensor, coverage: torch.Tensor, pos_threshold: float = 0.5) -> float:
    """Mean per-image AUROC of token scores for telling foreground from background patches.

    Definition: ``scores`` and ``coverage`` are ``[B, N]`` over the N patch tokens only (no
    class token), ``coverage`` from :func:`patch_coverage`. For each image, patches with
    ``coverage >= pos_threshold`` are positives (foreground), patches with ``coverage == 0``
    are negatives (background), and partially covered patches in between are ignored. The
    image's agreement is the AUROC (:func:`auroc`, ties count 1/2) of its scores on those
    positives vs negatives: 1.0 means every foreground patch outscores every background
    patch, 0.5 is chance (e.g. constant scores), 0.0 is perfectly reversed. The result is
    the mean over images that have both positives and negatives; NaN if no image has.
    A 1-D ``[N]`` input is treated as one image.
    """
    s = torch.as_tensor(scores).detach()
    c = torch.as_tensor(coverage).detach()
    if s.dim() == 1:
        s = s.unsqueeze(0)
    if c.dim() == 1:
        c = c.unsqueeze(0)
    if s.shape != c.shape or s.dim() != 2:
        raise ValueError(
            f"scores {tuple(s.shape)} and coverage {tuple(c.shape)} must both be [B, N] "
            "over patch tokens (drop the class token from the scores)"
        )
    if not 0 < pos_threshold <= 1:
        raise ValueError(f"pos_threshold must be in (0, 1], got {pos_threshold}")
    values = []
    for si, ci in zip(s, c):
        pos = ci >= pos_threshold
        neg = ci == 0
        if not pos.any() or not neg.any():
            continue
        keep = pos | neg
        values.append(auroc(si[keep], pos[keep]))
    return sum(values) / len(values) if values else math.nan
