"""Building models by timm name (or by family, from a model config) and loading their weights.

``build_model(config)`` takes a whole model config (``repshift/configs/model/<name>.yaml``): its ``family``
picks the builder (``umt`` -> :func:`repshift.models.umt.build`, ``umt_qa`` -> :func:`repshift.models.umt_qa.build`,
``efficientnet`` -> :func:`repshift.models.efficientnet.build` (efficientnet_pytorch weights); none -> timm by ``name``), and the
keys that only tell the runner how to feed the model (``input_size``, ``unit``) are set aside.

Weights come from timm's hub/cache (``pretrained=True``), from a local file (``checkpoint``:
the official DeiT ``.pth``, a timm/safetensors file, or a checkpoint written by
``repshift.train``), or nowhere (random initialisation, which every result file records).
Every local file goes through :func:`repshift.checkpoints.load_checkpoint`: no code in it runs
unless the user passes ``unsafe_full_unpickle=True``. A model module that knows an official
format (key names of the original code base) converts it in its ``checkpoint_filter_fn``, the
hook timm's own model modules use.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch

from repshift.checkpoints import UNSAFE_OPTION, extract_state_dict, load_checkpoint

from repshift.models import convstem_vit  # noqa: F401  (registers vit_convstem_tiny with timm)
from repshift.models import vim  # noqa: F401  (registers vim_t_midclstok with timm)


#: ``model.family`` -> the module whose ``build(config)`` builds that family from its model config.
FAMILY_BUILDERS = {"umt": "repshift.models.umt", "umt_qa": "repshift.models.umt_qa",
                   "efficientnet": "repshift.models.efficientnet"}
#: Model-config keys read by the runner (which builder, bench, GMACs), not by a builder.
RUNNER_KEYS = ("_target_", "input_size", "unit")
#: Model-config keys of the timm builder (a config without ``family``).
TIMM_KEYS = ("name", "pretrained", "checkpoint", "kwargs", "unsafe_full_unpickle")


def build_model(
    name: Union[str, Mapping[str, Any]],
    *,
    pretrained: bool = False,
    checkpoint: Optional[str] = None,
    kwargs: Optional[dict] = None,
    unsafe_full_unpickle: bool = False,
) -> tuple[torch.nn.Module, dict]:
    """``(model, weights)`` where ``weights = {"real": bool, "source": str}``.

    ``name`` is a timm model name (the other arguments apply), or a whole model config (a mapping,
    e.g. ``OmegaConf.to_container(cfg.model)``), which then says everything itself.
    """
    if isinstance(name, Mapping):
        return _build_from_config(name)
    kwargs = dict(kwargs or {})
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.checkpoint={checkpoint} does not exist (give the path of a weights file)")
        model = timm.create_model(name, pretrained=False, **kwargs)
        load_weights(model, path, unsafe_full_unpickle=unsafe_full_unpickle)
        return model, {"real": True, "source": f"file:{path.resolve()}"}
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


def _build_from_config(config: Mapping[str, Any]) -> tuple[torch.nn.Module, dict]:
    config = {key: value for key, value in config.items() if key not in RUNNER_KEYS}
    family = config.pop("family", None)
    if family in FAMILY_BUILDERS:
        # imported here: the UMT modules import transformers, which only a UMT run should pay for
        return importlib.import_module(FAMILY_BUILDERS[family]).build(config)
    if family is not None:
        raise ValueError(f"model.family={family!r} is unknown; expected {', '.join(FAMILY_BUILDERS)}, "
                         "or no family for a timm model name")
    unknown = sorted(set(config) - set(TIMM_KEYS))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown} for a timm model; known: {list(TIMM_KEYS)}")
    if "name" not in config:
        raise ValueError("the model config has no name (the timm model to build)")
    return build_model(
        config["name"],
        pretrained=bool(config.get("pretrained", False)),
        checkpoint=config.get("checkpoint"),
        kwargs=config.get("kwargs"),
        unsafe_full_unpickle=bool(config.get("unsafe_full_unpickle", False)),
    )


def load_weights(model: torch.nn.Module, path: Path, *, unsafe_full_unpickle: bool = False) -> None:
    """Load a weights file strictly, converting official-format checkpoints when needed."""
    try:
        state = extract_state_dict(load_checkpoint(path, unsafe_full_unpickle=unsafe_full_unpickle), source=str(path))
    except (ValueError, RuntimeError) as error:  # UnsafeCheckpointError names UNSAFE_OPTION itself
        raise type(error)(f"model.checkpoint={path}: {error}") from None
    try:
        model.load_state_dict(state)
        return
    except RuntimeError as strict_error:
        filter_fn = getattr(__import__(type(model).__module__, fromlist=["_"]), "checkpoint_filter_fn", None)
        if filter_fn is None:
            raise RuntimeError(f"model.checkpoint={path} does not fit {type(model).__name__}: {strict_error}") from None
    try:
        model.load_state_dict(filter_fn(state, model))
    except RuntimeError as error:
        raise RuntimeError(f"model.checkpoint={path} does not fit {type(model).__name__}: {error}") from None


__all__ = ["build_model", "load_weights", "UNSAFE_OPTION"]
