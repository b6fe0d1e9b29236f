"""The Hugging Face ``transformers`` adapter: token pruning inside HF vision towers, by class swapping.

A *tower* is the ViT-shaped encoder: ``ViTModel``, ``DeiTModel``, ``CLIPVisionModel``, ``SiglipVisionModel``,
``Dinov2Model`` or ``Dinov2WithRegistersModel``. ``repshift.patch`` serves a tower itself or a model that holds
one (:data:`HOLDERS`: ``ViTForImageClassification``, ``CLIPModel``, ...); the holder's text side and heads are
left alone (every head here reads the class token or pools over whatever tokens survive). LLaVA has its own
adapter on top of this one (:mod:`repshift.patch.hf_llava`). Classes are matched by exact name inside
``transformers``, so a subclass that may have changed the forward is not taken for its parent.

Installing swaps the classes of the tower's layers and of their attention modules for subclasses defined
here; parameters, buffers, hooks and state-dict keys are untouched (``save_pretrained`` writes the same
files), and uninstalling restores them. The models' own classes are not swapped: transformers keys its
output capture (``output_hidden_states``) on the model class.

Every layer is ``x' = x + d(ls1(attn(norm1(x))))``, ``x̂ = x' + d(ls2(mlp(norm2(x'))))`` (``ls`` layer scale,
DINOv2 only; ``d`` the residual dropout or drop path) and runs as :func:`repshift.patch.base.prenorm_block`:
the sites (``attn``, ``mlp``, ``block``), readings and metrics are the timm adapter's. Protected tokens are
the class token, DeiT's distillation token and DINOv2's registers (they lead the sequence); SigLIP has
none, so ``metric="attn"`` is Eq. 3 there and ``attn_cls`` is refused.

**Attention implementation.** The model keeps the implementation it was loaded with
(``config._attn_implementation``: ``eager``, ``sdpa`` or ``flash_attention_2``, i.e. ``from_pretrained(...,
attn_implementation=...)``); ``model.repshift.attention`` records it under repshift's name (``eager``,
``sdpa``, ``flash_attn``) and the patched attention runs it through transformers' own attention functions.
``repshift.patch(attention=...)`` cannot change it: leave it at its default or give the same implementation.
**Attention maps** (``attn``, ``attn_cls``, ``attn_mean``): only the scoring layers need one; they run the
model file's own ``eager_attention_forward`` (the map is materialised in those layers only, whatever the
implementation), the other layers keep theirs, as the timm adapter's hybrid baseline does.

**Merging** (``mode="merge"``): ToMe as on timm ViTs, through the same block
(:func:`repshift.patch.base.tome_block`) and the same pure functions (:mod:`repshift.merge`): ``r`` per layer
(ToMe's schedule; a step above half the patch tokens at ``config.image_size`` is refused), bipartite soft matching
on the keys of the layer's own ``k_proj`` averaged over heads, class / distillation / register tokens never merged,
sizes in ``state.size``, and with ``proportional=True`` ``log(size)`` added per key through the implementation's
own float attention mask (``eager`` adds it to the logits, ``sdpa`` hands it to SDPA); ``flash_attention_2`` takes
no such mask, so a model loaded with it merges only with ``proportional=False``. A score read from the map
(``attn``, ``attn_entropy``) runs the model file's eager attention in the merging layers and reads the map before
the ``log(size)`` bias, as the timm adapter does (that function returns only the biased map, so the bias is taken
out again: :func:`repshift.merge.unbiased_map`). The heads read the merged tokens as they are (CLIP's and DINOv2's
pooling, SigLIP's attention-pooling head do not weight by size).

Attention masks are refused (vision towers are called without one; pruning would have to gather it), and so is
gradient checkpointing (its backward replays layers against the pruning state the whole forward left behind).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import reduce
from typing import NoReturn, Optional

import torch
from torch import Tensor

import repshift.merge as merge
from repshift.patch.base import (Adapter, PruneState, check_merge, patched_class, prenorm_block, register_adapter,
                                 tome_block)
from repshift.select import drop_count

#: transformers' attention implementation -> repshift's name of the same kernel (``model.repshift.attention``).
IMPLEMENTATIONS = {"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "flash_attn"}
_HF_NAMES = {ours: theirs for theirs, ours in IMPLEMENTATIONS.items()}


@dataclass(frozen=True)
class Tower:
    """Where a tower class keeps its layers, and how many tokens precede the patches."""

    layers: str  # dotted path of the layers' ModuleList inside the tower
    prefix: int  # class (+ distillation) tokens, before any registers
    registers: Optional[str] = None  # config attribute counting register tokens (they follow the class token)


#: The vision towers, by class name.
TOWERS = {
    "ViTModel": Tower("layers", 1),
    "DeiTModel": Tower("layers", 2),  # class and distillation tokens
    "CLIPVisionModel": Tower("encoder.layers", 1),
    "SiglipVisionModel": Tower("encoder.layers", 0),
    "Dinov2Model": Tower("encoder.layer", 1),
    "Dinov2WithRegistersModel": Tower("encoder.layer", 1, registers="num_register_tokens"),
}

#: Models that hold a tower, by class name: the attribute it lives in.
HOLDERS = {
    "ViTForImageClassification": "vit",
    "DeiTForImageClassification": "deit",
    "DeiTForImageClassificationWithTeacher": "deit",
    "CLIPModel": "vision_model",
    "CLIPVisionModelWithProjection": "vision_model",
    "CLIPForImageClassification": "vision_model",
    "SiglipModel": "vision_model",
    "SiglipForImageClassification": "vision_model",
    "Dinov2ForImageClassification": "dinov2",
    "Dinov2WithRegistersForImageClassification": "dinov2_with_registers",
}


@dataclass(frozen=True)
class Layout:
    """Attribute names of one layer class and of its attention module (see the module doc for the layer)."""

    attention: str
    norm1: str
    norm2: str
    output: str  # the attention's output projection
    scaling: str  # the attention's softmax scale
    dropout: str  # the attention's dropout probability
    drop: Optional[str] = None  # residual dropout / drop path on both branches
    layer_scales: Optional[tuple[str, str]] = None


_VIT = Layout("attention", "layernorm_before", "layernorm_after", "o_proj", "scaling", "attention_dropout",
              drop="dropout")
_DINOV2 = Layout("attention", "norm1", "norm2", "o_proj", "scaling", "attention_dropout", drop="drop_path",
                 layer_scales=("layer_scale1", "layer_scale2"))
_CLIP = Layout("self_attn", "layer_norm1", "layer_norm2", "out_proj", "scale", "dropout")

#: Layer class name -> its layout; the attention classes each layer must hold.
LAYOUTS = {
    "ViTLayer": _VIT, "DeiTLayer": _VIT, "Dinov2Layer": _DINOV2, "Dinov2WithRegistersLayer": _DINOV2,
    "CLIPEncoderLayer": _CLIP, "SiglipEncoderLayer": _CLIP,
}
ATTENTIONS = {
    "ViTLayer": "ViTAttention", "DeiTLayer": "DeiTAttention", "Dinov2Layer": "Dinov2Attention",
    "Dinov2WithRegistersLayer": "Dinov2WithRegistersAttention", "CLIPEncoderLayer": "CLIPAttention",
    "SiglipEncoderLayer": "SiglipAttention",
}


def transformers_class(module) -> Optional[str]:
    """The class name of ``module`` if its class is defined inside ``transformers``, else None."""
    cls = type(module)
    return cls.__name__ if cls.__module__.startswith("transformers.") else None


def _attribute(module, path: str):
    return reduce(getattr, path.split("."), module)


def tower_layers(tower) -> list:
    return list(_attribute(tower, TOWERS[transformers_class(tower)].layers))


def prefix_tokens(tower) -> int:
    """Tokens before the patches (class, distillation, registers): protected, never dropped."""
    spec = TOWERS[transformers_class(tower)]
    return spec.prefix + (getattr(tower.config, spec.registers) if spec.registers else 0)


def patch_tokens(tower) -> int:
    """Patch tokens at the tower's configured image size (``config.image_size``)."""
    size, patch = tower.config.image_size, tower.config.patch_size
    height, width = (size, size) if isinstance(size, int) else size
    patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
    return (height // patch_h) * (width // patch_w)


def tokens_after(state: PruneState, patches: int, last: Optional[int] = None) -> int:
    """Droppable tokens left by ``state``'s schedule from ``patches``, counting the layers before ``last``
    (all of them when None), dropped or merged away (``mode="merge"``): a Python int from the schedule alone."""
    steps = {layer: state.step(layer) for layer in state.layers if last is None or layer < last}
    if state.mode == "merge":
        return patches - sum(merge.merge_schedule(patches, steps).values())
    for step in steps.values():
        patches -= drop_count(patches, *step)
    return patches


def attention_interface(attention, backend: str):
    """transformers' attention function for repshift's ``backend`` name; eager is the model file's own."""
    if backend == "eager":
        return attention.repshift_eager
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[_HF_NAMES[backend]]


class RepShiftHFAttention:
    """Methods put in front of a layer's attention class: the implementation recorded in the state, or the
    model file's eager attention when the layer needs the map (``repshift_map=True``). Returns
    ``(output, weights)`` as transformers' attention modules do (weights are None unless eager ran).

    Merging: ``repshift_bias`` ``[B, N]`` (``log(size)``) is added to every query's logit for each key, through the
    implementation's own float attention mask; ``repshift_keys=True`` appends the keys of the layer's own key
    projection averaged over heads, ``[B, N, head_dim]`` (what ToMe matches on)."""

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None, *, repshift_map: bool = False,
                repshift_bias: Optional[Tensor] = None, repshift_keys: bool = False, **kwargs):
        layout: Layout = self.repshift_layout
        backend = "eager" if repshift_map else self.repshift_state.attention
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query, key, value = (proj(hidden_states).view(shape).transpose(1, 2)
                             for proj in (self.q_proj, self.k_proj, self.v_proj))
        if repshift_bias is not None:  # the layer refuses masks, so this is the only one: [B, 1, 1, N]
            attention_mask = repshift_bias[:, None, None, :].to(query.dtype)
        out, weights = attention_interface(self, backend)(
            self, query, key, value, attention_mask, scaling=getattr(self, layout.scaling),
            dropout=getattr(self, layout.dropout) if self.training else 0.0, **kwargs,
        )
        out = getattr(self, layout.output)(out.reshape(*hidden_states.shape[:-1], -1).contiguous())
        return (out, weights, key.mean(dim=1)) if repshift_keys else (out, weights)


class _LayerAttention:
    """A layer's attention as :func:`prenorm_block` calls it: normed tokens in, the branch output out.
    Called through the module, so transformers' output-capture hooks still see every layer."""

    def __init__(self, module, kwargs: dict):
        self.module, self.kwargs = module, kwargs

    def __call__(self, x: Tensor) -> Tensor:
        return self.module(x, None, **self.kwargs)[0]

    def forward_with_map(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.module(x, None, repshift_map=True, **self.kwargs)

    def forward_merge(self, x: Tensor, key_bias: Optional[Tensor], with_map: bool
                      ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """``(output, keys averaged over heads, unbiased softmax map or None)`` as
        :func:`repshift.patch.base.tome_block` calls it; eager returns the biased map, whose bias is taken out."""
        out, weights, keys = self.module(x, None, repshift_map=with_map, repshift_bias=key_bias, repshift_keys=True,
                                         **self.kwargs)
        if with_map and key_bias is not None:
            weights = merge.unbiased_map(weights, key_bias)
        return out, keys, (weights if with_map else None)


def _identity(x: Tensor) -> Tensor:
    return x


class RepShiftHFLayer:
    """Methods put in front of a tower layer's class: record the token count and, when scheduled, score and prune."""

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None, **kwargs) -> Tensor:
        if attention_mask is not None:
            raise NotImplementedError("repshift-patched Hugging Face vision towers do not take an attention mask")
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # The backward pass would replay layers against the pruning state the whole forward left behind.
            raise NotImplementedError("repshift-patched Hugging Face vision towers do not support gradient "
                                      "(activation) checkpointing: call model.activation_checkpointing_disable()")
        state: PruneState = self.repshift_state
        layer: int = self.repshift_layer
        layout: Layout = self.repshift_layout
        if layer == 0:  # a forward of the tower starts: describe its sequence
            state.reset()
            state.begin(hidden_states, protected=range(self.repshift_num_prefix))
        drop = getattr(self, layout.drop) if layout.drop else _identity
        ls1, ls2 = (getattr(self, name) for name in layout.layer_scales) if layout.layer_scales else (_identity,) * 2
        parts = dict(norm1=getattr(self, layout.norm1), attn=_LayerAttention(getattr(self, layout.attention), kwargs),
                     norm2=getattr(self, layout.norm2), mlp=self.mlp, ls1=ls1, ls2=ls2, drop1=drop, drop2=drop)
        if state.mode == "merge":
            return tome_block(state, layer, hidden_states, prefix=self.repshift_num_prefix, **parts)
        return prenorm_block(state, layer, hidden_states, **parts)


def check_tower(tower) -> None:
    """Raise ``TypeError`` unless every layer of ``tower`` is its family's standard layer and attention, laid out as
    the adapter reads them (transformers 5.x; older releases name the parts differently)."""
    try:
        layers = tower_layers(tower)
    except AttributeError:
        _refuse_layout(tower, f"{type(tower).__name__}.{TOWERS[type(tower).__name__].layers}")
    for i, layer in enumerate(layers):
        name = transformers_class(layer)
        attention = getattr(layer, LAYOUTS[name].attention, None) if name in LAYOUTS else None
        if attention is None or transformers_class(attention) != ATTENTIONS[name]:
            raise TypeError(
                f"layer {i} of {type(tower).__name__} is a {type(layer).__name__}; repshift.patch supports the "
                f"standard transformers layers ({', '.join(LAYOUTS)}) with their own attention modules"
            )
        layout = LAYOUTS[name]
        parts = [(layer, part) for part in (layout.norm1, layout.norm2, "mlp", layout.drop, *(layout.layer_scales or ()))]
        parts += [(attention, part) for part in ("q_proj", "k_proj", "v_proj", "head_dim", layout.output,
                                                 layout.scaling, layout.dropout)]
        missing = [f"{type(owner).__name__}.{part}" for owner, part in parts if part and not hasattr(owner, part)]
        if missing:
            _refuse_layout(tower, ", ".join(missing))
    implementation = tower.config._attn_implementation
    if implementation not in IMPLEMENTATIONS:
        raise TypeError(
            f"{type(tower).__name__} was loaded with attn_implementation={implementation!r}; repshift.patch keeps "
            f"one of {tuple(IMPLEMENTATIONS)}: load the model with one of them"
        )


def _refuse_layout(tower, missing: str) -> NoReturn:
    import transformers

    raise TypeError(
        f"{type(tower).__name__} of transformers {transformers.__version__} is not laid out as repshift's adapter reads "
        f"it (written against transformers 5.24; {missing} not found): use a transformers 5.x release"
    )


def install_tower(tower, state: PruneState) -> None:
    """Swap the tower's layer and attention classes; ``state.attention`` becomes the tower's implementation."""
    loaded = IMPLEMENTATIONS[tower.config._attn_implementation]
    if state.attention not in ("sdpa", loaded):  # "sdpa" is repshift.patch's default, so it cannot be told apart
        raise ValueError(
            f"{type(tower).__name__} keeps the attention implementation it was loaded with "
            f"(attn_implementation={tower.config._attn_implementation!r}); attention={state.attention!r} cannot change "
            f"it: load the model with attn_implementation={_HF_NAMES[state.attention]!r}, or leave attention at its "
            "default"
        )
    if state.mode == "merge":
        check_merge(state.family, state, patch_tokens(tower), class_token=TOWERS[type(tower).__name__].prefix > 0)
        if state.proportional and loaded == "flash_attn":
            raise ValueError(
                f"{type(tower).__name__} was loaded with attn_implementation='flash_attention_2', which takes no "
                "per-key bias, and merging with proportional attention adds log(size) to every key's logits: load it "
                "with attn_implementation='sdpa' or 'eager', or merge with proportional=False (FlashAttention kept)"
            )
    state.attention = loaded
    num_prefix = prefix_tokens(tower)
    for index, layer in enumerate(tower_layers(tower)):
        layout = LAYOUTS[type(layer).__name__]
        attention = getattr(layer, layout.attention)
        attention.repshift_eager = sys.modules[type(attention).__module__].eager_attention_forward
        layer.__class__ = patched_class(RepShiftHFLayer, type(layer))
        attention.__class__ = patched_class(RepShiftHFAttention, type(attention))
        layer.repshift_state = attention.repshift_state = state
        layer.repshift_layout = attention.repshift_layout = layout
        layer.repshift_layer = index
        layer.repshift_num_prefix = num_prefix


def uninstall_tower(tower) -> None:
    for layer in tower_layers(tower):
        attention = getattr(layer, layer.repshift_layout.attention)
        layer.__class__ = type(layer).__bases__[1]  # (mixin, original class)
        attention.__class__ = type(attention).__bases__[1]
        del layer.repshift_state, layer.repshift_layout, layer.repshift_layer, layer.repshift_num_prefix
        del attention.repshift_state, attention.repshift_layout, attention.repshift_eager


class HFVisionAdapter(Adapter):
    family = "hf-vision"
    modes = ("sequence", "merge")
    description = ("Hugging Face transformers vision towers " + ", ".join(TOWERS) + " and the models holding one: "
                   + ", ".join(HOLDERS))

    def tower(self, model):
        name = transformers_class(model)
        return model if name in TOWERS else getattr(model, HOLDERS[name])

    def supports(self, model) -> bool:
        name = transformers_class(model)
        return name in TOWERS or name in HOLDERS

    def check(self, model) -> None:
        check_tower(self.tower(model))

    def depth(self, model) -> int:
        return len(tower_layers(self.tower(model)))

    def droppable(self, model) -> int:
        return patch_tokens(self.tower(model))

    def resolve_metric(self, model, metric: str) -> str:
        tower = self.tower(model)
        has_class_token = TOWERS[type(tower).__name__].prefix > 0
        if metric == "attn":  # Eq. 2 needs a class token; without one the paper uses Eq. 3
            return "attn_cls" if has_class_token else "attn_mean"
        if metric == "attn_cls" and not has_class_token:
            raise ValueError(f"{type(tower).__name__} has no class token, so attn_cls (Eq. 2) has no query to read: "
                             "use metric='attn' or 'attn_mean' (Eq. 3)")
        if metric == "top_vim":
            raise ValueError("metric='top_vim' is ToP-ViM's score, read from a Vision Mamba; it has no meaning here")
        return metric

    def install(self, model, state: PruneState) -> None:
        install_tower(self.tower(model), state)

    def uninstall(self, model) -> None:
        uninstall_tower(self.tower(model))


register_adapter(HFVisionAdapter())
