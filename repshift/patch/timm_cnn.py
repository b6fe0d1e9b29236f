"""The timm CNN adapter for EfficientNet-family models and ConvNeXt: representation-shift pruning of the
2-D feature map between stages, as :mod:`repshift.patch.timm_resnet` does for ResNets.

The scheduled units are the model's stages: ``blocks.0``, ``blocks.1``, ... of a timm ``EfficientNet``
(EfficientNet B0-B8 / Lite / V2, built from timm's depthwise-separable, inverted-residual, edge-residual
or conv-bn-act blocks) and ``stages.0``, ``stages.1``, ... of a timm ``ConvNeXt``. A scheduled stage scores
every location of its output map and drops ``num`` rows and ``num`` columns of it, with the ResNet
adapter's modes: ``mode="line"`` drops the lowest-scored whole rows and columns
(:func:`repshift.select.keep_grid_lines`), ``mode="token"`` the lowest tokens of every row and then of
every column (:func:`repshift.select.keep_grid_tokens`), ``metric="none"`` crops to the same grid (the
static control). The next stage convolves a dense, smaller grid.

Where the shift is measured. A stage starts with what changes the shape -- ConvNeXt's ``downsample``
(norm + strided conv), or the leading EfficientNet blocks that have no skip connection (a new channel
count or a stride) -- followed by residual blocks ``y = s + F(x)`` that keep it (``s`` the block's
shortcut: ``x``, or ConvNeXt's ``shortcut`` projection). The sites are the ResNet adapter's:

- ``site="mlp"`` (default; the name every family's default site has): the residual branch of the
  stage's **last block**, a :class:`repshift.patch.base.Branch` with ``input = normed = s``,
  ``update = F(x)`` (after ConvNeXt's layer scale ``gamma``) and ``raw`` = ``F(x)`` before the layer scale
  (EfficientNet blocks have none: ``raw = update``). ``literal`` is ``D(F(x), s)``, ``update`` is
  ``D(y, s)``, ``normed`` is ``D(raw, s)``.
- ``site="stage"``: ``D(stage output, input of its first residual block)`` -- across all of the stage's
  residual blocks. For ConvNeXt that is ``D(stage(x), downsample(x))``, the ResNet ``stage`` site with the
  downsample as the projection.

A stage without any residual block (EfficientNet-Lite0's first and last stage: one block each, which
change the channel count) has no shift at either site: it refuses a shift metric when scheduled, and
records an all-NaN map (``state.recorded``) when every stage records (Fig. 7). The controls
(``random``, ``none``) prune any stage.

Scores are per location, over channels, ``[B, H, W]``. Installing swaps the classes of the model and its
stages only; parameters and state-dict keys are untouched. In the forward, every count comes from the
schedule and the input's shape (no ``.item()``, no data-dependent shapes).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport
from timm.models._efficientnet_blocks import ConvBnAct, DepthwiseSeparableConv, EdgeResidual, InvertedResidual
from timm.models.convnext import ConvNeXt, ConvNeXtBlock, ConvNeXtStage
from timm.models.efficientnet import EfficientNet

import repshift.scores as scores
from repshift.patch.base import Branch, PruneState, patched_class, register_adapter, score_tokens
from repshift.patch.grid import GridAdapter, ScoredGridStage, check_grid, grid_tokens

# The residual branch F of each EfficientNet block type, module by module in timm's order (None entries skipped).
_EFFICIENTNET_BRANCH = {
    DepthwiseSeparableConv: ("conv_s2d", "bn_s2d", "conv_dw", "bn1", "aa", "se", "conv_pw", "bn2"),
    InvertedResidual: ("conv_s2d", "bn_s2d", "conv_pw", "bn1", "conv_dw", "bn2", "aa", "se", "conv_pwl", "bn3"),
    EdgeResidual: ("conv_exp", "bn1", "aa", "se", "conv_pwl", "bn2"),
    ConvBnAct: ("conv", "bn1", "aa"),
}


def stages(model) -> list[nn.Module]:
    """The stages of a timm EfficientNet (``blocks.i``) or ConvNeXt (``stages.i``), in order."""
    return list(model.blocks if isinstance(model, EfficientNet) else model.stages)


def stage_name(model, layer: int) -> str:
    return f"{'blocks' if isinstance(model, EfficientNet) else 'stages'}.{layer}"


def _is_residual(block: nn.Module) -> bool:
    return isinstance(block, ConvNeXtBlock) or bool(getattr(block, "has_skip", False))


def split_stage(stage: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(lead, residual)``: the modules that change the shape, then the residual blocks that keep it."""
    if isinstance(stage, ConvNeXtStage):
        return [stage.downsample], list(stage.blocks)
    blocks = list(stage)
    first = next((i for i, block in enumerate(blocks) if _is_residual(block)), len(blocks))
    return blocks[:first], blocks[first:]


def _branch(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(shortcut, raw, update)`` of a residual block, whose output is ``update + shortcut``.

    The same operations in the same order as timm's own forward, so ``update + shortcut`` is its output bit for bit.
    """
    if isinstance(block, ConvNeXtBlock):
        raw = block.conv_dw(x)
        if block.use_conv_mlp:
            raw = block.mlp(block.norm(raw))
        else:
            raw = block.mlp(block.norm(raw.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        update = raw if block.gamma is None else raw.mul(block.gamma.reshape(1, -1, 1, 1))
        return block.shortcut(x), raw, block.drop_path(update)
    raw = x
    for name in _EFFICIENTNET_BRANCH[type(block)]:
        module = getattr(block, name, None)
        if module is not None:
            raw = module(raw)
    return x, raw, block.drop_path(raw)


class RepShiftCNNStage(ScoredGridStage):
    """Put in front of an EfficientNet or ConvNeXt stage's class: the shift of its last residual block or across it."""

    def _forward_scored(self, state: PruneState, layer: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """The stage's output and its representation-shift scores ``[B, H*W]`` at ``state.site``."""
        lead, residual = split_stage(self)
        for module in lead:
            x = module(x)
        if not residual:  # no residual block, no shift: only reachable when recording every stage
            return x, torch.full_like(x[:, 0].flatten(1), math.nan)
        stage_input = x
        for block in residual[:-1]:
            x = block(x)
        shortcut, raw, update = _branch(residual[-1], x)
        out = update + shortcut  # timm's order: drop_path(branch) + shortcut
        if state.site == "mlp":
            site = Branch(input=grid_tokens(shortcut), normed=grid_tokens(shortcut), raw=grid_tokens(raw),
                          update=grid_tokens(update), output=grid_tokens(out))
        else:
            site = (grid_tokens(out), grid_tokens(stage_input))
        return out, score_tokens(state, layer, sites={state.site: site}, like=grid_tokens(out))


class RepShiftCNNModel:
    """Mixin put in front of the model's own class: a new forward forgets the previous one."""

    def forward_features(self, x: Tensor) -> Tensor:
        self.repshift.reset()
        return super().forward_features(x)


def _conv_side(size: int, conv: nn.Conv2d, axis: int) -> int:
    """The side a convolution outputs along ``axis``: TF "same" padding gives ``ceil(size / stride)``."""
    stride = conv.stride[axis]
    if isinstance(conv, (Conv2dSame, Conv2dSameExport)) or conv.padding == "same":
        return math.ceil(size / stride)
    kernel, dilation, padding = conv.kernel_size[axis], conv.dilation[axis], conv.padding[axis]
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _through_strided_convs(module: nn.Module, height: int, width: int) -> tuple[int, int]:
    """``(H, W)`` after the strided convolutions of ``module`` (the only layers of these stems and stages that
    change the grid; stride-1 convolutions keep it, as every one of these models pads them to)."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d) and max(conv.stride) > 1:
            height, width = _conv_side(height, conv, 0), _conv_side(width, conv, 1)
    return height, width


def grid_sizes(model, input_hw: Sequence[int], layers: Sequence[int] = (), num: Sequence[int] = ()) -> list[dict]:
    """Per stage: its name, the ``(H, W)`` it outputs and, when scheduled, what pruning leaves (``None`` if not).

    Arithmetic over the strided convolutions (no forward); the tests check it against real forwards.
    """
    drops = dict(zip(layers, num))
    stem = model.conv_stem if isinstance(model, EfficientNet) else model.stem
    height, width = _through_strided_convs(stem, *input_hw)
    out = []
    for layer, stage in enumerate(stages(model)):
        height, width = _through_strided_convs(stage, height, width)
        entry = {"stage": stage_name(model, layer), "output": (height, width), "pruned": None}
        if drops.get(layer):
            check_grid(drops[layer], height, width, stage_name(model, layer))
            height, width = height - drops[layer], width - drops[layer]
            entry["pruned"] = (height, width)
        out.append(entry)
    return out


def scored_stages(model) -> list[int]:
    """Indices of the stages that have a residual block, the only ones with a representation shift."""
    return [layer for layer, stage in enumerate(stages(model)) if split_stage(stage)[1]]


class TimmCNNAdapter(GridAdapter):
    family = "timm-cnn"
    description = ("timm EfficientNet-family models (EfficientNet B/Lite/V2) and ConvNeXt, pruned between stages "
                   "(stages: blocks.i / stages.i)")
    sites = ("mlp", "stage")
    modes = ("line", "token")

    def supports(self, model) -> bool:
        return isinstance(model, (EfficientNet, ConvNeXt))

    def check(self, model) -> None:
        for layer, stage in enumerate(stages(model)):
            lead, residual = split_stage(stage)
            for index, block in enumerate(residual, start=len(lead)):
                if not _is_residual(block):
                    raise TypeError(
                        f"{stage_name(model, layer)}.{index} ({type(block).__name__}) has no skip connection but "
                        "follows a residual block: repshift.patch expects each stage's shape-changing blocks first"
                    )
                if not isinstance(block, ConvNeXtBlock) and type(block) not in _EFFICIENTNET_BRANCH:
                    raise TypeError(
                        f"{stage_name(model, layer)}.{index} is a {type(block).__name__}; repshift.patch supports "
                        f"EfficientNet residual blocks of types {sorted(t.__name__ for t in _EFFICIENTNET_BRANCH)}"
                    )

    def depth(self, model) -> int:
        return len(stages(model))

    def install(self, model, state: PruneState) -> None:
        self.check_counts(model, state)
        if state.metric in scores.SHIFT_METRICS:
            scored = scored_stages(model)
            unscored = [layer for layer in state.layers if layer not in scored]
            if unscored:
                raise ValueError(
                    f"metric={state.metric!r} at stage {unscored[0]} ({stage_name(model, unscored[0])}): that stage "
                    "has no residual block, so no representation shift is defined there; stages with one: "
                    f"{scored}"
                )
        input_hw = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224)))[1:]
        grid_sizes(model, input_hw, state.layers, state.num or ())  # a step larger than the grid fails here
        model.__class__ = patched_class(RepShiftCNNModel, type(model))
        for layer, stage in enumerate(stages(model)):
            stage.__class__ = patched_class(RepShiftCNNStage, type(stage))
            stage.repshift_state = state
            stage.repshift_layer = layer
            stage.repshift_where = f"stage index {layer} ({stage_name(model, layer)})"

    def uninstall(self, model) -> None:
        for stage in stages(model):
            stage.__class__ = type(stage).__bases__[1]  # (RepShiftCNNStage, original class)
            del stage.repshift_state, stage.repshift_layer, stage.repshift_where
        model.__class__ = type(model).__bases__[1]  # (RepShiftCNNModel, original class)


register_adapter(TimmCNNAdapter())
