"""Token pruning inside timm ``VisionTransformer`` models, by class swapping.

``patch`` changes the classes of the model, its blocks and their attention modules to
subclasses defined here; parameters, buffers and state_dict keys stay untouched, so it works on
a model whose weights are already loaded, and ``unpatch`` restores the original classes.

A block is ``x' = x + A(x)``, ``x̂ = x' + M(x')`` with ``A = ls1∘attn∘norm1`` and
``M = ls2∘mlp∘norm2`` (branch outputs as added to the residual stream). A scoring block drops
tokens from its output ``x̂``, using its own scores:

- ``site="attn"``: ``D(A(x), x)``;  ``site="mlp"``: ``D(M(x'), x')``;  ``site="block"``: ``D(x̂, x)``
- ``attn_cls`` / ``attn_mean``: Eq. 2 / Eq. 3 from the block's own attention map, which is then
  materialised in that block only.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from repshift import attention as kernels
from repshift import scores
from repshift.select import drop_count, keep_tokens

Schedule = Union[None, float, int, Sequence[float], Sequence[int]]


@dataclass
class PruneState:
    """Everything a patched model needs at run time; reachable as ``model.repshift``."""

    metric: str  # resolved: "attn" has become attn_cls or attn_mean
    site: str
    layers: tuple[int, ...]
    ratio: Optional[tuple[float, ...]]
    num: Optional[tuple[int, ...]]
    attention: str
    seed: int
    keep: str
    num_prefix: int
    tokens: list[int] = field(default_factory=list)
    # When set, every block scores all of its tokens into ``recorded`` (analysis, not pruning).
    record: bool = False
    recorded: list[Tensor] = field(default_factory=list)

    def step(self, layer: int) -> Optional[tuple[Optional[float], Optional[int]]]:
        """The (ratio, num) drop rule of ``layer``, or None when that block does not prune."""
        if layer not in self.layers:
            return None
        i = self.layers.index(layer)
        return (self.ratio[i] if self.ratio else None, self.num[i] if self.num else None)

    @property
    def needs_map(self) -> bool:
        return self.metric in ("attn_cls", "attn_mean")


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
        state.tokens.append(x.shape[1])
        step = state.step(self.repshift_layer)
        scoring = step is not None or state.record

        attn_map = None
        if scoring and state.needs_map:
            a, attn_map = self.attn.forward_with_map(self.norm1(x))
        else:
            a = self.attn(self.norm1(x))
        a = self.ls1(a)
        x_mid = x + self.drop_path1(a)
        m = self.ls2(self.mlp(self.norm2(x_mid)))
        x_out = x_mid + self.drop_path2(m)
        if not scoring:
            return x_out

        token_scores = _score(state, self.repshift_layer, x, a, x_mid, m, x_out, attn_map)
        if state.record:
            state.recorded.append(token_scores)
        if step is None:
            return x_out
        prefix = state.num_prefix
        num_drop = drop_count(x_out.shape[1] - prefix, *step)
        patch_scores = None if token_scores is None else token_scores[:, prefix:]
        return keep_tokens(x_out, patch_scores, num_drop, prefix, state.keep)


def _score(state: PruneState, layer: int, x, a, x_mid, m, x_out, attn_map) -> Optional[Tensor]:
    """Scores ``[B, N]`` for every token of the block (prefix tokens included)."""
    if state.metric in scores.SHIFT_METRICS:
        after, before = {"attn": (a, x), "mlp": (m, x_mid), "block": (x_out, x)}[state.site]
        return scores.shift(after, before, state.metric)
    if state.metric == "attn_cls":
        return scores.cls_attention(attn_map)
    if state.metric == "attn_mean":
        return scores.mean_attention(attn_map)
    if state.metric == "random":
        return scores.random_scores(x.shape[0], x.shape[1], seed=state.seed, layer=layer, device=x.device)
    return None  # "none": no score, the static control keeps the first tokens


def _reject_masks(attn_mask, is_causal) -> None:
    if attn_mask is not None or is_causal:
        raise NotImplementedError("repshift-patched ViTs do not support attention masks or causal attention")


class RepShiftModel:
    """Mixin put in front of the model's own class: resets per-forward state, picks the kernel."""

    def forward_features(self, x: Tensor, *args, **kwargs) -> Tensor:
        state: PruneState = self.repshift
        state.tokens = []
        state.recorded = []
        with kernels.kernel_preference(state.attention, x.device):
            return super().forward_features(x, *args, **kwargs)


@functools.cache
def _patched_class(base: type) -> type:
    cls = type(f"RepShift{base.__name__}", (RepShiftModel, base), {})
    # Registered at module level so a patched model can still be pickled whole.
    cls.__module__ = __name__
    globals()[cls.__name__] = cls
    return cls


def _as_tuple(value: Schedule, count: int, name: str, kind: type) -> Optional[tuple]:
    if value is None:
        return None
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,) * count
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries but layers has {count}; give one per layer or a scalar")
    for v in values:
        if kind is int and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"num must be non-negative integers, got {v!r}")
        if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1):
            raise ValueError(f"ratio must be in [0, 1), got {v!r}")
    return tuple(kind(v) for v in values)


def check_supported(model) -> None:
    if not isinstance(model, VisionTransformer):
        raise TypeError(
            f"repshift.patch supports timm VisionTransformer models (DeiT/ViT family); got {type(model).__name__}"
        )
    for i, block in enumerate(model.blocks):
        if type(block) is not Block or type(block.attn) is not Attention:
            raise TypeError(
                f"block {i} is a {type(block).__name__} with {type(block.attn).__name__}; repshift.patch supports "
                "timm's standard pre-norm Block with its standard Attention"
            )


def patch(
    model: VisionTransformer,
    *,
    metric: str,
    site: str = "mlp",
    layers: Sequence[int],
    ratio: Schedule = None,
    num: Schedule = None,
    attention: str = "sdpa",
    seed: int = 0,
    keep: str = "top",
) -> VisionTransformer:
    if is_patched(model):
        raise RuntimeError("model is already patched; call repshift.unpatch(model) first")
    check_supported(model)
    if metric not in scores.METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {scores.METRICS}")
    if site not in scores.SITES:
        raise ValueError(f"unknown site {site!r}; expected one of {scores.SITES}")
    if keep not in ("top", "bottom"):
        raise ValueError(f"keep must be 'top' or 'bottom', got {keep!r}")
    kernels.check_backend(attention)
    depth = len(model.blocks)
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
    nums = _as_tuple(num, len(layers), "num", int)
    state = PruneState(
        metric=("attn_cls" if model.cls_token is not None else "attn_mean") if metric == "attn" else metric,
        site=site,
        layers=tuple(layers[i] for i in order),
        ratio=tuple(ratios[i] for i in order) if ratios else None,
        num=tuple(nums[i] for i in order) if nums else None,
        attention=attention,
        seed=int(seed),
        keep=keep,
        num_prefix=model.num_prefix_tokens,
    )
    if nums is not None:
        _check_num_schedule(state, model.patch_embed.num_patches)

    model.__class__ = _patched_class(type(model))
    model.repshift = state
    for index, block in enumerate(model.blocks):
        block.__class__ = RepShiftBlock
        block.attn.__class__ = RepShiftAttention
        block.repshift_state = block.attn.repshift_state = state
        block.repshift_layer = index
    return model


def _check_num_schedule(state: PruneState, patches: int) -> None:
    """Reject a ``num`` schedule that would drop more tokens than are left (at the default size)."""
    left = patches
    for layer in state.layers:
        left -= drop_count(left, *state.step(layer))


def unpatch(model: VisionTransformer) -> VisionTransformer:
    if not is_patched(model):
        raise RuntimeError("model is not patched by repshift")
    for block in model.blocks:
        block.__class__ = Block
        block.attn.__class__ = Attention
        del block.repshift_state, block.attn.repshift_state, block.repshift_layer
    model.__class__ = type(model).__bases__[1]  # (RepShiftModel, original class)
    del model.repshift
    return model


def is_patched(model) -> bool:
    return isinstance(model, RepShiftModel)


@torch.no_grad()
def record_scores(model: VisionTransformer, images: Tensor, *, metric: str, site: str = "mlp") -> Tensor:
    """Per-block scores ``[B, depth, N]`` of every token in an unpruned forward of ``model``."""
    if is_patched(model):
        raise RuntimeError("record scores on an unpatched model (call repshift.unpatch first)")
    if metric not in scores.SHIFT_METRICS + ("attn", "attn_cls", "attn_mean"):
        raise ValueError(f"metric {metric!r} has no per-token map; use one of l2, l1, cos, attn, attn_cls, attn_mean")
    patch(model, metric=metric, site=site, layers=(), ratio=0.0, attention="sdpa")
    try:
        model.repshift.record = True
        model.forward_features(images)
        return torch.stack(model.repshift.recorded, dim=1)
    finally:
        unpatch(model)
