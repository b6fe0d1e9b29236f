"""What makes a run the run it is, and which folder holds its result.

A run's :class:`~repshift.record.Identity` hashes everything that can change its result:

- the resolved config minus the keys that cannot (:data:`NOT_RESULT_KEYS`: where results and data live,
  logging, ``force``, progress bars, loader workers, the requested device);
- its input files (:func:`run_inputs`): the checkpoint (path, size, time and a SHA-256 of its content), the
  tokenizer (its vocabulary's SHA-256), the dataset root, annotation files and video folder (path, size,
  time); a dataset generated on first use is identified by its ``generate`` settings, which are config;
- the device it runs on (``cpu``, or ``cuda:<GPU name>``);
- the code that can change a result (:func:`code_version`: the package version and a hash of its sources,
  the reports, status, launchers and W&B logging left out).

The same function serves the runner (skip or run), the SLURM launcher (submit or not) and ``repshift.status``.

Folders (:func:`find_finished`, :func:`folder_for`): a run's folder is named from its command-line overrides
(readable, stable across relaunches). It writes there unless that folder holds a finished result of another
identity; then it writes to ``<folder>@<first 8 hex digits of its identity key>``. So no result is ever
overwritten by another run's, and a run is skipped only when a folder holds a result with its own identity.
"""
from __future__ import annotations

import copy
import functools
import hashlib
from pathlib import Path
from typing import Any, Iterable, Optional

import repshift
from repshift.record import RESULT_NAME, Identity, InputFile, RecordError, RunRecord, fingerprint

__all__ = ["NOT_RESULT_KEYS", "InputError", "code_version", "result_config", "run_inputs", "run_identity",
           "identity_folder", "find_finished", "folder_for"]

#: Keys of the run config that cannot change a run's result: left out of its identity (dotted paths).
NOT_RESULT_KEYS = ("experiment_name", "force", "progress", "keep_going", "logger", "paths", "device",
                   "dataset.num_workers", "train.output", "hydra")

#: Parts of the package that cannot change a run's result: left out of :func:`code_version`.
NOT_RESULT_CODE = ("report", "status.py", "launchers.py", "wandb_log.py", "demo.py")


class InputError(FileNotFoundError):
    """An input a run needs is missing or unreadable: ``key=value: problem``, found before anything is built."""

    def __init__(self, key: str, value: Any, problem: str):
        self.key = key
        super().__init__(f"{key}={value}: {problem} (checked before building the model)")


def result_config(config: dict) -> dict:
    """The resolved run config without :data:`NOT_RESULT_KEYS`."""
    config = copy.deepcopy(config)
    for dotted in NOT_RESULT_KEYS:
        *parents, last = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return config


@functools.cache
def code_version() -> str:
    """``repshift <version>+src.<12 hex digits>``: the package version and a SHA-256 of the source files that
    can change a result (every module but :data:`NOT_RESULT_CODE`), so an edited checkout is another version."""
    root = Path(repshift.__file__).resolve().parent
    sha = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in NOT_RESULT_CODE:
            continue
        sha.update(relative.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"repshift {repshift.__version__}+src.{sha.hexdigest()[:12]}"


# ------------------------------------------------------------------------------------------ inputs

@functools.lru_cache(maxsize=64)
def _checkpoint(path: str, size: int, mtime_ns: int) -> InputFile:
    return fingerprint("checkpoint", path, content_hash=True)  # cached: a sweep hashes each file once


@functools.lru_cache(maxsize=16)
def _tokenizer(source: str, stamp: Optional[float]) -> InputFile:
    from repshift.models.umt_text import load_tokenizer  # transformers: only runs with a text side pay for it

    path = Path(source).expanduser()
    if ("/" in source or source.startswith((".", "~"))) and not path.is_dir():  # a folder, not a hub name
        raise InputError("model.tokenizer", source, "no such folder (give a folder holding vocab.txt, or a hub name "
                                                    "such as bert-base-uncased in the Hugging Face cache)")
    try:
        vocabulary = load_tokenizer(source).get_vocab()
    except (OSError, ValueError) as error:
        raise InputError("model.tokenizer", source, str(error)) from None
    tokens = "\n".join(sorted(vocabulary, key=vocabulary.get))
    return InputFile(role="tokenizer", path=str(path.absolute()) if path.is_dir() else source,
                     sha256=hashlib.sha256(tokens.encode()).hexdigest())


def _file(role: str, key: str, value: str, folder: bool = False) -> InputFile:
    path = Path(value).expanduser()
    if folder and not path.is_dir():
        raise InputError(key, value, "no such folder" if not path.exists() else "not a folder")
    if not folder and not path.is_file():
        raise InputError(key, value, "no such file" if not path.exists() else "not a file")
    try:
        return fingerprint(role, path)
    except OSError as error:
        raise InputError(key, value, f"unreadable ({error.strerror or error})") from None


def run_inputs(config: dict, tasks: Iterable[str]) -> list[InputFile]:
    """Check the input files a run needs and fingerprint them; :class:`InputError` naming the config key and
    the path for the first one missing. Called before a model is built, so a sweep with a missing tokenizer,
    data root, annotation file or checkpoint fails at once, without building anything."""
    model, dataset, tasks = config["model"], config["dataset"], set(tasks)
    inputs = []
    if model.get("checkpoint"):
        path = Path(model["checkpoint"]).expanduser()
        if not path.is_file():
            raise InputError("model.checkpoint", model["checkpoint"], "no such file" if not path.exists() else "not a file")
        stat = path.stat()
        inputs.append(_checkpoint(str(path.absolute()), stat.st_size, stat.st_mtime_ns))
    if model.get("tokenizer") and model.get("part") != "vision":  # a text side: retrieval and QA models
        source = str(model["tokenizer"])
        folder = Path(source).expanduser()
        inputs.append(_tokenizer(source, (folder / "vocab.txt").stat().st_mtime if (folder / "vocab.txt").is_file() else None))
    if tasks & {"evaluate", "train"} and not dataset.get("generate"):
        inputs.append(_file("dataset root", "dataset.root", dataset["root"], folder=True))
        splits = [dataset["split"]] + (["train"] if "train" in tasks else [])
        annotations = dataset.get("anno_files") or {}
        for split in splits if annotations else ():
            if split not in annotations:
                raise InputError(f"dataset.anno_files.{split}", None,
                                 f"no annotation file for split {split!r} (this dataset has {sorted(annotations)})")
            inputs.append(_file(f"annotations ({split})", f"dataset.anno_files.{split}", annotations[split]))
        if dataset.get("answer_list"):
            inputs.append(_file("answer list", "dataset.answer_list", dataset["answer_list"]))
        if dataset.get("video_dir"):
            inputs.append(_file("videos", "dataset.video_dir", dataset["video_dir"], folder=True))
    return inputs


def run_identity(config: dict, tasks: Iterable[str], device: str) -> Identity:
    """The identity of the run that ``config`` describes, on ``device`` (``cpu`` or ``cuda:<GPU name>``)."""
    return Identity.of(result_config(config), run_inputs(config, tasks), device, code_version())


# ------------------------------------------------------------------------------------------ folders

def identity_folder(named: Path, identity: Identity) -> Path:
    """Where a run goes when its named folder holds another run's result: ``<named>@<key[:8]>``."""
    return named.with_name(f"{named.name}@{identity.key[:8]}")


def _record(folder: Path) -> Optional[RunRecord]:
    try:
        return RunRecord.read(folder) if (folder / RESULT_NAME).exists() else None
    except RecordError:
        return None


def find_finished(named: Path, identity: Identity, same=lambda stored, wanted: stored.key == wanted.key
                  ) -> Optional[Path]:
    """The folder (``named`` or its identity folder) holding a valid result of this identity, else None.
    ``same(stored, wanted)`` compares identities (the SLURM launcher relaxes the device, which it cannot know)."""
    for folder in (named, identity_folder(named, identity)):
        record = _record(folder)
        if record is not None and same(record.identity, identity):
            return folder
    return None


def folder_for(named: Path, identity: Identity) -> Path:
    """The folder a run of ``identity`` writes to: ``named`` when it holds no result or a result of this very
    identity (``force=true``), else :func:`identity_folder` (a result file that does not validate is kept too:
    it is reported, not overwritten)."""
    if not (named / RESULT_NAME).exists():
        return named
    record = _record(named)
    return named if record is not None and record.identity.key == identity.key else identity_folder(named, identity)
