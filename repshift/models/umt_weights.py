"""UMT's official checkpoints read into the suite's UMT models (retrieval, QA, and their vision encoders).

One key map for both model kinds: ``vision_encoder.encoder.X`` -> ``X`` of :class:`~repshift.models.umt.UMTVision`,
``vision_encoder.pool_norm.X`` -> ``pool_norm.X``, ``vision_proj.X`` -> ``vision_proj.X``; the text side
(``text_encoder.*``, ``text_proj.*``, ``itm_head.*``, ``text_decoder.*``) keeps its official names. Every loader
checks each shape before copying (an error names the key and both shapes) and returns ``(missing, unexpected)``;
:func:`build_part`, the config entry of both UMT builders, refuses a partial load, which would evaluate
silently wrong. UMT's position table is analytic (not in the files), so nothing is ever resampled.

Files are read by :func:`repshift.checkpoints.load_checkpoint` (no code runs from them unless the user opts in).
This module knows the models by their state-dict keys and attributes only (it imports neither architecture,
so both can import it); :mod:`repshift.models.umt` and :mod:`repshift.models.umt_qa` hold the architectures.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from repshift.checkpoints import check_switch, extract_state_dict, load_checkpoint

log = logging.getLogger("repshift.models.umt_weights")

#: Official checkpoint prefixes -> prefixes in ``UMTVision``'s own state_dict.
VISION_PREFIXES = (
    ("vision_encoder.encoder.", ""),
    ("vision_encoder.pool_norm.", "pool_norm."),
    ("vision_proj.", "vision_proj."),
)
#: Checkpoint entries that UMT's retrieval evaluation does not use: the CLIP teacher and the
#: pre-training decoders kept in released files, the contrastive temperature, BERT's position-id
#: buffer and MLM head (pre-trained files), a QA decoder.
UNUSED_PREFIXES = (
    "clip_teacher.",
    "vision_encoder.clip_decoder.",
    "text_encoder.cls.",
    "text_decoder.",
)
UNUSED_KEYS = ("temp", "text_encoder.embeddings.position_ids")
#: Text-side entries, unused when only the vision encoder is loaded.
TEXT_PREFIXES = ("text_encoder.", "text_proj.", "itm_head.")

#: Parameters of the QA model that are the same tensor as another: ``alias -> source`` (own key names).
TIED = {
    "text_decoder.cls.predictions.decoder.weight": "text_decoder.bert.embeddings.word_embeddings.weight",
    "text_decoder.cls.predictions.decoder.bias": "text_decoder.cls.predictions.bias",
}
#: Checkpoint entries a QA evaluation does not use: the CLIP teacher and pre-training decoders kept in released
#: files, the contrastive temperature, BERT's position-id buffers (transformers rebuilds them).
QA_UNUSED_PREFIXES = ("clip_teacher.", "vision_encoder.clip_decoder.")
QA_UNUSED_KEYS = ("temp", "text_encoder.embeddings.position_ids", "text_decoder.bert.embeddings.position_ids")
#: Retrieval heads a *pre-trained* file holds and UMT's QA model deletes (``vision_proj``, ``text_proj``, ``temp``,
#: ``itm_head``; its ViT has no ``pool_norm``). A fine-tuned QA file has none of them.
PRETRAINED_ONLY_PREFIXES = ("vision_encoder.pool_norm.", "vision_proj.", "text_proj.", "itm_head.")
_WORD_EMBEDDINGS = "text_encoder.embeddings.word_embeddings.weight"

Loaded = tuple[list[str], list[str]]  # (model keys the file lacks, file keys that fit nowhere)


# ------------------------------------------------------------------------------------------ key mapping


def state_dict_of(checkpoint, unsafe_full_unpickle: bool = False) -> tuple[dict[str, Tensor], str]:
    """``(state dict, source name)`` of a path (read safely) or of an already loaded checkpoint dict."""
    if isinstance(checkpoint, (str, os.PathLike)):
        source = str(checkpoint)
        checkpoint = load_checkpoint(checkpoint, unsafe_full_unpickle=unsafe_full_unpickle)
    else:
        source = "the checkpoint dict"
    return extract_state_dict(checkpoint, source=source), source


def vision_key(key: str) -> Optional[str]:
    """The ``UMTVision`` key of an official vision key, or None for a key outside the vision encoder."""
    for official, own in VISION_PREFIXES:
        if key.startswith(official):
            return own + key[len(official):]
    return None


def _is_unused(key: str) -> bool:
    return key in UNUSED_KEYS or key.startswith(UNUSED_PREFIXES)


def load_mapped(model: nn.Module, mapped: dict[str, tuple[str, Tensor]], unexpected: list[str], source: str) -> Loaded:
    """Copy ``mapped`` (own key -> (official key, tensor)) into ``model`` after checking every shape."""
    own = model.state_dict()
    for key, (official, tensor) in mapped.items():
        if key not in own:
            unexpected.append(official)
        elif own[key].shape != tensor.shape:
            raise ValueError(
                f"{source}: {official} has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(own[key].shape)} (for {key} of {type(model).__name__}); is it the same UMT size (B/L)?"
            )
    values = {key: tensor for key, (_, tensor) in mapped.items() if key in own}
    result = model.load_state_dict(values, strict=False)
    missing = sorted(result.missing_keys)
    if missing or unexpected:
        log.warning("%s: %d model keys missing, %d checkpoint keys unexpected", source, len(missing), len(unexpected))
    return missing, sorted(unexpected)


# ------------------------------------------------------------------------------------------ retrieval


def load_official(model: nn.Module, checkpoint, *, unsafe_full_unpickle: bool = False) -> Loaded:
    """Load the vision part of an official UMT retrieval checkpoint into ``model`` (a ``UMTVision``).

    A retrieval ``model`` (one with a ``text_encoder``) gets the whole checkpoint (:func:`load_official_retrieval`).

    ``checkpoint``: a path (read by :func:`repshift.checkpoints.load_checkpoint`, no full unpickle
    unless asked) or an already loaded ``{"model": state_dict}`` / state_dict. The keys
    ``vision_encoder.encoder.*``, ``vision_encoder.pool_norm.*`` and ``vision_proj.*`` are mapped
    one to one; a shape that differs raises ``ValueError`` naming the key and both shapes.
    Returns ``(missing, unexpected)``: model keys the checkpoint lacks, and checkpoint keys that fit
    nowhere, leaving out the known unused ones (text side, CLIP teacher/decoders, ``temp``).
    """
    if hasattr(model, "text_encoder"):
        return load_official_retrieval(model, checkpoint, unsafe_full_unpickle=unsafe_full_unpickle)
    return _load_vision(model, checkpoint, unsafe_full_unpickle,
                        ignored=lambda key: _is_unused(key) or key.startswith(TEXT_PREFIXES))


def load_official_retrieval(model: nn.Module, checkpoint, *, unsafe_full_unpickle: bool = False) -> Loaded:
    """Load a whole official UMT retrieval checkpoint (vision + text) into a :class:`~repshift.models.umt.UMTRetrieval`.

    As :func:`load_official`, plus ``text_encoder.*``, ``text_proj.*`` and ``itm_head.*``; a
    pre-trained file's ``text_encoder.bert.X`` is read as ``text_encoder.X`` (what UMT does for
    zero-shot evaluation). Returns ``(missing, unexpected)`` over the whole model.
    """
    state, source = state_dict_of(checkpoint, unsafe_full_unpickle)
    mapped, unexpected = {}, []
    for key, tensor in state.items():
        own = vision_key(key)
        if own is not None:
            mapped["vision." + own] = (key, tensor)
            continue
        if key.startswith("text_encoder.bert."):
            own = "text_encoder." + key[len("text_encoder.bert."):]
        else:
            own = key
        if _is_unused(own):
            continue
        if own.startswith(TEXT_PREFIXES):
            mapped[own] = (key, tensor)
        else:
            unexpected.append(key)
    return load_mapped(model, mapped, unexpected, source)


# ------------------------------------------------------------------------------------------ QA


def remap_pretrained(state: Mapping[str, Tensor], fusion_layer: int) -> dict[str, Tensor]:
    """A pre-trained UMT file's keys as UMT's QA fine-tuning reads them (``tasks/shared_utils.py::setup_model``).

    ``text_encoder.bert.X`` becomes ``text_encoder.X`` (every layer), and the decoder is initialised from the
    same weights: the embeddings, the layers from ``fusion_layer`` on renumbered from 0
    (``text_encoder.bert.encoder.layer.{fusion_layer + i}`` -> ``text_decoder.bert.encoder.layer.{i}``), and the
    masked-LM head ``text_encoder.cls.*`` -> ``text_decoder.cls.*``. Other keys are kept as they are.
    """
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key.startswith("text_encoder.bert."):
            rest = key[len("text_encoder.bert."):]
            out["text_encoder." + rest] = tensor
            if rest.startswith("encoder.layer."):
                number, tail = rest[len("encoder.layer."):].split(".", 1)
                if int(number) >= fusion_layer:
                    out[f"text_decoder.bert.encoder.layer.{int(number) - fusion_layer}.{tail}"] = tensor
            else:
                out["text_decoder.bert." + rest] = tensor
        elif key.startswith("text_encoder.cls."):
            out["text_decoder." + key[len("text_encoder."):]] = tensor
        else:
            out[key] = tensor
    return out


def _check_text_width(state: Mapping[str, Tensor], model: nn.Module, source: str) -> None:
    width = model.text_encoder.config.hidden_size
    found = state.get(_WORD_EMBEDDINGS)
    if found is not None and found.ndim == 2 and found.shape[1] != width:
        names = {768: "BERT-base (UMT-B)", 1024: "BERT-large (UMT-L)"}
        raise ValueError(
            f"{source}: {_WORD_EMBEDDINGS} is {found.shape[1]} wide, {names.get(found.shape[1], 'another BERT')}, but "
            f"the model's text encoder is {width} wide, {names.get(width, 'a custom size')}: build the size that "
            "matches the file (model=umt_b_qa or umt_l_qa). UMT's own qa_msrvtt/b16_25m.py config builds an "
            "L/16 + BERT-large model, so check which size a 'b16' QA file really holds."
        )


def load_official_qa(model: nn.Module, checkpoint, *, unsafe_full_unpickle: bool = False) -> Loaded:
    """Load an official UMT QA checkpoint (or a pre-trained one, remapped) into a :class:`~repshift.models.umt_qa.UMTQA`.

    ``checkpoint``: a path (read by :func:`repshift.checkpoints.load_checkpoint`, no full unpickle unless asked)
    or an already loaded ``{"model": state_dict}`` / state_dict. A fine-tuned QA file's keys map one to one
    (``vision_encoder.encoder.X`` -> ``vision.X``; ``text_encoder.*``, ``text_decoder.*`` as they are); a file
    with ``text_encoder.bert.*`` keys and no decoder is a pre-trained one and is read through
    :func:`remap_pretrained`, its retrieval heads ignored. A text width that is not the model's, or any other
    shape that differs, raises ``ValueError`` naming the key. The tied decoder matrix and bias may be given
    under either name; two different tensors under the two names are an error (this model cannot hold both).
    Returns ``(missing, unexpected)``: model keys the file lacks, and file keys that fit nowhere (leaving out
    the known unused ones: CLIP teacher and decoders, ``temp``, position-id buffers).
    """
    state, source = state_dict_of(checkpoint, unsafe_full_unpickle)
    pretrained = any(k.startswith("text_encoder.bert.") for k in state) and not any(
        k.startswith("text_decoder.") for k in state)
    if pretrained:
        state = remap_pretrained(state, model.text_encoder.fusion_layer)
    _check_text_width(state, model, source)
    mapped: dict[str, tuple[str, Tensor]] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        if key in QA_UNUSED_KEYS or key.startswith(QA_UNUSED_PREFIXES):
            continue
        if pretrained and key.startswith(PRETRAINED_ONLY_PREFIXES):
            continue
        own = vision_key(key)
        if own is not None:
            mapped["vision." + own] = (key, tensor)
        elif key.startswith(("text_encoder.", "text_decoder.")):
            mapped[key] = (key, tensor)
        else:
            unexpected.append(key)
    for alias, origin in TIED.items():
        if alias not in mapped:
            continue
        if origin in mapped:
            if not torch.equal(mapped[alias][1], mapped[origin][1]):
                raise ValueError(f"{source}: {alias} differs from {origin}; UMT ties them and so does this model")
            del mapped[alias]
        else:  # only the alias in the file: load the shared tensor through its own name
            mapped[origin] = mapped.pop(alias)
    missing, unexpected = load_mapped(model, mapped, unexpected, source)
    return [key for key in missing if key not in TIED], unexpected


def load_qa_vision(model: nn.Module, checkpoint, *, unsafe_full_unpickle: bool = False) -> Loaded:
    """The encoder of a QA file: ``vision_encoder.encoder.*``; the text side is expected and ignored."""
    return _load_vision(model, checkpoint, unsafe_full_unpickle, ignored=lambda key: key in QA_UNUSED_KEYS or (
        key.startswith(QA_UNUSED_PREFIXES + ("text_encoder.", "text_decoder."))))


def _load_vision(model: nn.Module, checkpoint, unsafe_full_unpickle: bool, ignored: Callable[[str], bool]) -> Loaded:
    """Load the vision keys of a checkpoint into ``model``; a key that is neither a vision key nor ``ignored`` is
    unexpected."""
    state, source = state_dict_of(checkpoint, unsafe_full_unpickle)
    mapped, unexpected = {}, []
    for key, tensor in state.items():
        own = vision_key(key)
        if own is not None:
            mapped[own] = (key, tensor)
        elif not ignored(key):
            unexpected.append(key)
    return load_mapped(model, mapped, unexpected, source)


# ------------------------------------------------------------------------------------------ config entry

#: Keys a UMT model config (``repshift/configs/model/umt_*.yaml``) may hold, once ``build_model`` has set aside
#: ``_target_`` and the runner's keys. ``resample_embeddings`` is accepted and never needed: nothing is resampled.
CONFIG_KEYS = frozenset(
    ("name", "size", "num_frames", "part", "pretrained", "checkpoint", "unsafe_full_unpickle", "resample_embeddings",
     "tokenizer", "vision", "text")
)

#: One buildable part of a UMT model: ``make(size, num_frames, vision_overrides, config) -> model`` and the
#: loader of an official checkpoint into it (returning ``(missing, unexpected)``).
Part = tuple[Callable[[str, int, dict, Mapping[str, Any]], nn.Module], Callable[..., Loaded]]


def build_part(config: Mapping[str, Any], parts: Mapping[str, Part], *, default_part: str,
               what: str) -> tuple[nn.Module, dict]:
    """``(model, weights)`` of ``parts[config.part]``, as ``repshift.models.build_model`` returns them.

    Shared by the UMT builders (:func:`repshift.models.umt.build`, :func:`repshift.models.umt_qa.build`). With
    ``checkpoint`` set, a checkpoint key the model does not use, or a model key the checkpoint lacks, is an
    error: a partly loaded model would evaluate silently wrong.
    """
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise ValueError(f"unknown {what} model config keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    unsafe = check_switch(config.get("unsafe_full_unpickle", False), "model.unsafe_full_unpickle")
    check_switch(config.get("resample_embeddings", False), "model.resample_embeddings")
    if config.get("pretrained"):
        raise ValueError(
            "UMT has no weights on a hub: set model.pretrained=false and pass an official file "
            "with model.checkpoint=..."
        )
    size = config.get("size", "b")
    part = config.get("part", default_part)
    if part not in parts:
        raise ValueError(f"model.part must be one of {sorted(parts)} for a {what} model, got {part!r}")
    make, loader = parts[part]
    model = make(size, int(config.get("num_frames", 12)), dict(config.get("vision") or {}), config)
    checkpoint = config.get("checkpoint")
    if not checkpoint:
        return model, {"real": False, "source": "random-init"}
    missing, unexpected = loader(model, checkpoint, unsafe_full_unpickle=unsafe)
    if missing or unexpected:
        raise RuntimeError(
            f"model.checkpoint={checkpoint} does not fit {what} size {size.upper()} (part {part}): "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    return model, {"real": True, "source": f"file:{os.path.abspath(checkpoint)}", "resampled": None}
