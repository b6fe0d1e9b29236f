"""The timm ViT adapter: token pruning inside timm ``VisionTransformer`` models, by class swapping.

Installing changes the classes of the model, its blocks and their attention modules to
subclasses defined here; parameters, buffers and state_dict keys stay untouched, so it works on
a model whose weights are already loaded, and uninstalling restores the original classes.

A block is ``x' = x + A(x)``, ``x̂ = x' + M(x')`` with ``A = ls1∘attn∘norm1`` and
``M = ls2∘mlp∘norm2`` (branch outputs as added to the residual stream). A scoring block drops
tokens from its output ``x̂``, using its own scores:

- ``site="attn"``: ``D(A(x), x)``;  ``site="mlp"``: ``D(M(x'), x')``;  ``site="block"``: ``D(x̂, x)``
  (the ``literal`` reading; ``update`` and ``normed`` read the attn/mlp branches as
  :class:`repshift.patch.base.Branch` says; the block site is ``D(x̂, x)`` under every reading)
- ``attn_cls`` / ``attn_mean``: Eq. 2 / Eq. 3 from the block's own attention map, which is then
  materialised in that block only.

Protected tokens are timm's prefix tokens (class, distillation, registers).

**Merging** (``mode="merge"``, ToMe, Bolya et al. ICLR 2023; the functions are :mod:`repshift.merge`): a
scheduled block merges ``r`` of its patch tokens away (``num``/``r``, or ``ratio`` of the patch tokens entering
it) by bipartite soft matching on the block's attention **keys** averaged over heads, ToMe's metric. The keys
exist under every kernel: this adapter computes q, k, v itself and hands them to eager attention, SDPA
(FlashAttention first on CUDA) or flash-attn alike, so matching never falls back to the tokens. Prefix tokens
are never merged. The merge point is

- ``site="attn"``: after the attention residual, ToMe's place (the block's MLP runs on the merged tokens);
  the shift metrics read ``D(A(x), x)`` there;
- ``site="mlp"`` / ``"block"``: after the whole block, where pruning drops tokens; shift ``D(M(x'), x')`` /
  ``D(x̂, x)``.

Destinations become size-weighted averages; token sizes live in ``state.size`` and, with
``proportional=True``, every later block adds ``log(size)`` per key to its attention logits (SDPA's float
mask; ``attention="flash_attn"`` refuses the bias). ``metric="none"`` is plain ToMe. Any other score weights
the merges as vid-TLDR's saliency does for UMT (:func:`merge_saliency`; docs/merging.md says why):
representation shift (``l2``/``l1``/``cos``), ``attn`` (Eq. 2, or Eq. 3 without a class token; the map is
materialised in merging blocks only), ``attn_entropy`` (vid-TLDR's own) and ``random`` (the control). A
schedule that asks a block for more than half of the patch tokens reaching it, at the model's default input
size, is refused when patching (:func:`repshift.merge.merge_schedule`); for another input size the step is
clamped at half, as ToMe does.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

import repshift.attention as kernels
import repshift.merge as merge
import repshift.scores as scores
from repshift.patch.base import (Adapter, Branch, PruneState, patched_class, prenorm_block, register_adapter,
                                 score_tokens)
from repshift.select import gather_tokens


class RepShiftAttention(Attention):
    """timm ``Attention`` running a chosen kernel; can also hand back its attention map."""

    def _qkv(self, x: Tensor):
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def _output(self, x_in: Tensor, out: Tensor) -> Tensor:
        out = self.norm(out) if hasattr(self, "norm") else out
        gate = getattr(self, "gate", None)
        if gate is not None:
            out = out * gate(x_in).sigmoid()
        return self.proj_drop(self.proj(out))

    def _dropout_p(self) -> float:
        return self.attn_drop.p if self.training else 0.0

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        _reject_masks(attn_mask, is_causal)
        q, k, v = self._qkv(x)
        out = kernels.attend(q, k, v, self.repshift_state.attention, self.scale, self._dropout_p())
        return self._output(x, out)

    def forward_with_map(self, x: Tensor) -> tuple[Tensor, Tensor]:
        q, k, v = self._qkv(x)
        out, probs = kernels.attend_with_map(q, k, v, self.scale, self._dropout_p())
        return self._output(x, out), probs


class RepShiftBlock(Block):
    """timm ``Block`` that records its token count and, when scheduled, scores and prunes."""

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        _reject_masks(attn_mask, is_causal)
        state: PruneState = self.repshift_state
        layer = self.repshift_layer
        if not state.book:  # the first block describes the sequence
            state.begin(x, protected=range(self.repshift_num_prefix))
        return prenorm_block(state, layer, x, norm1=self.norm1, attn=self.attn, norm2=self.norm2, mlp=self.mlp,
                             ls1=self.ls1, ls2=self.ls2, drop1=self.drop_path1, drop2=self.drop_path2)


class RepShiftMergeAttention(RepShiftAttention):
    """``RepShiftAttention`` for merging: proportional attention, and the keys ToMe matches on."""

    def forward_merge(self, x: Tensor, key_bias: Optional[Tensor], with_map: bool
                      ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """``(output, keys averaged over heads [B, N, head_dim], unbiased softmax map or None)``; ``key_bias``
        ``[B, N]`` (``log(size)``, or None) is added to every query's logit for each key."""
        q, k, v = self._qkv(x)
        if with_map:
            out, probs = kernels.attend_with_map(q, k, v, self.scale, self._dropout_p(), key_bias=key_bias)
        else:
            out = kernels.attend(q, k, v, self.repshift_state.attention, self.scale, self._dropout_p(),
                                 key_bias=key_bias)
            probs = None
        return self._output(x, out), k.mean(dim=1), probs


#: Scores a merge reads from the block's softmax map, which merging blocks then materialise.
_MAP_METRICS = ("attn_cls", "attn_mean", "attn_entropy")
#: Scores that can weight a merge on a timm ViT (metric="none": plain ToMe).
MERGE_SCORES = scores.SHIFT_METRICS + _MAP_METRICS + scores.CONTROL_METRICS


class RepShiftMergeBlock(Block):
    """timm ``Block`` under ``mode="merge"``: proportional attention once tokens have sizes, and a ToMe step at
    the state's site when scheduled (see the module doc)."""

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        _reject_masks(attn_mask, is_causal)
        state: PruneState = self.repshift_state
        layer, prefix = self.repshift_layer, self.repshift_num_prefix
        if not state.book:  # the first block describes the sequence
            state.begin(x, protected=range(prefix))
        state.enter(layer, x.shape[1])
        step = state.step(layer)
        count = merge.merge_count(x.shape[1] - prefix, *step) if step is not None else 0
        bias = merge.size_bias(state.size) if state.proportional and state.size is not None else None
        x_norm = self.norm1(x)
        with_map = count > 0 and state.metric in _MAP_METRICS
        a_raw, keys, attn_map = self.attn.forward_merge(x_norm, bias, with_map)
        a = self.ls1(a_raw)
        x_mid = x + self.drop_path1(a)
        attn_branch = Branch(input=x, normed=x_norm, raw=a_raw, update=a, output=x_mid)
        if count and state.site == "attn":
            x_mid = self._merge(x_mid, keys, count, {"attn": attn_branch}, attn_map)
            return x_mid + self.drop_path2(self.ls2(self.mlp(self.norm2(x_mid))))
        x_mid_norm = self.norm2(x_mid)
        m_raw = self.mlp(x_mid_norm)
        m = self.ls2(m_raw)
        x_out = x_mid + self.drop_path2(m)
        if not count:
            return x_out
        sites = {"attn": attn_branch, "mlp": Branch(input=x_mid, normed=x_mid_norm, raw=m_raw, update=m, output=x_out),
                 "block": (x_out, x)}
        return self._merge(x_out, keys, count, sites, attn_map)

    def _merge(self, x: Tensor, keys: Tensor, count: int, sites: dict, attn_map: Optional[Tensor]) -> Tensor:
        """Merge ``count`` patch tokens of ``x`` away; sizes and per-token records follow the destinations."""
        state: PruneState = self.repshift_state
        prefix = self.repshift_num_prefix
        saliency = merge_saliency(state, self.repshift_layer, sites, attn_map, x, prefix)
        x, state.size, positions = merge.merge_after_prefix(x, keys, count, prefix, state.size, saliency)
        state.book = {name: gather_tokens(record, positions) for name, record in state.book.items()}
        return x


def merge_saliency(state: PruneState, layer: int, sites: dict, attn_map: Optional[Tensor], like: Tensor,
                   prefix: int) -> Optional[Tensor]:
    """ŝ ``[B, N - prefix]`` of the mergeable tokens: the state's score, normalised over them as vid-TLDR does
    (:func:`repshift.merge.normalize_saliency`); None for ``metric="none"`` (ŝ = 1, plain ToMe)."""
    if state.metric == "attn_entropy":
        raw = merge.attention_entropy(attn_map)
    else:
        raw = score_tokens(state, layer, sites=sites, attn_map=attn_map, like=like)
    return None if raw is None else merge.normalize_saliency(raw[:, prefix:])


def _reject_masks(attn_mask, is_causal) -> None:
    if attn_mask is not None or is_causal:
        raise NotImplementedError("repshift-patched ViTs do not support attention masks or causal attention")


class RepShiftModel:
    """Mixin put in front of the model's own class: resets per-forward state, picks the kernel."""

    def forward_features(self, x: Tensor, *args, **kwargs) -> Tensor:
        state: PruneState = self.repshift
        state.reset()
        with kernels.kernel_preference(state.attention, x.device):
            return super().forward_features(x, *args, **kwargs)


class TimmViTAdapter(Adapter):
    family = "timm-vit"
    modes = ("sequence", "merge")
    description = "timm VisionTransformer models (DeiT/ViT family) with timm's standard Block and Attention"

    def supports(self, model) -> bool:
        return isinstance(model, VisionTransformer)

    def check(self, model) -> None:
        for i, block in enumerate(model.blocks):
            if type(block) is not Block or type(block.attn) is not Attention:
                raise TypeError(
                    f"block {i} is a {type(block).__name__} with {type(block.attn).__name__}; repshift.patch "
                    "supports timm's standard pre-norm Block with its standard Attention"
                )

    def depth(self, model) -> int:
        return len(model.blocks)

    def droppable(self, model) -> int:
        return model.patch_embed.num_patches

    def resolve_metric(self, model, metric: str) -> str:
        if metric == "attn":  # Eq. 2 needs a class token; without one the paper uses Eq. 3
            return "attn_cls" if model.cls_token is not None else "attn_mean"
        return metric

    def check_merge(self, model, state: PruneState) -> None:
        """Refuse a merge this ViT cannot serve: a score it cannot give, or an ``r`` above half the patch tokens."""
        if state.metric not in MERGE_SCORES:
            raise ValueError(f"merging on {self.family} models takes metric in {MERGE_SCORES}; "
                             f"metric={state.metric} is a score this host cannot give")
        if state.keep != "top":
            raise ValueError("keep='bottom' selects tokens to drop; merging has no such choice (use keep='top')")
        if state.metric == "attn_cls" and model.cls_token is None:
            raise ValueError("metric=attn_cls (Eq. 2) reads the class token's attention row and this ViT has no "
                             "class token: use metric=attn (Eq. 3 here) or attn_mean")
        merge.merge_schedule(model.patch_embed.num_patches, {layer: state.step(layer) for layer in state.layers})

    def install(self, model, state: PruneState) -> None:
        merging = state.mode == "merge"
        if merging:
            self.check_merge(model, state)
        model.__class__ = patched_class(RepShiftModel, type(model))
        for index, block in enumerate(model.blocks):
            block.__class__ = RepShiftMergeBlock if merging else RepShiftBlock
            block.attn.__class__ = RepShiftMergeAttention if merging else RepShiftAttention
            block.repshift_state = block.attn.repshift_state = state
            block.repshift_layer = index
            block.repshift_num_prefix = model.num_prefix_tokens

    def uninstall(self, model) -> None:
        for block in model.blocks:
            block.__class__ = Block
            block.attn.__class__ = Attention
            del block.repshift_state, block.attn.repshift_state, block.repshift_layer, block.repshift_num_prefix
        model.__class__ = type(model).__bases__[1]  # (RepShiftModel, original class)


register_adapter(TimmViTAdapter())
