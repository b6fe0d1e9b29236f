"""Which tokens survive a pruning step.

Prefix tokens (class, distillation, register tokens) sit at the front of the sequence and are
never scored or dropped. Kept tokens keep their original relative order, so anything that
relies on token positions downstream (line-wise grids, scan orders) still sees a valid sequence.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

# Guards floor(ratio * n) against binary-fraction error (0.29 * 100 = 28.999…) without moving
# any product that is genuinely below an integer.
_FLOOR_EPS = 1e-9


def drop_count(tokens: int, ratio: Optional[float] = None, num: Optional[int] = None) -> int:
    """How many of ``tokens`` non-prefix tokens to drop: ``floor(ratio * tokens)`` or ``num``."""
    if (ratio is None) == (num is None):
        raise ValueError("give exactly one of ratio or num")
    if ratio is not None:
        return math.floor(ratio * tokens + _FLOOR_EPS)
    if num > tokens:
        raise ValueError(f"cannot drop num={num} tokens: only {tokens} non-prefix tokens are left")
    return num


def keep_tokens(
    x: Tensor,
    scores: Optional[Tensor],
    num_drop: int,
    num_prefix: int,
    keep: str = "top",
) -> Tensor:
    """Drop ``num_drop`` non-prefix tokens of ``x`` ``[B, N, C]``, each sample by its own scores.

    ``scores`` is ``[B, N - num_prefix]`` (one per non-prefix token). ``keep="top"`` keeps the
    highest-scored tokens, ``"bottom"`` the lowest. ``scores=None`` keeps the first tokens, the
    score-free "static" control.
    """
    if num_drop == 0:
        return x
    batch, tokens, channels = x.shape
    num_keep = tokens - num_prefix - num_drop
    if scores is None:
        return x[:, : num_prefix + num_keep]
    if keep not in ("top", "bottom"):
        raise ValueError(f"keep must be 'top' or 'bottom', got {keep!r}")
    index = scores.topk(num_keep, dim=1, largest=keep == "top", sorted=False).indices
    index = index.sort(dim=1).values + num_prefix
    # One gather for prefix and kept tokens together: a separate cat would copy the tokens twice.
    prefix = torch.arange(num_prefix, device=x.device).expand(batch, num_prefix)
    index = torch.cat([prefix, index], dim=1)
    return x.gather(1, index.unsqueeze(-1).expand(batch, num_prefix + num_keep, channels))
