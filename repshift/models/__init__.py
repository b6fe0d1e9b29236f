"""Building models by timm name, or from a model config by its ``_target_``, and loading their weights.

``build_model(config)`` takes a whole model config (``repshift/configs/model/<name>.yaml``) and calls the
function its ``_target_`` names with the rest of the node: :func:`build_timm` (a timm model by ``name``),
:func:`repshift.models.umt.build`, :func:`repshift.models.umt_qa.build` or
:func:`repshift.models.efficientnet.build` (efficientnet_pytorch weights). The keys that only tell the runner
about the model (:data:`RUNNER_KEYS`: ``input_size``, ``unit``, ``family``) are set aside first.

Weights come from timm's hub/cache (``pretrained=True``), from a local file (``checkpoint``:
the official DeiT ``.pth``, a timm/safetensors file, or a checkpoint written by
``repshift.train``), or nowhere (random initialisation, which every result file records).
Every local file goes through :func:`repshift.checkpoints.load_checkpoint`: no code in it runs
unless the user passes ``unsafe_full_unpickle=True`` (a real boolean; anything else is refused). A model
module that knows an official format (key names of the original code base) converts it in its
``checkpoint_filter_fn``, the hook timm's own model modules use. timm's filters also resample position
and patch embeddings to the model's size; that changes the weights, so it happens only with
``resample_embeddings=True`` and the weights record says which tensors were resampled.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch

from repshift.checkpoints import UNSAFE_OPTION, check_switch, extract_state_dict, load_checkpoint
from repshift.targets import TARGET_KEY, target_of

from repshift.models import convstem_vit  # noqa: F401  (registers vit_convstem_tiny with timm)
from repshift.models import vim  # noqa: F401  (registers vim_t_midclstok with timm)

#: Model-config keys read by the runner (bench, GMACs, the merge-host check), not by a builder.
RUNNER_KEYS = ("input_size", "unit", "family")
#: Model-config keys of :func:`build_timm`.
TIMM_KEYS = ("name", "pretrained", "checkpoint", "kwargs", "unsafe_full_unpickle", "resample_embeddings")
RESAMPLE_OPTION = "model.resample_embeddings=true"


def build_model(
    name: Union[str, Mapping[str, Any]],
    *,
    pretrained: bool = False,
    checkpoint: Optional[str] = None,
    kwargs: Optional[dict] = None,
    unsafe_full_unpickle: bool = False,
    resample_embeddings: bool = False,
) -> tuple[torch.nn.Module, dict]:
    """``(model, weights)`` where ``weights = {"real": bool, "source": str}`` (plus ``resampled`` after a file).

    ``name`` is a timm model name (the other arguments apply), or a whole model config (a mapping,
    e.g. ``OmegaConf.to_container(cfg.model)``), which says everything itself and is built by the function
    its ``_target_`` names (one under ``repshift.models.``).
    """
    if isinstance(name, Mapping):
        builder = target_of(name, section="repshift.models.", what="model")
        return builder({k: v for k, v in name.items() if k != TARGET_KEY and k not in RUNNER_KEYS})
    return build_timm(dict(name=name, pretrained=pretrained, checkpoint=checkpoint, kwargs=kwargs,
                           unsafe_full_unpickle=unsafe_full_unpickle, resample_embeddings=resample_embeddings))


def build_timm(config: Mapping[str, Any]) -> tuple[torch.nn.Module, dict]:
    """A timm model from a model config (``_target_: repshift.models.build_timm``; keys :data:`TIMM_KEYS`)."""
    unknown = sorted(set(config) - set(TIMM_KEYS))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown} for a timm model; known: {list(TIMM_KEYS)}")
    if not config.get("name"):
        raise ValueError("the model config has no name (the timm model to build)")
    name, kwargs = config["name"], dict(config.get("kwargs") or {})
    unsafe = check_switch(config.get("unsafe_full_unpickle", False), "model.unsafe_full_unpickle")
    resample = check_switch(config.get("resample_embeddings", False), "model.resample_embeddings")
    pretrained = check_switch(config.get("pretrained", False), "model.pretrained")
    if config.get("checkpoint"):
        path = Path(config["checkpoint"]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.checkpoint={config['checkpoint']} does not exist (give the path of a "
                                    "weights file)")
        model = timm.create_model(name, pretrained=False, **kwargs)
        return model, load_weights(model, path, unsafe_full_unpickle=unsafe, resample_embeddings=resample)
    if pretrained:
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as error:  # hub errors come in many types; all mean "no weights here"
            raise RuntimeError(
                f"could not load pretrained weights for model.name={name} from the Hugging Face hub or its cache "
                f"({type(error).__name__}: {error}). Put them in the cache (HF_HOME), pass "
                "model.checkpoint=/path/to/weights, or set model.pretrained=false for random weights."
            ) from error
        return model, {"real": True, "source": f"timm:{model.pretrained_cfg.get('hf_hub_id') or name}"}
    return timm.create_model(name, pretrained=False, **kwargs), {"real": False, "source": "random-init"}


def load_weights(model: torch.nn.Module, path: Path, *, unsafe_full_unpickle: bool = False,
                 resample_embeddings: bool = False) -> dict:
    """Load a weights file strictly, converting official-format checkpoints when needed; returns the weights
    record ``{"real": True, "source": "file:<path>", "resampled": {key: {"from": shape, "to": shape}} or None}``.

    A tensor that the model's ``checkpoint_filter_fn`` (timm's, for ViTs) had to resample to another size (a
    file trained with another patch size or image size) is refused unless ``resample_embeddings`` is true.
    """
    check_switch(resample_embeddings, "model.resample_embeddings")
    path = Path(path)
    weights = {"real": True, "source": f"file:{path.resolve()}", "resampled": None}
    try:
        state = extract_state_dict(load_checkpoint(path, unsafe_full_unpickle=unsafe_full_unpickle), source=str(path))
    except (ValueError, RuntimeError) as error:  # the message names the file; UnsafeCheckpointError the switch
        raise type(error)(f"model.checkpoint={path}: {error}") from None
    try:
        model.load_state_dict(state)
        return weights
    except RuntimeError as strict_error:
        filter_fn = getattr(__import__(type(model).__module__, fromlist=["_"]), "checkpoint_filter_fn", None)
        if filter_fn is None:
            raise RuntimeError(f"model.checkpoint={path} does not fit {type(model).__name__}: {strict_error}") from None
    converted = filter_fn(state, model)
    resampled = {key: {"from": list(state[key].shape), "to": list(tensor.shape)} for key, tensor in converted.items()
                 if key in state and state[key].numel() != tensor.numel()}
    if resampled and not resample_embeddings:
        shapes = "; ".join(f"{key} {tuple(s['from'])} in the file, {tuple(s['to'])} in the model"
                           for key, s in resampled.items())
        raise ValueError(
            f"model.checkpoint={path} was trained at another size ({shapes}): loading it means resampling these "
            f"tensors, which changes the weights. Pass {RESAMPLE_OPTION} to allow it (the result records it), or "
            "build the model the file was trained as (patch size, img_size in model.kwargs)."
        )
    try:
        model.load_state_dict(converted)
    except RuntimeError as error:
        raise RuntimeError(f"model.checkpoint={path} does not fit {type(model).__name__}: {error}") from None
    weights["resampled"] = resampled or None
    return weights


__all__ = ["build_model", "build_timm", "load_weights", "UNSAFE_OPTION", "RESAMPLE_OPTION", "RUNNER_KEYS"]
