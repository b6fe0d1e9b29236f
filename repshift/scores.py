"""Token-importance scores as pure tensor functions.

Representation shift (paper Eq. 4) is ``s = D(F(x), x)``: the distance between what a layer's
branch produces and what went into it. Attention scores (Eqs. 2 and 3) are the baselines that
need a materialised attention map. Every function here maps tensors to a ``[B, N]`` score per
token; higher means more important. Nothing here knows about models.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

SHIFT_METRICS = ("l2", "l1", "cos")
ATTENTION_METRICS = ("attn", "attn_cls", "attn_mean")
CONTROL_METRICS = ("random", "none")
# Baselines that belong to one host family (computed by that family's adapter from its own tensors).
HOST_METRICS = ("top_vim",)
# Saliency of token merging only (mode="merge"): vid-TLDR's negative entropy of each query's attention
# row (repshift.merge.attention_entropy_saliency), which needs the materialised map.
MERGE_METRICS = ("attn_entropy",)
METRICS = SHIFT_METRICS + ATTENTION_METRICS + CONTROL_METRICS + HOST_METRICS + MERGE_METRICS
SITES = ("attn", "mlp", "block")


def shift(after: Tensor, before: Tensor, metric: str = "l2") -> Tensor:
    """Distance ``D(after, before)`` per token over the channel dimension: ``[B, N, C] -> [B, N]``.

    ``l2`` and ``l1`` are the norms of ``after - before``; ``cos`` is ``1 - cos(after, before)``.
    Computed in float32 so scores under fp16/bf16 autocast rank tokens the same way.
    """
    after, before = after.float(), before.float()
    if metric in ("l2", "l1"):
        difference = after - before
        if difference.stride(-1) != 1:
            # Channels strided (a CNN map [B, C, H, W] seen as tokens): vector_norm reduces a strided dim
            # about 3x slower on the CPU than a plain sum does, and pruning's speed-up is what this is for.
            if metric == "l2":
                return difference.square_().sum(dim=-1).sqrt_()
            return difference.abs_().sum(dim=-1)
        return torch.linalg.vector_norm(difference, ord=2 if metric == "l2" else 1, dim=-1)
    if metric == "cos":
        return 1.0 - torch.nn.functional.cosine_similarity(after, before, dim=-1)
    raise ValueError(f"unknown representation-shift metric {metric!r}; expected one of {SHIFT_METRICS}")


def cls_attention(attn: Tensor) -> Tensor:
    """Eq. 2: attention of the class-token query (index 0) to every key, averaged over heads.

    ``attn`` is the softmax map ``[B, H, N, N]`` (queries on dim 2); returns ``[B, N]``.
    """
    return attn[:, :, 0, :].float().mean(dim=1)


def mean_attention(attn: Tensor) -> Tensor:
    """Eq. 3: attention each token receives, averaged over all queries and heads: ``[B, N]``."""
    return attn.float().mean(dim=(1, 2))


#: Numbers in the one draw made per (seed, layer) for the random control: a unit with ``n`` tokens reads the first
#: ``n``, which are what a draw of ``n`` numbers gives (a CPU generator fills a tensor in order).
RANDOM_DRAW_LENGTH = 2**16


@functools.cache
def random_draw(seed: int, layer: int) -> Tensor:
    """The random control's uniform numbers for ``(seed, layer)``, drawn once on the CPU.

    ``repshift.patch`` draws them when it patches, outside any forward, so a compiled or exported forward
    holds them as a constant of its graph (a generator cannot live inside one).
    """
    return torch.rand(RANDOM_DRAW_LENGTH, generator=torch.Generator().manual_seed(seed * 1_000_003 + layer))


def random_scores(batch: int, tokens: int, *, seed: int, layer: int, device=None) -> Tensor:
    """Seeded uniform scores, one per token position and shared by every sample.

    Sharing the draw across the batch keeps a sample's result independent of what else is in
    its batch, so the random control is reproducible whatever the batch size or data order.
    """
    if tokens > RANDOM_DRAW_LENGTH:
        raise ValueError(f"the random control scores at most {RANDOM_DRAW_LENGTH} tokens per unit, got {tokens}")
    return _first_numbers(seed, layer, tokens).to(device).expand(batch, tokens)


@torch.compiler.assume_constant_result
def _first_numbers(seed: int, layer: int, tokens: int) -> Tensor:
    """``random_draw(seed, layer)[:tokens]``; ``torch.compile`` runs it while tracing and keeps the result."""
    return random_draw(seed, layer)[:tokens]


def top_vim(backward_output: Tensor) -> Tensor:
    """ToP-ViM's token score as its released code computes it: ``[B, C, N] -> [B, N]``.

    ``backward_output`` is a bidirectional Mamba mixer's backward-direction output before
    ``out_proj``, in the order the backward scan runs (its index 0 is the *last* token); the
    score is its sum over channels, with no clamp. Like the released code, the sum is **not**
    flipped back, so the score at index ``t`` comes from token ``N - 1 - t`` (docs/vim.md).
    """
    return backward_output.float().sum(dim=1)
