"""The adapter protocol behind ``repshift.patch``: what every host family provides, and the
run-time state all of them share.

An adapter knows one family of models (timm ViTs, UMT, ResNet, ViM, ...) and nothing of Hydra:

- which models it serves (:meth:`Adapter.supports`) and which variants it refuses (:meth:`Adapter.check`);
- which sites it measures the shift at (:attr:`Adapter.sites`);
- how many scheduled units (blocks, stages, layers) the model has (:meth:`Adapter.depth`) and how
  many droppable tokens enter the first one at the default input size (:meth:`Adapter.droppable`);
- how a requested metric resolves for this model (``attn`` becomes Eq. 2 or Eq. 3; a model without
  attention refuses attention metrics) (:meth:`Adapter.resolve_metric`);
- how to put scoring and pruning into the model and take it out again (:meth:`Adapter.install`,
  :meth:`Adapter.uninstall`), leaving parameters and state-dict keys untouched.

Inside its forward, an adapter reports the token count of every unit (:meth:`PruneState.enter`),
describes the sequence once (:meth:`PruneState.begin`: which positions are protected, plus any
per-token record such as the frame a token came from), computes scores with
:func:`score_tokens` and lets :meth:`PruneState.prune` pick the kept indices and gather every
stream it hands over, and every per-token record, with the same indices.

Two block shapes are shared by several families: :func:`prenorm_block` (score and prune a pre-norm
transformer block) and :func:`tome_block` (ToMe's merging in the same block, ``mode="merge"``; timm ViTs and
the Hugging Face vision towers), with :func:`check_merge` refusing what ToMe cannot serve.

Static by construction: every count (protected tokens, tokens dropped or merged at a unit) follows
from the schedule and the input's shape as Python ints, and no forward reads a tensor's value into
Python, so a patched model is one graph for ``torch.compile(fullgraph=True)`` and ``torch.export``
(docs/export.md).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence, Union

import torch
from torch import Tensor

import repshift.merge as merge
import repshift.scores as scores
from repshift.select import drop_count, gather_tokens, keep_indices, protected_mask

Schedule = Union[None, float, int, Sequence[float], Sequence[int]]

#: How ``s = D(F(x), x)`` is read for a residual branch ``y = x + g(F(N(x)))`` (``N`` the pre-norm,
#: ``F`` the module, ``g`` layer scale or identity). The paper writes the formula one way (Eqs. 4-6)
#: and describes it another (Fig. 2); its code is not public. docs/reproduction.md has the sentences.
READINGS = ("literal", "update", "normed")


@dataclass
class Branch:
    """The tensors of one residual branch ``output = input + update``, ``update = g(raw)``, ``raw = F(normed)``.

    - ``literal``: ``D(update, input)`` -- the branch's output against its residual input, as Eqs. 4-6 write it;
    - ``update``: ``D(input + update, input)`` -- the residual stream before and after the layer;
    - ``normed``: ``D(raw, normed)`` -- the module's own output against its own input (what a hook sees).
    """

    input: Tensor
    normed: Tensor
    raw: Tensor
    update: Tensor
    output: Optional[Tensor] = None  # input + update, when the host has it already

    def pair(self, reading: str) -> tuple[Tensor, Tensor]:
        """``(after, before)`` of ``reading``."""
        if reading == "literal":
            return self.update, self.input
        if reading == "update":
            return (self.output if self.output is not None else self.input + self.update), self.input
        return self.raw, self.normed


@dataclass
class PruneState:
    """Everything a patched model needs at run time; reachable as ``model.repshift``."""

    family: str
    metric: str  # resolved: "attn" has become attn_cls or attn_mean
    site: str
    reading: str  # one of READINGS: how D(F(x), x) is read at the site
    layers: tuple[int, ...]
    ratio: Optional[tuple[float, ...]]
    num: Optional[tuple[int, ...]]
    attention: str
    seed: int
    keep: str
    # How a scheduled unit drops tokens: "sequence" (token sequences: ViTs, UMT, ViM) or, on 2-D
    # feature maps (ResNet), "line" (whole rows and columns) / "token" (the weakest of every row, then column).
    mode: str = "sequence"
    # mode="merge" only: add log(size) per key to the attention logits after a merge (proportional attention).
    proportional: bool = True
    # Filled during every forward:
    tokens: list[int] = field(default_factory=list)  # tokens entering each unit
    num_protected: int = 0  # protected tokens per sample (a Python int: drop counts follow from shapes alone)
    book: dict[str, Tensor] = field(default_factory=dict)  # per-token records [B, N], gathered with the tokens
    size: Optional[Tensor] = None  # mode="merge": patches each token stands for [B, N] (None: all ones, no merge yet)
    # When set, every unit scores all of its tokens into ``recorded`` (analysis, not pruning).
    record: bool = False
    recorded: list[Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.metric == "random":  # drawn now, outside any forward: traced graphs hold the draws as constants
            for layer in self.layers:
                scores.random_draw(self.seed, layer)

    def reset(self) -> None:
        """Forget the previous forward (called by the adapter when a new forward starts)."""
        self.tokens, self.book, self.recorded, self.size, self.num_protected = [], {}, [], None, 0

    def begin(self, tokens: Tensor, protected: Sequence[int] = (), **records: Tensor) -> None:
        """Describe the sequence entering the first unit.

        ``tokens`` is that sequence, ``[B, N, ...]`` (only its shape and device are read);
        ``protected`` are the positions of tokens that are never dropped (class, distillation, register
        tokens, a middle class token), as Python ints fixed by the model, the same in every sample;
        ``records`` are extra per-token tensors ``[B, N]`` (e.g. ``frame``) kept in step with the tokens.
        The book also records the ``protected`` mask and the original ``position`` of every token.
        The positions are Python ints, so no count is ever read from a tensor (``torch.compile`` and
        ``torch.export`` see one static graph).
        """
        mask = protected_mask(tokens.shape[0], tokens.shape[1], protected, tokens.device)
        self.num_protected = len(set(protected))
        batch, length = mask.shape
        position = torch.arange(length, device=mask.device).expand(batch, length)
        self.book = {"protected": mask, "position": position, **records}

    def enter(self, layer: int, tokens: int) -> None:
        self.tokens.append(tokens)

    def step(self, layer: int) -> Optional[tuple[Optional[float], Optional[int]]]:
        """The (ratio, num) drop rule of ``layer``, or None when that unit does not prune."""
        if layer not in self.layers:
            return None
        i = self.layers.index(layer)
        return (self.ratio[i] if self.ratio else None, self.num[i] if self.num else None)

    def scoring(self, layer: int) -> bool:
        """Whether ``layer`` must compute scores (it prunes, or scores are being recorded)."""
        return self.record or layer in self.layers

    @property
    def needs_map(self) -> bool:
        return self.metric in ("attn_cls", "attn_mean")

    def prune(self, layer: int, token_scores: Optional[Tensor], *streams: Tensor) -> tuple[Tensor, ...]:
        """Record ``token_scores`` if asked, then apply ``layer``'s drop rule.

        Returns ``streams`` (each ``[B, N, ...]``) gathered with the kept indices; the per-token
        records in :attr:`book` are gathered with the same indices.
        """
        if self.record and token_scores is not None:
            self.recorded.append(token_scores)
        step = self.step(layer)
        if step is None:
            return streams
        protected = self.book["protected"]
        num_drop = drop_count(protected.shape[1] - self.num_protected, *step)
        if num_drop == 0:
            return streams
        index = keep_indices(token_scores, num_drop, protected, self.keep)
        self.book = {name: gather_tokens(record, index) for name, record in self.book.items()}
        return tuple(gather_tokens(stream, index) for stream in streams)


def score_tokens(
    state: PruneState,
    layer: int,
    *,
    sites: Optional[dict[str, Union[Branch, tuple[Tensor, Tensor]]]] = None,
    attn_map: Optional[Tensor] = None,
    like: Tensor,
) -> Optional[Tensor]:
    """Scores ``[B, N]`` of every token of a unit (protected ones included), per the state's metric.

    ``sites`` maps each site to a :class:`Branch` (read per ``state.reading``) or to a plain
    ``(after, before)`` pair that every reading shares (e.g. a whole block: ``D(x̂, x)``);
    ``attn_map`` is the unit's softmax map for the attention metrics; ``like`` (``[B, N, ...]``)
    gives the batch, token count and device for the random control. ``None`` means "no score"
    (the static control keeps the first tokens).
    """
    if state.metric in scores.SHIFT_METRICS:
        site = sites[state.site]
        after, before = site.pair(state.reading) if isinstance(site, Branch) else site
        return scores.shift(after, before, state.metric)
    if state.metric == "attn_cls":
        return scores.cls_attention(attn_map)
    if state.metric == "attn_mean":
        return scores.mean_attention(attn_map)
    if state.metric == "random":
        return scores.random_scores(like.shape[0], like.shape[1], seed=state.seed, layer=layer, device=like.device)
    if state.metric == "none":
        return None
    raise ValueError(f"metric {state.metric!r} is not available for {state.family} models")


def _identity(x: Tensor) -> Tensor:
    return x


def prenorm_block(state: PruneState, layer: int, x: Tensor, *, norm1, attn, norm2, mlp,
                  ls1=_identity, ls2=_identity, drop1=_identity, drop2=_identity) -> Tensor:
    """One pre-norm transformer block, ``x' = x + drop1(ls1(attn(norm1(x))))``, ``x̂ = x' + drop2(ls2(mlp(norm2(x'))))``,
    that records its token count and, when ``layer`` scores, scores its tokens and prunes ``x̂``.

    The shape timm's ViT blocks and UMT's share; ``attn`` provides ``forward_with_map`` for the attention metrics.
    """
    state.enter(layer, x.shape[1])
    scoring = state.scoring(layer)
    attn_map = None
    x_norm = norm1(x)
    if scoring and state.needs_map:
        a_raw, attn_map = attn.forward_with_map(x_norm)
    else:
        a_raw = attn(x_norm)
    a = ls1(a_raw)
    x_mid = x + drop1(a)
    x_mid_norm = norm2(x_mid)
    m_raw = mlp(x_mid_norm)
    m = ls2(m_raw)
    x_out = x_mid + drop2(m)
    if not scoring:
        return x_out
    sites = {
        "attn": Branch(input=x, normed=x_norm, raw=a_raw, update=a, output=x_mid),
        "mlp": Branch(input=x_mid, normed=x_mid_norm, raw=m_raw, update=m, output=x_out),
        "block": (x_out, x),
    }
    token_scores = score_tokens(state, layer, sites=sites, attn_map=attn_map, like=x)
    (x_out,) = state.prune(layer, token_scores, x_out)
    return x_out


#: Scores a ToMe merge reads from the block's softmax map, which merging blocks then materialise.
MERGE_MAP_METRICS = ("attn_cls", "attn_mean", "attn_entropy")
#: Scores that can weight a ToMe merge (metric="none": plain ToMe).
MERGE_SCORES = scores.SHIFT_METRICS + MERGE_MAP_METRICS + scores.CONTROL_METRICS


def check_merge(family: str, state: PruneState, patches: int, *, class_token: bool) -> None:
    """Refuse a ToMe merge a host cannot serve: a score outside :data:`MERGE_SCORES`, ``keep="bottom"``, ``attn_cls``
    on a model without a class token, or a step above half of the ``patches`` mergeable tokens reaching it at the
    model's default input size (:func:`repshift.merge.merge_schedule`)."""
    if state.metric not in MERGE_SCORES:
        raise ValueError(f"merging on {family} models takes metric in {MERGE_SCORES}; "
                         f"metric={state.metric} is a score this host cannot give")
    if state.keep != "top":
        raise ValueError("keep='bottom' selects tokens to drop; merging has no such choice (use keep='top')")
    if state.metric == "attn_cls" and not class_token:
        raise ValueError("metric=attn_cls (Eq. 2) reads the class token's attention row and this model has no "
                         "class token: use metric=attn (Eq. 3 here) or attn_mean")
    merge.merge_schedule(patches, {layer: state.step(layer) for layer in state.layers})


def tome_block(state: PruneState, layer: int, x: Tensor, *, prefix: int, norm1, attn, norm2, mlp,
               ls1=_identity, ls2=_identity, drop1=_identity, drop2=_identity) -> Tensor:
    """The block of :func:`prenorm_block` under ``mode="merge"`` (ToMe, Bolya et al. ICLR 2023): proportional attention
    once tokens have sizes, and, when ``layer`` is scheduled, a ToMe step on the tokens after the first ``prefix``
    (never merged), by bipartite soft matching on the block's attention keys averaged over heads.

    ``attn.forward_merge(x_norm, key_bias, with_map)`` returns ``(output, keys [B, N, head_dim], map or None)``:
    ``key_bias`` ``[B, N]`` (``log(size)``, or None) is added to every query's logit for each key, and the map, asked
    for only when the score reads one, is the **unbiased** softmax. The merge point is ``site="attn"``: after the
    attention residual (ToMe's place; the MLP runs on the merged tokens); ``"mlp"`` / ``"block"``: after the whole
    block. Counts are Python ints from the schedule and ``x``'s shape.
    """
    state.enter(layer, x.shape[1])
    step = state.step(layer)
    count = merge.merge_count(x.shape[1] - prefix, *step) if step is not None else 0
    bias = merge.size_bias(state.size) if state.proportional and state.size is not None else None
    x_norm = norm1(x)
    with_map = count > 0 and state.metric in MERGE_MAP_METRICS
    a_raw, keys, attn_map = attn.forward_merge(x_norm, bias, with_map)
    a = ls1(a_raw)
    x_mid = x + drop1(a)
    attn_branch = Branch(input=x, normed=x_norm, raw=a_raw, update=a, output=x_mid)
    if count and state.site == "attn":
        x_mid = _tome_step(state, layer, x_mid, keys, count, prefix, {"attn": attn_branch}, attn_map)
        return x_mid + drop2(ls2(mlp(norm2(x_mid))))
    x_mid_norm = norm2(x_mid)
    m_raw = mlp(x_mid_norm)
    m = ls2(m_raw)
    x_out = x_mid + drop2(m)
    if not count:
        return x_out
    sites = {"attn": attn_branch, "mlp": Branch(input=x_mid, normed=x_mid_norm, raw=m_raw, update=m, output=x_out),
             "block": (x_out, x)}
    return _tome_step(state, layer, x_out, keys, count, prefix, sites, attn_map)


def _tome_step(state: PruneState, layer: int, x: Tensor, keys: Tensor, count: int, prefix: int, sites: dict,
               attn_map: Optional[Tensor]) -> Tensor:
    """Merge ``count`` tokens of ``x`` after its ``prefix`` away; sizes and per-token records follow the destinations."""
    saliency = merge_saliency(state, layer, sites, attn_map, x, prefix)
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


@functools.cache
def patched_class(mixin: type, base: type) -> type:
    """``mixin`` put in front of ``base``: the class a patched module is switched to (uninstalling restores
    ``__bases__[1]``). Registered in this module, so a patched model can still be pickled whole."""
    cls = type(f"RepShift{base.__name__}", (mixin, base), {})
    cls.__module__ = __name__
    globals()[cls.__name__] = cls
    return cls


class Adapter:
    """One host family. Subclasses set :attr:`family` and :attr:`description` and implement the methods."""

    family: ClassVar[str]
    description: ClassVar[str]  # shown when no adapter supports a model
    sites: ClassVar[tuple[str, ...]] = scores.SITES
    modes: ClassVar[tuple[str, ...]] = ("sequence",)  # 2-D hosts: ("line", "token")

    def supports(self, model) -> bool:
        raise NotImplementedError

    def check(self, model) -> None:
        """Raise ``TypeError`` for a variant of the family this adapter cannot patch."""

    def depth(self, model) -> int:
        raise NotImplementedError

    def droppable(self, model) -> Optional[int]:
        """Droppable tokens entering the first unit at the model's default input size (None: unknown)."""
        return None

    def resolve_metric(self, model, metric: str) -> str:
        return metric

    def install(self, model, state: PruneState) -> None:
        raise NotImplementedError

    def uninstall(self, model) -> None:
        raise NotImplementedError


ADAPTERS: list[Adapter] = []


def register_adapter(adapter: Adapter) -> Adapter:
    """Make ``repshift.patch`` serve a new family (the first adapter that supports a model wins)."""
    if any(a.family == adapter.family for a in ADAPTERS):
        raise ValueError(f"an adapter for family {adapter.family!r} is already registered")
    ADAPTERS.append(adapter)
    return adapter


def unregister_adapter(family: str) -> None:
    ADAPTERS[:] = [a for a in ADAPTERS if a.family != family]


def find_adapter(model) -> Adapter:
    for adapter in ADAPTERS:
        if adapter.supports(model):
            adapter.check(model)
            return adapter
    supported = "; ".join(f"{a.family}: {a.description}" for a in ADAPTERS)
    raise TypeError(f"no repshift adapter supports {type(model).__name__}; repshift.patch supports {supported}")


def adapter_of(model) -> Adapter:
    """The adapter a patched model was patched with."""
    family = model.repshift.family
    for adapter in ADAPTERS:
        if adapter.family == family:
            return adapter
    raise RuntimeError(f"model was patched by adapter {family!r}, which is no longer registered")
