"""Which tokens survive a pruning step, as pure tensor functions.

Selection returns the kept **indices**; whoever owns the tensors (an adapter) gathers every
stream and every per-token record with the same indices. Protected tokens (class, distillation,
register tokens, a class token in the middle of a sequence) may sit anywhere; they are never
dropped. Kept tokens keep their original relative order, so positions, scan orders and frame
provenance stay meaningful downstream.

For convolutional hosts the same idea works on a 2-D grid: whole rows and columns
(:func:`keep_grid_lines`) or the weakest tokens inside every row and then every column
(:func:`keep_grid_tokens`), so the feature map stays a dense, smaller grid.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

KEEP = ("top", "bottom")

# Guards floor(ratio * n) against binary-fraction error (0.29 * 100 = 28.999…) without moving
# any product that is genuinely below an integer.
_FLOOR_EPS = 1e-9


def drop_count(tokens: int, ratio: Optional[float] = None, num: Optional[int] = None) -> int:
    """How many of ``tokens`` droppable tokens to drop: ``floor(ratio * tokens)`` or ``num``."""
    if (ratio is None) == (num is None):
        raise ValueError("give exactly one of ratio or num")
    if ratio is not None:
        return math.floor(ratio * tokens + _FLOOR_EPS)
    if num > tokens:
        raise ValueError(f"cannot drop num={num} tokens: only {tokens} non-prefix tokens are left")
    return num


def _check_keep(keep: str) -> None:
    if keep not in KEEP:
        raise ValueError(f"keep must be 'top' or 'bottom', got {keep!r}")


def keep_indices(scores: Optional[Tensor], num_drop: int, protected: Tensor, keep: str = "top") -> Tensor:
    """Indices ``[B, N - num_drop]`` of the tokens that survive, ascending in every row.

    ``protected`` is a ``[B, N]`` bool mask with the same number of protected tokens per row;
    those always survive and ``num_drop`` counts only unprotected tokens. ``scores`` ``[B, N]``
    ranks the others: ``keep="top"`` keeps the highest, ``"bottom"`` the lowest.
    ``scores=None`` keeps the first unprotected tokens, the score-free "static" control.
    """
    _check_keep(keep)
    batch, tokens = protected.shape
    if num_drop == 0:
        return torch.arange(tokens, device=protected.device).expand(batch, tokens)
    if scores is None:
        rank, largest = -torch.arange(tokens, device=protected.device, dtype=torch.float).expand(batch, tokens), True
    else:
        if scores.shape != protected.shape:
            raise ValueError(f"scores have shape {tuple(scores.shape)} but the tokens are {tuple(protected.shape)}")
        rank, largest = scores.float(), keep == "top"
    rank = rank.masked_fill(protected, math.inf if largest else -math.inf)
    index = rank.topk(tokens - num_drop, dim=1, largest=largest, sorted=False).indices
    return index.sort(dim=1).values


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b]]`` for a token tensor ``[B, N, ...]`` (features or per-token records)."""
    expanded = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return x.gather(1, expanded)


def protected_mask(batch: int, tokens: int, positions, device=None) -> Tensor:
    """The ``[B, N]`` mask protecting the given token ``positions`` (class token, registers, ...) in every row."""
    mask = torch.zeros(batch, tokens, dtype=torch.bool, device=device)
    for position in positions:
        if not 0 <= position < tokens:
            raise ValueError(f"protected position {position} is out of range for a sequence of {tokens} tokens")
        mask[:, position] = True
    return mask


# --------------------------------------------------------------------------- 2-D grids


def _check_grid_drop(size: int, num_drop: int, what: str) -> None:
    if not 0 <= num_drop < size:
        raise ValueError(f"cannot drop {num_drop} {what} of a grid with {size}: keep at least one")


def keep_grid_lines(score_map: Tensor, num_rows: int, num_cols: int, keep: str = "top") -> tuple[Tensor, Tensor]:
    """Line-wise selection on a ``[B, H, W]`` score map: ``(rows [B, H - num_rows], cols [B, W - num_cols])``.

    A row's score is the mean of its tokens' scores (a column's likewise); the lowest-scored
    ``num_rows`` rows and ``num_cols`` columns are dropped and the rest keep their order.
    """
    batch, height, width = score_map.shape
    _check_grid_drop(height, num_rows, "rows")
    _check_grid_drop(width, num_cols, "columns")
    row_scores, col_scores = score_map.mean(dim=2), score_map.mean(dim=1)
    rows = keep_indices(row_scores, num_rows, torch.zeros_like(row_scores, dtype=torch.bool), keep)
    cols = keep_indices(col_scores, num_cols, torch.zeros_like(col_scores, dtype=torch.bool), keep)
    return rows, cols


def gather_grid_lines(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """The sub-grid ``x[b, :, rows[b]][:, :, :, cols[b]]`` of a feature map ``[B, C, H, W]``."""
    batch, channels, _, width = x.shape
    x = x.gather(2, rows.view(batch, 1, -1, 1).expand(batch, channels, rows.shape[1], width))
    return x.gather(3, cols.view(batch, 1, 1, -1).expand(batch, channels, rows.shape[1], cols.shape[1]))


def keep_grid_tokens(x: Tensor, score_map: Tensor, num: int, keep: str = "top") -> Tensor:
    """Token-wise selection on a feature map ``x [B, C, H, W]`` scored by ``score_map [B, H, W]``.

    First the ``num`` lowest-scored tokens of every row are dropped (the row closes up, so a
    token may move left), then the ``num`` lowest of every column of that narrower grid. The
    result is a dense ``[B, C, H - num, W - num]`` map.
    """
    batch, channels, height, width = x.shape
    _check_grid_drop(width, num, "tokens per row")
    _check_grid_drop(height, num, "tokens per column")
    if num == 0:
        return x
    # Rows: select among the W tokens of each of the B*H rows.
    rows = score_map.reshape(batch * height, width)
    col_index = keep_indices(rows, num, torch.zeros_like(rows, dtype=torch.bool), keep).view(batch, height, -1)
    x = x.gather(3, col_index.unsqueeze(1).expand(batch, channels, height, width - num))
    score_map = score_map.gather(2, col_index)
    # Columns of the narrower grid: select among the H tokens of each of its columns.
    cols = score_map.transpose(1, 2).reshape(batch * (width - num), height)
    row_index = keep_indices(cols, num, torch.zeros_like(cols, dtype=torch.bool), keep).view(batch, width - num, -1)
    return x.gather(2, row_index.transpose(1, 2).unsqueeze(1).expand(batch, channels, height - num, width - num))
