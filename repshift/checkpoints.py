"""Reading weight files that users hand the suite, without running code hidden in them.

``torch.load`` on a pickle can execute arbitrary code, and checkpoints of UMT and Vim are passed
around as shared-drive links. So every family loads through :func:`load_checkpoint`:

- ``.safetensors`` files are read with safetensors (no pickle at all);
- everything else with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain
  containers, plus the few extra classes that official formats store beside the weights
  (:data:`SAFE_GLOBALS`: Vim's checkpoints keep the training ``argparse.Namespace``);
- a full unpickle only when the caller passes ``unsafe_full_unpickle=True`` (Hydra:
  ``model.unsafe_full_unpickle=true``), which logs a warning saying what it allows. The switch is a
  real boolean: ``"no"``, ``"off"``, ``"false"``, ``1`` and the like are refused (:func:`check_switch`).

A file that torch cannot read (random bytes, a text file, a truncated download) is an
:class:`UnreadableCheckpointError` naming it. Only a file that really is a pickle referring to
classes outside torch's allowlist is an :class:`UnsafeCheckpointError`, the one error that mentions
the unsafe switch: the opcodes of the file's pickle are read (never executed) to list those classes.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

log = logging.getLogger("repshift.checkpoints")

#: Classes an official checkpoint may pickle beside its tensors; nothing here runs code on load.
SAFE_GLOBALS = (argparse.Namespace,)

#: Container keys under which official checkpoints keep their state dict, tried in this order.
STATE_DICT_KEYS = ("model", "state_dict", "module", "model_ema")

UNSAFE_OPTION = "model.unsafe_full_unpickle=true"

#: How torch's weights-only unpickler names a class it refused ("Unsupported global: GLOBAL a.b ...",
#: "Trying to load unsupported GLOBAL a.b ...").
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
#: A legacy (pre-zip) torch file is a run of pickles: magic number, protocol, system info, the object.
_LEGACY_PICKLES = 4


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint pickles classes outside the allowlist (a full unpickle may run code), and the user did not opt in."""


class UnreadableCheckpointError(ValueError):
    """A weights file that is not a PyTorch or safetensors checkpoint, or a damaged one; the message names it."""


def check_switch(value: Any, key: str) -> bool:
    """``value`` when it is a real boolean; anything else (``"no"``, ``"off"``, ``"false"``, ``0``, ``None``) is
    refused with an error naming ``key``, so a safety switch can only be opened by ``True``."""
    if value is True or value is False:
        return value
    raise ValueError(f"{key}={value!r} is not a boolean: give true or false (a YAML/Hydra boolean, unquoted). "
                     "The switch opens only on true; strings such as 'no', 'off' or 'false' are refused.")


def load_checkpoint(path: str | os.PathLike, *, unsafe_full_unpickle: bool = False) -> Any:
    """The object stored in a weights file, loaded onto the CPU without executing code from it."""
    check_switch(unsafe_full_unpickle, "model.unsafe_full_unpickle")
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory, not a weights file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"checkpoint {path} {what} (give the path of a weights file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types for bad headers
            raise UnreadableCheckpointError(f"checkpoint {path} is not a valid safetensors file: "
                                            f"{_first_line(error)}") from None
    if unsafe_full_unpickle is True:
        log.warning("fully unpickling %s (%s): this runs any code the file contains; "
                    "use it only for files you trust", path, UNSAFE_OPTION)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # a damaged file fails in torch's reader with many error types
            raise _unreadable(path, error) from None
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        foreign = foreign_globals(path) if _REFUSED_GLOBAL.search(str(error)) else None
        if not foreign:
            raise _unreadable(path, error) from None
        raise UnsafeCheckpointError(
            f"checkpoint {path} pickles classes outside the allowlist ({', '.join(foreign[:8])}"
            f"{' ...' if len(foreign) > 8 else ''}); rebuilding them takes a full unpickle, which can run code "
            f"hidden in the file, so loading stopped. If you trust the file, pass {UNSAFE_OPTION} "
            "(repshift.checkpoints.load_checkpoint(..., unsafe_full_unpickle=True)); better, re-save its "
            "state_dict as safetensors."
        ) from None
    except Exception as error:  # random bytes: IndexError, a text file: KeyError, truncated zip: RuntimeError ...
        raise _unreadable(path, error) from None


def foreign_globals(path: str | os.PathLike) -> Optional[list[str]]:
    """The classes and functions the pickle in ``path`` refers to that torch's weights-only loader does not allow
    (sorted ``module.name``), read from the pickle's opcodes without executing any; ``None`` when the file holds
    no readable pickle (a zip checkpoint's ``data.pkl`` or a legacy torch file's pickles)."""
    stream = _pickle_stream(Path(path))
    if stream is None:
        return None
    found: set[str] = set()
    try:
        for _ in range(_LEGACY_PICKLES):
            if stream.tell() >= len(stream.getbuffer()):
                break
            found |= _globals_of_one_pickle(stream)
    except (ValueError, IndexError, KeyError, EOFError):  # not a whole pickle: random bytes, a cut file
        return None
    return sorted(found - _allowed_globals())


def _pickle_stream(path: Path) -> Optional[io.BytesIO]:
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                return io.BytesIO(archive.read(names[0])) if names else None
        except (zipfile.BadZipFile, OSError, EOFError):
            return None
    return io.BytesIO(path.read_bytes())


def _globals_of_one_pickle(stream: io.BytesIO) -> set[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL in the next pickle of ``stream`` (memo followed for strings)."""
    found: set[str] = set()
    memo: dict[int, Any] = {}
    recent: list[Any] = []  # values the last opcodes pushed: STACK_GLOBAL takes the two strings before it
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif name == "STACK_GLOBAL" and len(recent) >= 2:
            found.add(f"{recent[-2]}.{recent[-1]}")
        elif name == "MEMOIZE" and recent:
            memo[len(memo)] = recent[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT") and recent:
            memo[int(arg)] = recent[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(int(arg)))
        elif isinstance(arg, str):
            recent.append(arg)
        else:
            recent.append(None)
        del recent[:-2]
        if name == "STOP":
            return found
    raise ValueError("the pickle ends before its STOP opcode")


def _allowed_globals() -> set[str]:
    names = {f"{cls.__module__}.{cls.__qualname__}" for cls in SAFE_GLOBALS}
    try:  # torch's own allowlist (private; without it every name torch refused is reported)
        from torch._weights_only_unpickler import _get_allowed_globals

        names |= set(_get_allowed_globals())
    except (ImportError, AttributeError):
        pass
    return names | _STORAGE_TYPES


#: Storage classes a torch pickle names (``torch FloatStorage``); torch rebuilds them itself.
_STORAGE_TYPES = {f"torch.{kind}Storage" for kind in (
    "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool", "ComplexFloat",
    "ComplexDouble", "Untyped", "QInt8", "QUInt8", "QInt32", "QUInt4x2", "QUInt2x4")}


def _unreadable(path: Path, error: BaseException) -> UnreadableCheckpointError:
    return UnreadableCheckpointError(
        f"checkpoint {path} is unreadable: not a PyTorch checkpoint, or a damaged one (truncated download?) "
        f"({type(error).__name__}: {_reason(error)}). Expected a file written by torch.save, or a .safetensors file."
    )


def _reason(error: BaseException) -> str:
    """What went wrong, without torch's advice to turn weights_only off (wrong for a file that is not a checkpoint)."""
    if isinstance(error, EOFError):
        return "the file ends early"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not re.search(r"weights_only|Weights only|documentation|file an issue", line)]
    if not useful:
        return _first_line(error)
    return useful[-1].split(". ")[0]  # torch's reader appends paragraphs of advice to its first sentence


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
