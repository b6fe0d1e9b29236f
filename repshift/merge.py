"""Token merging as vid-TLDR (Choi et al., CVPR 2024) does it, as pure tensor functions.

The sibling of :mod:`repshift.select`: nothing here knows a model. One merge step takes the tokens
``x [B, N, C]`` at the merge point, their sizes (how many input patches each one stands for), a saliency
``ŝ ∈ [0, 1]`` per token, and ``r`` (how many tokens to remove):

1. **Saliency.** vid-TLDR's score is the negative entropy of each query's head-averaged attention row
   (:func:`attention_entropy_saliency`); any raw score, e.g. representation shift, goes through the same
   normalisation (:func:`normalize_saliency`): min-max to [0, 1]; tokens below the mean are background and
   get 0; the others are centred on the mean and rescaled so the largest is 1.
2. **Matching** (:func:`bipartite_match`): the tokens at even positions (set A) each pick their most similar
   token at an odd position (set B), by cosine similarity of the L2-normalised tokens; the ``r`` A tokens
   whose best match is strongest are the sources, merged into their partners (destinations).
3. **Merge** (:func:`merge_tokens`): every destination becomes the size-weighted average of itself and its
   sources, each source weighted by ``ŝ_s · size_s``; sizes add up the same way,
   ``size'_d = size_d + Σ ŝ_s · size_s``. A background source (ŝ = 0) is dropped without trace. The output
   order is ``[unmerged A tokens, in their order] + [all B tokens]``;
   :func:`surviving_positions` gives, for every output token, the position of the input token it continues
   (itself, or the destination a merge landed in), so per-token records (frame, original position) follow
   the destination.

Sizes are what proportional attention reads: later blocks add ``log(size_j)`` to every query's logit for
key ``j`` (:func:`size_bias`), so a merged token draws the attention its members would have drawn together.

ToMe (Bolya et al., ICLR 2023) is the same step with ŝ = 1 on image ViTs: :func:`merge_after_prefix` keeps the
class and other prefix tokens out of it and matches on the attention keys; :func:`merge_schedule` turns its
``r`` schedule into per-block counts and refuses an ``r`` above half the tokens.

With ŝ = 1 everywhere the sizes always sum to the number of input patches. With ŝ < 1 the sum falls by
``Σ (1 − ŝ_s) · size_s`` over the sources at every step: the mass of a (partly) dropped source is lost.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from repshift.select import gather_tokens


@dataclass(frozen=True)
class Match:
    """The outcome of :func:`bipartite_match`, in positions inside the halves (A = even, B = odd positions).

    ``sources`` ``[B, r]``: A positions merged away; ``destinations`` ``[B, r]``: the B position each one
    goes to; ``unmerged`` ``[B, |A| - r]``: the A positions that stay, ascending.
    """

    sources: Tensor
    destinations: Tensor
    unmerged: Tensor

    @property
    def count(self) -> int:
        return self.sources.shape[1]


def merge_count(tokens: int, ratio: Optional[float] = None, num: Optional[int] = None) -> int:
    """How many tokens one step merges away: ``num``, or ``floor(ratio * tokens)``, clamped to ``tokens // 2``.

    The clamp is vid-TLDR's: bipartite matching cannot remove more tokens than one half holds.
    """
    return min(requested_count(tokens, ratio, num), tokens // 2)


def normalize_saliency(score: Tensor) -> Tensor:
    """vid-TLDR's normalisation of a raw per-token score ``[B, N]`` (higher = more salient) into ``ŝ ∈ [0, 1]``.

    Min-max to [0, 1] per sample; tokens below the sample's mean get exactly 0 (background); the rest are
    centred on that mean and divided by the largest centred value, so the top token gets 1. A sample whose
    scores are all equal has no background and no foreground: every token gets 1 (plain size-weighted
    merging). Computed in float32.
    """
    s = score.float()
    low, high = s.amin(dim=-1, keepdim=True), s.amax(dim=-1, keepdim=True)
    spread = high - low
    flat = spread <= 0
    s = (s - low) / torch.where(flat, torch.ones_like(spread), spread)
    mean = s.mean(dim=-1, keepdim=True)
    background = s < mean
    centred = s - mean
    peak = centred.amax(dim=-1, keepdim=True)
    s = (centred / torch.where(peak > 0, peak, torch.ones_like(peak))).masked_fill(background, 0.0)
    return torch.where(flat, torch.ones_like(s), s)


def attention_entropy(attn: Tensor) -> Tensor:
    """``Σ_j Ā_ij log Ā_ij`` per query ``i`` of the head-averaged softmax map ``attn [B, H, N, N]``: ``[B, N]``.

    The negative entropy of each token's attention row: higher = a sharper row. ``0 · log 0`` counts as 0.
    """
    mean = attn.float().mean(dim=1)
    return torch.special.xlogy(mean, mean).sum(dim=-1)


def attention_entropy_saliency(attn: Tensor) -> Tensor:
    """vid-TLDR's saliency ``ŝ [B, N]`` from a softmax attention map ``[B, H, N, N]`` (queries on dim 2)."""
    return normalize_saliency(attention_entropy(attn))


def bipartite_match(x: Tensor, count: int) -> Match:
    """Match the tokens of ``x [B, N, C]``: A = even positions, B = odd; ``count`` A tokens become sources.

    Each A token's partner is the B token of highest cosine similarity (vid-TLDR writes it as
    ``(cos + 1) / 2``, which orders pairs the same way); the sources are the ``count`` A tokens with the most
    similar partners (ties: the lower position first). ``count`` must be at most ``N // 2``.
    """
    tokens = x.shape[1]
    if not 0 <= count <= tokens // 2:
        raise ValueError(f"cannot merge {count} of {tokens} tokens: bipartite matching removes at most {tokens // 2}")
    unit = F.normalize(x.float(), dim=-1)
    similarity = unit[:, 0::2] @ unit[:, 1::2].transpose(1, 2)  # [B, |A|, |B|]
    best, partner = similarity.max(dim=-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    sources = order[:, :count]
    return Match(
        sources=sources,
        destinations=partner.gather(1, sources),
        unmerged=order[:, count:].sort(dim=-1).values,
    )


def merge_tokens(
    x: Tensor, match: Match, size: Optional[Tensor] = None, saliency: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """Merge the matched sources of ``x [B, N, C]`` into their destinations: ``(x' [B, N - r, C], size' [B, N - r])``.

    ``size`` ``[B, N]`` (None: every token is one patch) and ``saliency`` ``[B, N]`` (None: ŝ = 1) are per
    input token. Destination ``d`` becomes ``(size_d x_d + Σ ŝ_s size_s x_s) / (size_d + Σ ŝ_s size_s)``
    with ``size'_d = size_d + Σ ŝ_s size_s``, summed by scatter in float32 and cast back to ``x``'s dtype.
    Output order: the unmerged A tokens in their order, then every B token.
    """
    batch, tokens, width = x.shape
    values = x.float()
    size = values.new_ones(batch, tokens) if size is None else size.float()
    x_a, x_b = values[:, 0::2], values[:, 1::2]
    size_a, size_b = size[:, 0::2], size[:, 1::2]
    weight_a = size_a if saliency is None else size_a * saliency.float()[:, 0::2]
    source_weight = weight_a.gather(1, match.sources)  # ŝ_s · size_s
    index = match.destinations[..., None].expand(-1, -1, width)
    sources = gather_tokens(x_a, match.sources) * source_weight[..., None]
    weighted_sum = (x_b * size_b[..., None]).scatter_add(1, index, sources)
    merged_size = size_b.scatter_add(1, match.destinations, source_weight)
    merged = weighted_sum / merged_size[..., None]
    out = torch.cat((gather_tokens(x_a, match.unmerged), merged), dim=1).to(x.dtype)
    return out, torch.cat((size_a.gather(1, match.unmerged), merged_size), dim=1)


def surviving_positions(match: Match, tokens: int) -> Tensor:
    """``[B, N - r]``: for every output token of :func:`merge_tokens`, the input position it continues.

    An unmerged A token continues itself; a B token (merged into or not) continues itself too, so a record
    gathered with these positions (frame, original position) is the destination's.
    """
    batch = match.sources.shape[0]
    odd = torch.arange(1, tokens, 2, device=match.sources.device).expand(batch, -1)
    return torch.cat((2 * match.unmerged, odd), dim=1)


def size_bias(size: Tensor) -> Tensor:
    """Proportional attention's additive logit bias per key: ``log(size)`` ``[B, N]`` (float32)."""
    return size.float().log()


def unbiased_map(probs: Tensor, key_bias: Tensor) -> Tensor:
    """The softmax map before a per-key logit bias, from the map after it: ``probs [B, H, N, N]`` is
    ``softmax(l + b)`` with ``b = key_bias [B, N]`` added for every query; ``probs_ij · exp(-b_j)``, renormalised per
    query, is ``softmax(l)_ij`` exactly. For a host whose attention returns only the map it used (transformers' eager
    attention): the saliency is read before proportional attention's ``log(size)``, as vid-TLDR reads it. Float32."""
    unnormalised = probs.float() * (-key_bias.float()).exp()[:, None, None, :]
    return unnormalised / unnormalised.sum(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- ToMe (Bolya et al., ICLR 2023)
# ToMe's step is the same bipartite soft matching and size-weighted average as above; what differs is the
# host: image ViTs carry prefix tokens (class, distillation, registers) that are never merged, ToMe matches
# on the head-averaged attention keys rather than on the tokens, and an ``r`` that asks for more than half
# of the tokens is refused here (:func:`merge_schedule`) instead of being cut silently.


def requested_count(tokens: int, ratio: Optional[float] = None, num: Optional[int] = None) -> int:
    """Tokens a step asks to merge away, before any clamp: ``num``, or ``floor(ratio * tokens)``."""
    if (ratio is None) == (num is None):
        raise ValueError("give exactly one of ratio or num")
    wanted = int(ratio * tokens + 1e-9) if ratio is not None else int(num)
    if wanted < 0:
        raise ValueError(f"cannot merge a negative number of tokens ({wanted})")
    return wanted


def merge_schedule(tokens: int, steps: Mapping[int, tuple[Optional[float], Optional[int]]]) -> dict[int, int]:
    """Tokens merged away by each scheduled block, for ``tokens`` mergeable tokens entering the first one.

    ``steps`` maps block index -> ``(ratio, num)``, in the order the blocks run. A step that asks for more
    than half of the mergeable tokens reaching it is a ``ValueError`` naming the block: bipartite matching
    cannot remove more than one half holds, and cutting the request silently would report a budget that was
    not spent. Pure arithmetic on Python ints: the forward never reads a tensor to know a count.
    """
    counts = {}
    for block, (ratio, num) in steps.items():
        wanted = requested_count(tokens, ratio, num)
        if wanted > tokens // 2:
            raise ValueError(
                f"block {block} asks to merge {wanted} of the {tokens} mergeable tokens that reach it; bipartite "
                f"matching merges at most half of them ({tokens // 2}): lower r there or give one r per block"
            )
        counts[block] = wanted
        tokens -= wanted
    return counts


def merge_after_prefix(
    x: Tensor,
    metric: Tensor,
    count: int,
    prefix: int,
    size: Optional[Tensor] = None,
    saliency: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One ToMe step on ``x [B, N, C]`` whose first ``prefix`` tokens are never merged: ``(x', size', positions)``.

    The other ``N - prefix`` tokens are matched by :func:`bipartite_match` on ``metric [B, N, D]`` (ToMe: the
    attention keys averaged over heads; any per-token features work) and ``count`` of them are merged by
    :func:`merge_tokens` with ``size [B, N]`` (None: all ones) and ``saliency`` ŝ ``[B, N - prefix]`` of the
    mergeable tokens only (None: ŝ = 1, plain ToMe). The prefix tokens come first, unchanged, with their sizes;
    ``positions [B, N - count]`` is the input position each output token continues (:func:`surviving_positions`).
    """
    batch, tokens, _ = x.shape
    head, body = x[:, :prefix], x[:, prefix:]
    size = x.new_ones(batch, tokens, dtype=torch.float32) if size is None else size.float()
    match = bipartite_match(metric[:, prefix:], count)
    merged, merged_size = merge_tokens(body, match, size[:, prefix:], saliency)
    kept_prefix = torch.arange(prefix, device=x.device).expand(batch, prefix)
    positions = torch.cat((kept_prefix, surviving_positions(match, tokens - prefix) + prefix), dim=1)
    return torch.cat((head, merged), dim=1), torch.cat((size[:, :prefix], merged_size), dim=1), positions
