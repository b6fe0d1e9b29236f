"""The timm ResNet adapter: representation-shift pruning of the 2-D feature map between stages.

The scheduled units are the four stages ``layer1``..``layer4`` (0-based stage indices 0..3).
A scheduled stage scores every location of its output map and then drops ``num`` rows and
``num`` columns of it, so the next stage convolves a dense, smaller grid (paper §4.2, Table 6):

- ``mode="line"`` (L-W): a row's score is the mean of its locations' scores (a column's likewise);
  the ``num`` lowest rows and the ``num`` lowest columns go, the rest keep their order
  (:func:`repshift.select.keep_grid_lines`).
- ``mode="token"`` (T-W): the ``num`` lowest locations of every row go (the row closes up, so a
  location may shift left), then the ``num`` lowest of every column of that narrower map
  (:func:`repshift.select.keep_grid_tokens`). Each row and column loses its own weakest tokens
  rather than a shared line, and the map stays dense. This is our reading of "removing the least
  important tokens from each row and column": the paper gives no more detail.
- ``metric="none"`` is the static control: it crops to the same grid sizes without scoring
  (keeps the first rows and columns), the ceiling of what pruning can buy in speed.

Where the shift is measured. The paper measures it "before and after each stage", but a stage
changes the channel count (ResNet-50 ``layer1``: 64 -> 256) and, from ``layer2`` on, the resolution,
so ``D(stage(x), x)`` is undefined. Two shape-keeping readings are offered as the ``site``:

- ``site="mlp"`` (default; the name every family's default site has; a ResNet has no MLP): the
  residual branch of the stage's **last block**, ``y = act(s + F(x))`` with ``s`` the block's
  shortcut (``x`` itself, or its projection when the block downsamples). It is read as a
  :class:`repshift.patch.base.Branch` with ``input = normed = s`` (a ResNet block has no pre-norm
  and no layer scale), ``raw = update = F(x)``, ``output = y``: ``literal`` and ``normed`` are
  ``D(F(x), s)``, ``update`` is ``D(y, s)``, the block's output against its input.
- ``site="stage"``: the whole stage, ``D(stage output, P(stage input))`` with ``P`` the stage's
  first shortcut (identity when the stage keeps the shape, as ResNet-34 ``layer1`` does; else the
  projection the first block applies anyway), the same pair under every reading.

Scores are per location, over channels, ``[B, H, W]``; with ``record=True`` every stage appends its
map to ``state.recorded`` (Fig. 7). Installing swaps the classes of the model and its stages only;
parameters and state-dict keys are untouched. Unscheduled stages run timm's own blocks.
"""
from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from repshift.patch.base import Branch, PruneState, patched_class, register_adapter, score_tokens
from repshift.patch.grid import GridAdapter, ScoredGridStage, check_grid, grid_tokens

# The residual branch F of each block type, module by module, in timm's order; then its final activation.
_BRANCH = {
    BasicBlock: ("conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn2"),
    Bottleneck: ("conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2", "aa", "conv3", "bn3"),
}
_FINAL_ACT = {BasicBlock: "act2", Bottleneck: "act3"}


def stages(model: ResNet) -> list[nn.Sequential]:
    """``layer1``, ``layer2``, ... of a timm ResNet, in order."""
    found = []
    while hasattr(model, f"layer{len(found) + 1}"):
        found.append(getattr(model, f"layer{len(found) + 1}"))
    return found


def _block_branch(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(shortcut, branch)`` of one timm block, whose output is ``act(shortcut + branch)``."""
    shortcut = x if block.downsample is None else block.downsample(x)
    branch = x
    for name in _BRANCH[type(block)]:
        branch = getattr(block, name)(branch)
    if block.se is not None:
        branch = block.se(branch)
    if block.drop_path is not None:
        branch = block.drop_path(branch)
    return shortcut, branch


def _block_output(block: nn.Module, shortcut: Tensor, branch: Tensor) -> Tensor:
    """``act(shortcut + branch)``, summed into ``branch`` (as timm's blocks do: no new feature map)."""
    return getattr(block, _FINAL_ACT[type(block)])(branch.add_(shortcut))


def stage_name(layer: int) -> str:
    """How an error names stage ``layer``: its 0-based index and timm's attribute."""
    return f"stage index {layer} (layer{layer + 1})"


class RepShiftStage(ScoredGridStage, nn.Sequential):
    """A ResNet stage that records its grid and, when scheduled, scores and prunes its output map."""

    def _forward_scored(self, state: PruneState, layer: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """The stage's output and its representation-shift scores ``[B, H*W]`` at ``state.site``.

        Only the tensors the site needs are kept: the last block's shortcut and branch (``mlp``), or the
        first block's shortcut (``stage``); the mlp scores are taken before the last block sums its branch
        into the shortcut in place, so scoring adds no feature map of its own but the difference.
        """
        blocks = list(self)
        stage_shortcut = None
        if state.site == "stage":
            stage_shortcut, branch = _block_branch(blocks[0], x)
            x = _block_output(blocks[0], stage_shortcut, branch)  # sums into branch: the shortcut stays intact
            blocks = blocks[1:]
        if not blocks:  # a one-block stage: its first block is its last
            stage_site = (grid_tokens(x), grid_tokens(stage_shortcut))
            return x, score_tokens(state, layer, sites={"stage": stage_site}, like=grid_tokens(x))
        for block in blocks[:-1]:
            x = block(x)
        shortcut, branch = _block_branch(blocks[-1], x)
        if state.site == "mlp":
            # Branch.pair("update") forms shortcut + branch itself; it is not needed otherwise.
            site = Branch(input=grid_tokens(shortcut), normed=grid_tokens(shortcut), raw=grid_tokens(branch),
                          update=grid_tokens(branch))
            token_scores = score_tokens(state, layer, sites={"mlp": site}, like=grid_tokens(branch))
            return _block_output(blocks[-1], shortcut, branch), token_scores
        out = _block_output(blocks[-1], shortcut, branch)
        stage_site = (grid_tokens(out), grid_tokens(stage_shortcut))
        return out, score_tokens(state, layer, sites={"stage": stage_site}, like=grid_tokens(out))


class RepShiftResNetModel:
    """Mixin put in front of the model's own class: a new forward forgets the previous one."""

    def forward_features(self, x: Tensor) -> Tensor:
        self.repshift.reset()
        return super().forward_features(x)


def _halve(size: int, times: int) -> int:
    """A side after ``times`` stride-2 layers (3x3/pad 1, 7x7/pad 3, 1x1/pad 0 all give ceil(s / 2))."""
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


def grid_sizes(model: ResNet, input_hw: Sequence[int], layers: Sequence[int] = (), num: Sequence[int] = ()) -> list[dict]:
    """Per stage: the ``(H, W)`` it outputs and, when scheduled, what pruning leaves (``None`` if not).

    Arithmetic from timm's ``feature_info`` reductions (every stride-2 layer maps a side ``s`` to
    ``ceil(s / 2)``), so it needs no forward; the tests check it against real forwards.
    """
    reductions = [info["reduction"] for info in model.feature_info[1:]]
    drops = dict(zip(layers, num))
    height, width = (_halve(side, int(math.log2(reductions[0]))) for side in input_hw)
    previous, out = reductions[0], []
    for layer, reduction in enumerate(reductions):
        times = int(math.log2(reduction // previous))
        height, width, previous = _halve(height, times), _halve(width, times), reduction
        entry = {"stage": f"layer{layer + 1}", "output": (height, width), "pruned": None}
        if drops.get(layer):
            check_grid(drops[layer], height, width, stage_name(layer))
            height, width = height - drops[layer], width - drops[layer]
            entry["pruned"] = (height, width)
        out.append(entry)
    return out


class TimmResNetAdapter(GridAdapter):
    family = "timm-resnet"
    description = "timm ResNet models (ResNet-18/34/50/101/...) built from timm's BasicBlock or Bottleneck"
    sites = ("mlp", "stage")
    modes = ("line", "token")

    def supports(self, model) -> bool:
        return isinstance(model, ResNet)

    def check(self, model) -> None:
        for s, stage in enumerate(stages(model)):
            for b, block in enumerate(stage):
                if type(block) not in _BRANCH:
                    raise TypeError(
                        f"layer{s + 1}.{b} is a {type(block).__name__}; repshift.patch supports timm ResNets "
                        "built from timm's BasicBlock or Bottleneck"
                    )

    def depth(self, model) -> int:
        return len(stages(model))

    def install(self, model, state: PruneState) -> None:
        self.check_counts(model, state)
        input_hw = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224)))[1:]
        grid_sizes(model, input_hw, state.layers, state.num or ())  # a step larger than the grid fails here
        model.__class__ = patched_class(RepShiftResNetModel, type(model))
        for index, stage in enumerate(stages(model)):
            stage.__class__ = RepShiftStage
            stage.repshift_state = state
            stage.repshift_layer = index
            stage.repshift_where = stage_name(index)

    def uninstall(self, model) -> None:
        for stage in stages(model):
            stage.__class__ = nn.Sequential
            del stage.repshift_state, stage.repshift_layer, stage.repshift_where
        model.__class__ = type(model).__bases__[1]  # (RepShiftResNetModel, original class)


register_adapter(TimmResNetAdapter())
