"""The LLaVA adapter: token pruning (or ToMe merging) inside the vision tower of a transformers LLaVA model.

``LlavaForConditionalGeneration`` / ``LlavaModel`` run their vision tower (any tower of
:mod:`repshift.patch.hf_vision`, in practice CLIP or SigLIP), take the tower's hidden state number
``vision_feature_layer`` (0 is the embeddings, ``i`` the output of layer ``i - 1``; LLaVA-1.5 uses -2, the
penultimate layer's output), drop its first token under ``vision_feature_select_strategy="default"`` (keep
every token under ``"full"``), project every token to the language model's width and write them over the
prompt's image placeholders, one placeholder per token. Pruning inside the tower therefore hands the language
model fewer image tokens, and the prompt must carry as many placeholders as tokens survive
(:func:`image_token_count`, :func:`fit_image_placeholders`).

The tower is patched as :mod:`repshift.patch.hf_vision` patches it (same metrics, sites, readings, kept attention
implementation, ToMe merging with ``mode="merge"``); ``model.repshift`` is its state. Merging is served like
pruning: the tower hands the language model the merged tokens, :func:`image_token_count` counts what survives
the ToMe schedule, and the rules below hold for the merging layers (the sizes of merged tokens stay inside the
tower: the language model attends to each merged token as to one).

What the pruning (or merging) can serve, checked when patching and again on every call (the feature layer and
strategy can also be given per call):

- ``vision_feature_layer`` one index ``f``: the scheduled layers must come before it (``layer < f``), so that their
  pruned output reaches hidden state ``f``; a layer at or after ``f`` would prune tokens the language model never
  receives (and ``f = 0``, the embeddings, leaves nothing to prune).
- a list of indices (their hidden states are concatenated along channels, so they must hold the same tokens):
  every scheduled layer before the smallest index.
- ``"full"``: served. ``"default"``: served when the tower has a class token (it is protected and stays first,
  so the strategy still drops exactly it); refused for a tower without one (SigLIP), where it would drop
  whichever patch happened to survive first instead of a fixed one.

Other LLaVA variants (LLaVA-NeXT, -OneVision: image tiles unpadded back onto a 2-D grid) are not served.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from repshift.patch.base import PruneState, patched_class, register_adapter
from repshift.patch.hf_vision import (
    TOWERS,
    HFVisionAdapter,
    patch_tokens,
    prefix_tokens,
    tokens_after,
    tower_layers,
    transformers_class,
)

#: The LLaVA classes served.
LLAVAS = ("LlavaForConditionalGeneration", "LlavaModel")
STRATEGIES = ("default", "full")


def llava_model(model):
    """The ``LlavaModel`` inside ``model`` (the model itself, or a ``LlavaForConditionalGeneration``'s ``model``)."""
    return model if transformers_class(model) == "LlavaModel" else model.model


def feature_index(feature_layer: int, depth: int) -> int:
    """``vision_feature_layer`` as a non-negative index into the tower's ``depth + 1`` hidden states."""
    if isinstance(feature_layer, bool) or not isinstance(feature_layer, int) or not -depth - 1 <= feature_layer <= depth:
        raise ValueError(
            f"vision_feature_layer={feature_layer!r} is not an index into the tower's {depth + 1} hidden states"
        )
    return feature_layer % (depth + 1)


def check_features(tower, state: PruneState, feature_layer: Union[int, Sequence[int]], strategy: str) -> None:
    """Raise ``ValueError`` when ``state``'s pruning cannot serve this feature layer and strategy (module doc).
    Scheduled layers that drop nothing (``ratio=0`` / ``num=0``) are no pruning."""
    depth = len(tower_layers(tower))
    if strategy not in STRATEGIES:
        raise ValueError(
            f"vision_feature_select_strategy={strategy!r} is not one LLaVA knows; expected one of {STRATEGIES}"
        )
    several = not isinstance(feature_layer, int)
    indices = [feature_index(f, depth) for f in feature_layer] if several else [feature_index(feature_layer, depth)]
    pruning = [layer for layer in state.layers if any(state.step(layer))]
    verb, noun = ("merge", "merging") if state.mode == "merge" else ("prune", "pruning")
    if pruning and strategy == "default" and prefix_tokens(tower) == 0:
        raise ValueError(
            f"vision_feature_select_strategy='default' drops the first token, and {type(tower).__name__} has no class "
            f"token: after {noun} that is whichever patch survived first, not a fixed one. {noun.capitalize()} serves "
            "'full' here"
        )
    first = min(indices)
    late = [layer for layer in pruning if layer >= first]
    if not late:
        return
    if several:
        where = f"the hidden states {sorted(indices)} are concatenated, so they must hold the same tokens"
    elif first:
        where = f"the language model receives hidden state {first}, the output of layer {first - 1}"
    else:
        where = "the language model receives the embeddings"
    raise ValueError(
        f"layers {late} {verb} at or after the features LLaVA hands to the language model "
        f"(vision_feature_layer={feature_layer}: {where}); {noun} can serve it only in layers < {first}"
    )


class RepShiftLlavaModel:
    """Methods put in front of ``LlavaModel``: check every call's feature layer and strategy against the pruning."""

    def get_image_features(self, pixel_values, vision_feature_layer=None, vision_feature_select_strategy=None,
                           **kwargs):
        layer, strategy = vision_feature_layer, vision_feature_select_strategy
        check_features(self.vision_tower, self.repshift_state,
                       self.config.vision_feature_layer if layer is None else layer,
                       self.config.vision_feature_select_strategy if strategy is None else strategy)
        return super().get_image_features(pixel_values, vision_feature_layer=vision_feature_layer,
                                          vision_feature_select_strategy=vision_feature_select_strategy, **kwargs)


class LlavaAdapter(HFVisionAdapter):
    family = "hf-llava"
    description = ("transformers " + " and ".join(LLAVAS) + " with one of the vision towers " + ", ".join(TOWERS)
                   + " (LLaVA-NeXT and other tiled variants are not served)")

    def tower(self, model):
        return llava_model(model).vision_tower

    def supports(self, model) -> bool:
        return transformers_class(model) in LLAVAS

    def check(self, model) -> None:
        tower = self.tower(model)
        if transformers_class(tower) not in TOWERS:
            raise TypeError(f"the LLaVA vision tower is a {type(tower).__name__}; repshift.patch serves LLaVA with "
                            f"one of {', '.join(TOWERS)}")
        super().check(model)

    def install(self, model, state: PruneState) -> None:
        inner = llava_model(model)
        check_features(self.tower(model), state, inner.config.vision_feature_layer,
                       inner.config.vision_feature_select_strategy)
        super().install(model, state)
        inner.__class__ = patched_class(RepShiftLlavaModel, type(inner))
        inner.repshift_state = state

    def uninstall(self, model) -> None:
        inner = llava_model(model)
        inner.__class__ = type(inner).__bases__[1]  # (mixin, original class)
        del inner.repshift_state
        super().uninstall(model)


def image_token_count(model) -> int:
    """Image tokens per image that reach the language model at the tower's configured image size, under the
    model's pruning or merging (none when unpatched): a Python int from the config and the schedule."""
    return _image_tokens(model, getattr(model, "repshift", None))


def _image_tokens(model, state: Optional[PruneState]) -> int:
    inner = llava_model(model)
    tower = inner.vision_tower
    patches = patch_tokens(tower) if state is None else tokens_after(state, patch_tokens(tower))
    return prefix_tokens(tower) + patches - (inner.config.vision_feature_select_strategy == "default")


def fit_image_placeholders(model, input_ids: Tensor, attention_mask: Optional[Tensor] = None):
    """``(input_ids, attention_mask)`` with every image's placeholders cut to :func:`image_token_count`.

    ``input_ids`` ``[B, L]`` are prompts as LLaVA's processor writes them: each image's placeholder expanded to the
    unpruned count (``image_token_count`` of the unpatched model); a run of placeholders may hold several images.
    Every row must hold the same number of images, so the rows keep one length. Preprocessing, run once per
    prompt outside the model.
    """
    token = llava_model(model).config.image_token_id
    full, kept = _image_tokens(model, None), image_token_count(model)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    rows = []
    for b, (ids, row_mask) in enumerate(zip(input_ids.tolist(), mask.tolist())):
        fitted = []
        for is_image, run in itertools.groupby(zip(ids, row_mask), key=lambda pair: pair[0] == token):
            run = list(run)
            if not is_image:
                fitted += run
                continue
            if len(run) % full:
                raise ValueError(
                    f"row {b} has a run of {len(run)} image placeholders, not a whole number of images of {full} "
                    "placeholders each (the unpruned count at the tower's image size and this feature strategy)"
                )
            fitted += [(token, run[0][1])] * (len(run) // full * kept)
        rows.append(fitted)
    if len({len(row) for row in rows}) > 1:
        raise ValueError("the rows of input_ids hold different numbers of images; fit them one prompt at a time")
    fitted = torch.tensor(rows, dtype=input_ids.dtype, device=input_ids.device).view(len(rows), -1, 2)
    ids, fitted_mask = fitted.unbind(-1)
    return ids, (fitted_mask.to(attention_mask.dtype) if attention_mask is not None else None)


register_adapter(LlavaAdapter())
