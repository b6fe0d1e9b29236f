"""The UMT adapter: token pruning inside UMT's video encoder (:mod:`repshift.models.umt`), by class swapping.

``repshift.patch`` serves two kinds of UMT model:

- a :class:`~repshift.models.umt.UMTVision` (``vision_encoder("b")``): patched exactly as a DeiT is;
- a model that holds a UMT encoder as ``model.vision`` (:class:`~repshift.models.umt.UMTRetrieval`, the QA
  model): its vision encoder is patched, the text side is left alone (it cross-attends to whatever tokens
  survive). ``model.repshift`` and
  ``model.vision.repshift`` are the same :class:`~repshift.patch.base.PruneState`, so the encoder can be
  timed or counted on its own; unpatch through the model that was patched (the retrieval or QA model).

Installing swaps the classes of the encoder, its blocks and their attention modules for subclasses
defined here; parameters, buffers and state-dict keys are untouched, and uninstalling restores them.

A UMT block is ``x' = x + A(x)``, ``x̂ = x' + M(x')`` with ``A = attn∘norm1``, ``M = mlp∘norm2`` (no
layer scale, so a branch's raw output is its update). A scoring block drops tokens from ``x̂`` using its
own scores, as the timm adapter does:

- ``site="attn"``: ``D(A(x), x)``; ``site="mlp"``: ``D(M(x'), x')``; ``site="block"``: ``D(x̂, x)``
  (``literal`` reading; ``update``/``normed`` as :class:`repshift.patch.base.Branch` says);
- ``metric="attn"`` is Eq. 3 (``attn_mean``: the attention a token receives, averaged over queries and
  heads), because UMT has no class token; ``attn_cls`` (Eq. 2) is refused for the same reason.

No token is protected. Every token carries the frame it came from (``state.book["frame"]``), gathered
with the tokens at every pruning step, and the encoder's per-frame pooling averages exactly the
surviving tokens of each frame (a frame left with none gets the clip mean: see
:mod:`repshift.models.umt`).

**Merging** (``mode="merge"``, vid-TLDR; the functions are :mod:`repshift.merge`): a scheduled block merges
``r`` tokens away (``num``, or ``ratio`` of the tokens entering it; clamped to half of them) by
saliency-weighted bipartite soft matching on the tokens at the merge point, which is

- ``site="attn"``: after the attention residual, ``x'`` (vid-TLDR's place; the MLP then runs on the merged
  tokens); the shift metrics read the attention branch there, ``D(A(x), x)``;
- ``site="mlp"`` / ``"block"``: after the whole block, ``x̂``, as the pruning schedules drop tokens; the shift
  metrics read ``D(M(x'), x')`` / ``D(x̂, x)``.

Saliency ``ŝ``: ``metric="attn_entropy"`` is vid-TLDR's (negative entropy of each query's head-averaged
attention row, from the block's unbiased softmax map, so those blocks materialise it); any other score
(``l2``/``l1``/``cos``, ``attn`` = Eq. 3, ``random``) goes through vid-TLDR's normalisation;
``metric="none"`` merges with ``ŝ = 1`` (plain size-weighted bipartite merging). Token sizes live in
``state.size``; with ``proportional=True`` every block after the first merge adds ``log(size)`` per key to
its attention logits (through SDPA's float mask with ``attention="sdpa"``, which takes SDPA off
FlashAttention on CUDA; ``attention="flash_attn"`` refuses it). A merged token keeps the destination's
records (frame, position).
"""
from __future__ import annotations

import sys
from typing import Optional

from torch import Tensor

import repshift.attention as kernels
import repshift.merge as merge
import repshift.scores as scores
from repshift.patch.base import Adapter, Branch, PruneState, patched_class, prenorm_block, register_adapter, score_tokens
from repshift.select import gather_tokens

UMT_MODULE = "repshift.models.umt"


def _umt():
    """``repshift.models.umt`` if it is imported, else None: no UMT model can exist before it is, and importing
    it here would make ``import repshift`` load transformers for every user."""
    return sys.modules.get(UMT_MODULE)


class RepShiftUMTAttention:
    """Methods put in front of UMT's ``Attention``: the state's kernel, and the softmax map when asked."""

    def forward(self, x: Tensor, key_bias: Optional[Tensor] = None) -> Tensor:
        q, k, v = self.qkv_heads(x)
        return self.proj(kernels.attend(q, k, v, self.repshift_state.attention, self.scale, key_bias=key_bias))

    def forward_with_map(self, x: Tensor, key_bias: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``(output, probs)``; with ``key_bias`` the output is biased and ``probs`` are the unbiased map."""
        q, k, v = self.qkv_heads(x)
        out, probs = kernels.attend_with_map(q, k, v, self.scale, key_bias=key_bias)
        return self.proj(out), probs


class RepShiftUMTBlock:
    """Methods put in front of UMT's ``Block``: record the token count and, when scheduled, score and prune
    (or merge)."""

    def forward(self, x: Tensor) -> Tensor:
        state: PruneState = self.repshift_state
        layer = self.repshift_layer
        if state.mode == "merge":
            return merge_block(state, layer, x, self)
        return prenorm_block(state, layer, x, norm1=self.norm1, attn=self.attn, norm2=self.norm2, mlp=self.mlp)


#: Merge saliencies read from the block's softmax map.
_MAP_SALIENCIES = ("attn_entropy", "attn_mean")


def merge_block(state: PruneState, layer: int, x: Tensor, block) -> Tensor:
    """One UMT block under ``mode="merge"``: proportional attention once tokens have sizes, and a merge step
    at the state's site when ``layer`` is scheduled (see the module doc)."""
    state.enter(layer, x.shape[1])
    step = state.step(layer)
    count = merge.merge_count(x.shape[1], *step) if step is not None else 0
    bias = merge.size_bias(state.size) if state.proportional and state.size is not None else None
    x_norm = block.norm1(x)
    attn_map = None
    if count and state.metric in _MAP_SALIENCIES:
        a, attn_map = block.attn.forward_with_map(x_norm, key_bias=bias)
    else:
        a = block.attn(x_norm, key_bias=bias)
    x_mid = x + a
    attn_branch = Branch(input=x, normed=x_norm, raw=a, update=a, output=x_mid)
    if count and state.site == "attn":
        saliency = _saliency(state, layer, {"attn": attn_branch}, attn_map, x_mid)
        x_mid = _merge(state, x_mid, count, saliency)
        return x_mid + block.mlp(block.norm2(x_mid))
    x_mid_norm = block.norm2(x_mid)
    m = block.mlp(x_mid_norm)
    x_out = x_mid + m
    if not count:
        return x_out
    sites = {"attn": attn_branch, "mlp": Branch(input=x_mid, normed=x_mid_norm, raw=m, update=m, output=x_out),
             "block": (x_out, x)}
    return _merge(state, x_out, count, _saliency(state, layer, sites, attn_map, x_out))


def _saliency(state: PruneState, layer: int, sites: dict, attn_map: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    """``ŝ [B, N]`` in [0, 1] for the merge (None: ŝ = 1 everywhere)."""
    if state.metric == "attn_entropy":
        return merge.attention_entropy_saliency(attn_map)
    raw = score_tokens(state, layer, sites=sites, attn_map=attn_map, like=like)
    return None if raw is None else merge.normalize_saliency(raw)


def _merge(state: PruneState, x: Tensor, count: int, saliency: Optional[Tensor]) -> Tensor:
    """Merge ``count`` tokens of ``x`` away, updating the sizes and carrying every record with its destination."""
    match = merge.bipartite_match(x, count)
    merged, state.size = merge.merge_tokens(x, match, state.size, saliency)
    index = merge.surviving_positions(match, x.shape[1])
    state.book = {name: gather_tokens(record, index) for name, record in state.book.items()}
    return merged


class RepShiftUMTEncoder:
    """Methods put in front of the encoder's own class: one pruning forward per clip batch."""

    def run_blocks(self, x: Tensor, frame_ids: Tensor) -> tuple[Tensor, Tensor]:
        state: PruneState = self.repshift_state
        state.reset()
        # No class token: nothing is protected; the frame of every token travels with it.
        state.begin(x, frame=frame_ids)
        with kernels.kernel_preference(state.attention, x.device):
            for block in self.blocks:
                x = block(x)
        return x, state.book["frame"]


def _encoder(model):
    """The UMT encoder of ``model``: the model itself, or its ``vision`` (retrieval and QA models)."""
    umt = _umt()
    return model if isinstance(model, umt.UMTVision) else model.vision


class UMTAdapter(Adapter):
    family = "umt"
    modes = ("sequence", "merge")
    description = ("UMT video encoders (repshift.models.umt.UMTVision) and models holding one as .vision "
                   "(UMT retrieval and QA)")

    def supports(self, model) -> bool:
        umt = _umt()
        return umt is not None and (
            isinstance(model, umt.UMTVision) or isinstance(getattr(model, "vision", None), umt.UMTVision)
        )

    def check(self, model) -> None:
        umt = _umt()
        for i, block in enumerate(_encoder(model).blocks):
            if type(block) is not umt.Block or type(block.attn) is not umt.Attention:
                raise TypeError(
                    f"block {i} is a {type(block).__name__} with {type(block.attn).__name__}; repshift.patch supports "
                    "UMT's own Block and Attention (repshift.models.umt)"
                )

    def depth(self, model) -> int:
        return len(_encoder(model).blocks)

    def droppable(self, model) -> int:
        encoder = _encoder(model)
        return encoder.num_frames * encoder.patches_per_frame

    def resolve_metric(self, model, metric: str) -> str:
        if metric == "attn":  # the paper uses Eq. 3 for UMT: video transformers have no class token
            return "attn_mean"
        if metric == "attn_cls":
            raise ValueError(
                "metric=attn_cls (Eq. 2) reads the class token's attention row, and UMT has no class token; "
                "use metric=attn or attn_mean (Eq. 3, what the paper uses for UMT)"
            )
        if metric in scores.HOST_METRICS:
            raise ValueError(f"metric={metric} belongs to another host family; UMT takes {self._metrics()}")
        return metric

    @staticmethod
    def _metrics() -> str:
        return ", ".join(m for m in scores.METRICS if m not in scores.HOST_METRICS and m != "attn_cls")

    def install(self, model, state: PruneState) -> None:
        encoder = _encoder(model)
        encoder.__class__ = patched_class(RepShiftUMTEncoder, type(encoder))
        encoder.repshift_state = state
        if encoder is not model:  # the encoder alone can then be timed and counted as a patched model
            encoder.repshift = state
            encoder.repshift_via_host = True
        for index, block in enumerate(encoder.blocks):
            block.__class__ = patched_class(RepShiftUMTBlock, type(block))
            block.attn.__class__ = patched_class(RepShiftUMTAttention, type(block.attn))
            block.repshift_state = block.attn.repshift_state = state
            block.repshift_layer = index

    def uninstall(self, model) -> None:
        encoder = _encoder(model)
        if encoder is model and getattr(encoder, "repshift_via_host", False):
            raise RuntimeError(
                "this UMT encoder was patched through the model that holds it (a retrieval model or QA model): "
                "call repshift.unpatch on that model"
            )
        for block in encoder.blocks:
            block.__class__ = type(block).__bases__[1]
            block.attn.__class__ = type(block.attn).__bases__[1]
            del block.repshift_state, block.attn.repshift_state, block.repshift_layer
        encoder.__class__ = type(encoder).__bases__[1]  # (RepShiftUMTEncoder, original class)
        del encoder.repshift_state
        if encoder is not model:
            del encoder.repshift, encoder.repshift_via_host


register_adapter(UMTAdapter())
