"""Reading weight files that users hand the suite, without running code hidden in them.

``torch.load`` on a pickle can execute arbitrary code, and checkpoints of UMT and Vim are passed
around as shared-drive links. So every family loads through :func:`load_checkpoint`:

- ``.safetensors`` files are read with safetensors (no pickle at all);
- everything else with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain
  containers, plus the few extra classes that official formats store beside the weights
  (:data:`SAFE_GLOBALS`: Vim's checkpoints keep the training ``argparse.Namespace``);
- a full unpickle only when the caller passes ``unsafe_full_unpickle=True`` (Hydra:
  ``model.unsafe_full_unpickle=true``), which logs a warning saying what it allows.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch

log = logging.getLogger("repshift.checkpoints")

#: Classes an official checkpoint may pickle beside its tensors; nothing here runs code on load.
SAFE_GLOBALS = (argparse.Namespace,)

#: Container keys under which official checkpoints keep their state dict, tried in this order.
STATE_DICT_KEYS = ("model", "state_dict", "module", "model_ema")

UNSAFE_OPTION = "model.unsafe_full_unpickle=true"


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint needs a full unpickle, which may run code, and the user did not opt in."""


def load_checkpoint(path: str | os.PathLike, *, unsafe_full_unpickle: bool = False) -> Any:
    """The object stored in a weights file, loaded onto the CPU without executing code from it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (give the path of a weights file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types for bad headers
            raise ValueError(f"checkpoint {path} is not a valid safetensors file: {error}") from error
    if unsafe_full_unpickle:
        log.warning("fully unpickling %s (%s): this runs any code the file contains; "
                    "use it only for files you trust", path, UNSAFE_OPTION)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"checkpoint {path} stores Python objects that only a full unpickle can rebuild, and a full "
            f"unpickle can run code hidden in the file. Loading stopped ({_first_line(error)}). If you trust "
            f"the file, pass {UNSAFE_OPTION} (repshift.checkpoints.load_checkpoint(..., "
            "unsafe_full_unpickle=True)); better, re-save its state_dict as safetensors."
        ) from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"checkpoint {path} could not be read as a PyTorch file: {_first_line(error)}") from None


def extract_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint: ``obj`` itself or ``obj[key]`` for a known key.

    A ``module.`` prefix left by DistributedDataParallel is removed.
    """
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{source} holds no state dict: expected a mapping of tensors, or one under a key in {STATE_DICT_KEYS}"
        )
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
