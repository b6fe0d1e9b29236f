"""``repshift.patch``: put token scoring and pruning into a host model, whatever its family.

The call finds the adapter for the model (:mod:`repshift.patch.base`), checks the schedule once
for every family, and lets the adapter install itself. Every other module of this package is one
host family's adapter and registers itself when imported; all of them are imported here, so a new
family is one new module.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Optional, Sequence

import torch
from torch import Tensor

import repshift.attention as kernels
import repshift.scores as scores
from repshift.patch.base import (
    ADAPTERS,
    READINGS,
    Adapter,
    Branch,
    PruneState,
    Schedule,
    adapter_of,
    find_adapter,
    register_adapter,
    score_tokens,
    unregister_adapter,
)
from repshift.select import KEEP, drop_count

#: How a scheduled unit drops tokens. ``sequence``: tokens of a sequence (ViT, UMT, ViM). On a 2-D
#: feature map (ResNet, EfficientNet, ConvNeXt): ``line`` drops whole rows and columns, ``token`` the
#: weakest tokens of every row and then of every column; either way the map stays a dense, smaller grid.
#: ``merge``: token merging instead of dropping (repshift.merge): vid-TLDR's on UMT (repshift.patch.umt), ToMe's
#: on timm ViTs and Hugging Face vision towers (repshift.patch.base.tome_block; LLaVA's tower included).
MODES = ("sequence", "line", "token", "merge")

__all__ = [
    "ADAPTERS", "MODES", "READINGS", "Adapter", "Branch", "PruneState", "find_adapter", "is_patched", "patch", "record_scores",
    "register_adapter", "score_tokens", "unpatch", "unregister_adapter",
]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def patch(
    model,
    *,
    metric: str,
    site: str = "mlp",
    layers: Optional[Sequence[int]] = None,
    ratio: Schedule = None,
    num: Schedule = None,
    r: Schedule = None,
    attention: str = "sdpa",
    seed: int = 0,
    keep: str = "top",
    reading: str = "literal",
    mode: str = "sequence",
    proportional: bool = True,
):
    """Prune tokens inside ``model`` (in place; returned for chaining). See the README for the options.

    ``mode="merge"`` merges tokens instead: as vid-TLDR does on UMT (:mod:`repshift.patch.umt`; each step clamped
    to half the tokens) or as ToMe does on timm ViTs and Hugging Face vision towers (:mod:`repshift.patch.timm_vit`,
    :mod:`repshift.patch.hf_vision`; a step above half the patch tokens is refused). ``num`` / ``ratio`` give the tokens merged away at each layer; ``r`` is ToMe's name for
    ``num``, with ``layers`` defaulting to every block (an int: the same ``r`` in every block; a list: one per
    block). ``proportional`` adds ``log(size)`` of every merged token to the attention logits of later blocks.
    """
    if is_patched(model):
        raise RuntimeError("model is already patched; call repshift.unpatch(model) first")
    adapter = find_adapter(model)
    if metric not in scores.METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {scores.METRICS}")
    if site not in adapter.sites:
        raise ValueError(f"unknown site {site!r} for {adapter.family}; expected one of {adapter.sites}")
    if keep not in KEEP:
        raise ValueError(f"keep must be 'top' or 'bottom', got {keep!r}")
    if reading not in READINGS:
        raise ValueError(f"unknown reading {reading!r}; expected one of {READINGS}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if mode not in adapter.modes:
        raise ValueError(
            f"mode={mode!r} does not apply to {adapter.family} models: they prune with mode in {adapter.modes} "
            "('sequence' drops tokens of a sequence; 'line' and 'token' prune the rows and columns of a 2-D feature map; "
            "'merge' merges tokens of a UMT video encoder, a timm ViT or a Hugging Face vision tower)"
        )
    if metric in scores.MERGE_METRICS and mode != "merge":
        raise ValueError(f"metric={metric} is vid-TLDR's merging saliency: use it with mode='merge'")
    if mode == "merge" and proportional and attention == "flash_attn":
        raise ValueError(
            "merging with proportional attention adds log(size) per key, which attention='flash_attn' cannot: "
            "use attention='sdpa' (memory-efficient kernel on CUDA) or proportional=False (FlashAttention kept)"
        )
    kernels.check_backend(attention)
    depth = adapter.depth(model)
    if r is not None:  # ToMe's schedule: r tokens merged in every block (or in each of ``layers``)
        if mode != "merge":
            raise ValueError("r is ToMe's number of tokens merged per block: it applies to mode='merge'")
        if num is not None or ratio is not None:
            raise ValueError("give r or num/ratio, not both (r is num for merging)")
        num, layers = r, range(depth) if layers is None else layers
    if layers is None:
        raise ValueError("give layers (the blocks that prune), or r with mode='merge' (every block merges)")
    layers = tuple(layers)
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < depth:
            raise ValueError(f"layer index {layer!r} is out of range: the model has blocks 0..{depth - 1}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers has repeated indices: {layers}")
    if (ratio is None) == (num is None):
        raise ValueError("give exactly one of ratio or num (both or neither were given)")
    order = sorted(range(len(layers)), key=layers.__getitem__)
    ratios = _as_tuple(ratio, len(layers), "ratio", float)
    nums = _as_tuple(num, len(layers), "num" if r is None else "r", int)
    state = PruneState(
        family=adapter.family,
        metric=adapter.resolve_metric(model, metric),
        site=site,
        reading=reading,
        layers=tuple(layers[i] for i in order),
        ratio=tuple(ratios[i] for i in order) if ratios else None,
        num=tuple(nums[i] for i in order) if nums else None,
        attention=attention,
        seed=int(seed),
        keep=keep,
        mode=mode,
        proportional=bool(proportional),
    )
    droppable = adapter.droppable(model)
    # Merging checks its own schedule: UMT clamps each step to half the tokens (vid-TLDR's rule); the timm
    # adapter refuses a step above half (repshift.merge.merge_schedule).
    if nums is not None and droppable is not None and mode != "merge":
        for layer in state.layers:  # drop_count raises when a step asks for more than is left
            droppable -= drop_count(droppable, *state.step(layer))
    adapter.install(model, state)
    model.repshift = state
    return model


def _as_tuple(value: Schedule, count: int, name: str, kind: type):
    if value is None:
        return None
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,) * count
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries but layers has {count}; give one per layer or a scalar")
    for v in values:
        if kind is int and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"{name} must be non-negative integers, got {v!r}")
        if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1):
            raise ValueError(f"ratio must be in [0, 1), got {v!r}")
    return tuple(kind(v) for v in values)


def unpatch(model):
    """Restore the model's own classes and forward; parameters were never touched."""
    if not is_patched(model):
        raise RuntimeError("model is not patched by repshift")
    adapter_of(model).uninstall(model)
    del model.repshift
    return model


def is_patched(model) -> bool:
    return isinstance(getattr(model, "repshift", None), PruneState)


@torch.no_grad()
def record_scores(model, inputs: Tensor, *, metric: str, site: str = "mlp", reading: str = "literal") -> Tensor:
    """Per-unit scores ``[B, depth, N]`` of every token in an unpruned forward of ``model``."""
    if is_patched(model):
        raise RuntimeError("record scores on an unpatched model (call repshift.unpatch first)")
    if metric not in scores.SHIFT_METRICS + scores.ATTENTION_METRICS:
        raise ValueError(f"metric {metric!r} has no per-token map; use one of l2, l1, cos, attn, attn_cls, attn_mean")
    patch(model, metric=metric, site=site, reading=reading, layers=(), ratio=0.0, attention="sdpa")
    try:
        model.repshift.record = True
        model(inputs)
        return torch.stack(model.repshift.recorded, dim=1)
    finally:
        unpatch(model)
