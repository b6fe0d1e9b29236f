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

The block itself is :func:`repshift.patch.base.tome_block`, shared with the Hugging Face vision towers
(:mod:`repshift.patch.hf_vision`). Destinations become size-weighted averages; token sizes live in ``state.size``
and, with ``proportional=True``, every later block adds ``log(size)`` per key to its attention logits (SDPA's
float mask; ``attention="flash_attn"`` refuses the bias). ``metric="none"`` is plain ToMe. Any other score weights
the merges as vid-TLDR's saliency does for UMT (:func:`repshift.patch.base.merge_saliency`; docs/merging.md says
why): representation shift (``l2``/``l1``/``cos``), ``attn`` (Eq. 2, or Eq. 3 without a class token; the map is
materialised in merging blocks only), ``attn_entropy`` (vid-TLDR's own) and ``random`` (the control). A schedule
that asks a block for more than half of the patch tokens reaching it, at the model's default input size, is
refused when patching (:func:`repshift.merge.merge_schedule`); for another input size the step is clamped at half,
as ToMe does.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

import repshift.attention as kernels
from repshift.patch.base import Adapter, PruneState, check_merge, patched_class, prenorm_block, register_adapter, tome_block


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


class RepShiftMergeBlock(Block):
    """timm ``Block`` under ``mode="merge"``: :func:`repshift.patch.base.tome_block` (see the module doc)."""

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        _reject_masks(attn_mask, is_causal)
        state: PruneState = self.repshift_state
        if not state.book:  # the first block describes the sequence
            state.begin(x, protected=range(self.repshift_num_prefix))
        return tome_block(state, self.repshift_layer, x, prefix=self.repshift_num_prefix, norm1=self.norm1,
                          attn=self.attn, norm2=self.norm2, mlp=self.mlp, ls1=self.ls1, ls2=self.ls2,
                          drop1=self.drop_path1, drop2=self.drop_path2)


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
        check_merge(self.family, state, model.patch_embed.num_patches, class_token=model.cls_token is not None)

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
