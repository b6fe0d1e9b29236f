"""The Vision Mamba adapter: token pruning inside :class:`repshift.models.vim.VisionMamba` (ViM-T).

A ViM layer is ``r_i = r_{i-1} + h_{i-1}`` (the residual stream, fp32), ``h_i = M(N(r_i))``
(``N`` RMSNorm, ``M`` the bidirectional Mamba mixer), so the mixer is the layer's only residual
branch: ``y = x + g(F(N(x)))`` with ``x = r_i``, ``F = M``, ``g`` = identity (drop path is off in
eval; in training it drops ``h_i`` at the next layer's add, not here) and ``y = r_i + h_i``.
The site ``"mixer"`` reads it as :class:`repshift.patch.base.Branch`:

- ``literal``: ``D(h_i, r_i)`` -- the mixer output against its residual input (Eqs. 4-6 as written);
- ``update``:  ``D(r_i + h_i, r_i)`` -- the residual stream before and after the layer (for l2/l1
  this is the size of ``h_i`` itself);
- ``normed``:  ``D(h_i, N(r_i))`` -- the mixer's output against its own (normalised) input.

There is no separate "block" site: the residual stream across a whole layer is the ``update``
reading of the mixer. ``metric="top_vim"`` is ToP-ViM's score
(:func:`repshift.scores.top_vim`), read from the same layer's backward-scan output.

A scheduled layer ``i`` prunes its outputs ``(h_i, r_i)`` with its own scores, through
``state.prune``: both streams and every per-token record are gathered with the same kept
indices, which stay ascending, so the survivors scan in their original order. The class token is
protected (never dropped) and keeps its place between the same neighbours; its index in every
sample is read back from the gathered ``protected`` record, so the head reads it wherever it is.
"""
from __future__ import annotations

import torch
from torch import Tensor

import repshift.scores as scores
from repshift.models.vim import BiMambaMixer, VimBlock, VisionMamba
from repshift.patch.base import Adapter, Branch, PruneState, patched_class, register_adapter, score_tokens


def _scored_layer(layer: VimBlock, hidden: Tensor, residual, state: PruneState, index: int):
    """``VimBlock.forward`` with its intermediate tensors kept: ``(hidden, residual, scores)``."""
    residual = hidden if residual is None else residual + layer.drop_path(hidden)
    if layer.residual_in_fp32:
        residual = residual.float()
    normed = layer.norm(residual.to(layer.norm.weight.dtype))
    forward, backward = layer.mixer.directional_outputs(normed)
    mixed = layer.mixer.project(forward, backward)
    if state.metric == "top_vim":
        token_scores = scores.top_vim(backward)
    else:
        branch = Branch(input=residual, normed=normed, raw=mixed, update=mixed, output=residual + mixed)
        token_scores = score_tokens(state, index, sites={"mixer": branch}, like=mixed)
    return mixed, residual, token_scores


class RepShiftVisionMamba:
    """Mixin put in front of the model's own class: the layer loop with scoring and pruning."""

    def forward_layers(self, hidden: Tensor, cls_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        state: PruneState = self.repshift
        state.reset()
        # Checked in eager runs only: reading the tensor would cut a compiled graph, and embed() puts it there.
        if not torch.compiler.is_compiling() and not bool((cls_index == self.cls_position).all()):
            raise ValueError(
                f"the class token must enter the layers at index {self.cls_position}, got {cls_index.tolist()}")
        state.begin(hidden, protected=[self.cls_position])
        residual = None
        for index, layer in enumerate(self.layers):
            state.enter(index, hidden.shape[1])
            if not state.scoring(index):
                hidden, residual = layer(hidden, residual)
                continue
            hidden, residual, token_scores = _scored_layer(layer, hidden, residual, state, index)
            hidden, residual = state.prune(index, token_scores, hidden, residual)
        # One protected token per row: its index is where the class token now sits.
        return hidden, residual, state.book["protected"].int().argmax(dim=1)


class VimAdapter(Adapter):
    family = "vim"
    description = "Vision Mamba (repshift.models.vim.VisionMamba: ViM-T, middle class token, bimamba v2)"
    sites = ("mixer",)

    def supports(self, model) -> bool:
        return isinstance(model, VisionMamba)

    def check(self, model) -> None:
        for i, layer in enumerate(model.layers):
            if type(layer) is not VimBlock or type(layer.mixer) is not BiMambaMixer:
                raise TypeError(f"layer {i} is a {type(layer).__name__} with {type(layer.mixer).__name__}; "
                                "repshift.patch supports VimBlock layers with the BiMambaMixer")

    def depth(self, model) -> int:
        return len(model.layers)

    def droppable(self, model) -> int:
        return model.patch_embed.num_patches

    def resolve_metric(self, model, metric: str) -> str:
        if metric in scores.ATTENTION_METRICS:
            raise ValueError(
                f"metric={metric} needs attention maps, and Vision Mamba has no attention; use a representation-shift "
                "metric (l2, l1, cos) across the mixer, top_vim (ToP-ViM's score), random or none"
            )
        return metric

    def install(self, model, state: PruneState) -> None:
        model.__class__ = patched_class(RepShiftVisionMamba, type(model))

    def uninstall(self, model) -> None:
        model.__class__ = type(model).__bases__[1]  # (RepShiftVisionMamba, original class)


register_adapter(VimAdapter())
