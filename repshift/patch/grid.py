"""The 2-D side that the convolutional adapters share (ResNet, EfficientNet, ConvNeXt): a feature map read as
tokens for scoring, and a stage's output map pruned by its drop rule (line-wise, token-wise, or the static crop)
so the next stage convolves a dense, smaller grid."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

import repshift.scores as scores
from repshift.patch.base import Adapter, PruneState, score_tokens
from repshift.select import gather_grid_lines, keep_grid_lines, keep_grid_tokens


def grid_tokens(x: Tensor) -> Tensor:
    """``[B, C, H, W]`` as tokens ``[B, H*W, C]`` (a view), the layout :func:`score_tokens` expects."""
    return x.flatten(2).transpose(1, 2)


def gather_positions(x: Tensor, positions: Tensor) -> Tensor:
    """``x [B, C, H, W]`` at the flat positions ``[B, 1, h, w]`` (indices into ``H * W``): ``[B, C, h, w]``."""
    batch, channels = x.shape[:2]
    index = positions.flatten(1)
    gathered = x.flatten(2).gather(2, index.unsqueeze(1).expand(batch, channels, index.shape[1]))
    return gathered.view(batch, channels, *positions.shape[2:])


def check_grid(num: int, height: int, width: int, where: str) -> None:
    """Refuse a step that would drop every row or every column of a stage's output."""
    if num >= min(height, width):
        raise ValueError(
            f"num={num} at {where} asks for {num} rows and {num} columns of its {height}x{width} output map: "
            "keep at least one (lower num, or prune an earlier, larger stage)"
        )


def prune_grid(state: PruneState, layer: int, out: Tensor, token_scores: Optional[Tensor], where: str) -> Tensor:
    """Record the stage's score map if asked, then apply ``layer``'s drop rule to its output map ``out``.

    ``token_scores`` ``[B, H*W]`` (``None``: the static control, which crops to the first rows and columns).
    """
    batch, _, height, width = out.shape
    score_map = None if token_scores is None else token_scores.view(batch, height, width)
    if state.record and score_map is not None:
        state.recorded.append(score_map)
    step = state.step(layer)
    if step is None or step[1] == 0:
        return out
    num = step[1]
    check_grid(num, height, width, where)
    if score_map is None:
        # contiguous, as the gathers below are: a strided crop would make every conv of the next stage copy it
        return out[:, :, : height - num, : width - num].contiguous()
    # Select on a one-channel map of flat positions, then move the features with a single gather:
    # on the CPU that is several times faster than gathering the wide feature map row- then column-wise.
    positions = torch.arange(height * width, device=out.device).view(1, 1, height, width).expand(batch, 1, -1, -1)
    if state.mode == "line":
        rows, cols = keep_grid_lines(score_map, num, num, state.keep)
        kept = gather_grid_lines(positions, rows, cols)
    else:
        kept = keep_grid_tokens(positions, score_map, num, state.keep)
    return gather_positions(out, kept)


class GridAdapter(Adapter):
    """What the convolutional adapters share: no attention map to score with, and a schedule counted in rows and
    columns per stage (``num``), never as a share of the tokens."""

    def resolve_metric(self, model, metric: str) -> str:
        if metric in scores.ATTENTION_METRICS:
            raise ValueError(
                f"metric={metric!r} scores tokens with an attention map, and a {type(model).__name__} has none: use a "
                f"representation-shift metric {scores.SHIFT_METRICS} or a control {scores.CONTROL_METRICS}"
            )
        return metric

    @staticmethod
    def check_counts(model, state: PruneState) -> None:
        """Refuse ``ratio=``: a grid loses whole rows and columns (or one token of each), counted by ``num``."""
        if state.ratio is not None and state.layers:
            raise ValueError(
                f"ratio={state.ratio}: on a {type(model).__name__} give num= instead, the rows and columns dropped "
                "at each stage"
            )


class ScoredGridStage:
    """Put in front of a stage's class: records the stage's grid and, when the stage is scheduled, scores its output
    map and prunes it. The adapter gives the stage ``repshift_state``, ``repshift_layer`` (its index),
    ``repshift_where`` (how errors name it) and ``_forward_scored`` (the stage's output and its shift scores)."""

    def forward(self, x: Tensor) -> Tensor:
        state: PruneState = self.repshift_state
        layer = self.repshift_layer
        state.enter(layer, x.shape[2] * x.shape[3])
        if not state.scoring(layer):
            return super().forward(x)
        if state.metric in scores.SHIFT_METRICS:
            out, token_scores = self._forward_scored(state, layer, x)
        else:  # controls: the stage's own forward, then scores that need no features (random) or none (static)
            out = super().forward(x)
            token_scores = score_tokens(state, layer, like=grid_tokens(out))
        return prune_grid(state, layer, out, token_scores, self.repshift_where)
