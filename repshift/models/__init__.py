"""Building models by timm name and loading their weights.

Weights come from timm's hub/cache (``pretrained=True``), from a local file (``checkpoint``:
the official DeiT ``.pth``, a timm/safetensors file, or a checkpoint written by
``repshift.train``), or nowhere (random initialisation, which every result file records).
Every local file goes through :func:`repshift.checkpoints.load_checkpoint`: no code in it runs
unless the user passes ``unsafe_full_unpickle=True``. A model module that knows an official
format (key names of the original code base) converts it in its ``checkpoint_filter_fn``, the
hook timm's own model modules use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import timm
import torch

from repshift.checkpoints import UNSAFE_OPTION, extract_state_dict, load_checkpoint

from repshift.models import convstem_vit  # noqa: F401  (registers vit_convstem_tiny with timm)
from repshift.models import vim  # noqa: F401  (registers vim_t_midclstok with timm)


def build_model(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: Optional[str] = None,
    kwargs: Optional[dict] = None,
    unsafe_full_unpickle: bool = False,
) -> tuple[torch.nn.Module, dict]:
    """``(model, weights)`` where ``weights = {"real": bool, "source": str}``."""
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
