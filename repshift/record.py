"""The run record: one ``result.json`` per run, one typed class that writes it and reads it back.

The runner builds a :class:`RunRecord` and calls :meth:`RunRecord.write` once, at the end of a run
(atomically: a killed run leaves no file). Every reader — the runner deciding whether a run is done,
``repshift.status``, the SLURM launcher, the tables, the figures, the claims ledger, W&B — goes through
:meth:`RunRecord.read` or :func:`scan`, so a file is valid for all of them or for none.

A file that does not validate (not JSON, empty, a field of the wrong type, another schema, a run that
measured nothing) is a :class:`RecordError` naming the file and the field; :func:`scan` collects those
as :class:`RecordProblem` beside the valid records, so a report can build the rest of a table and say
which files it could not use.

The record carries the run's :class:`Identity`: everything that can change its result (the resolved
config minus the keys that cannot, the input files, the device, the code version), hashed into
``identity.key``. A run is done only when a valid record with the same key exists.

This module knows no models, no Hydra and no torch: only pydantic and the standard library.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator

from repshift.io import atomic_open

#: The record's file name inside a run folder.
RESULT_NAME = "result.json"
#: Version of the record layout, written into every file as ``schema``; other versions are refused.
SCHEMA = "repshift.result/3"

__all__ = [
    "RESULT_NAME", "SCHEMA", "RecordError", "RecordProblem", "Scan", "InputFile", "Identity", "RunRecord",
    "scan", "fingerprint",
]


class RecordError(ValueError):
    """A result file that cannot be used, with its path and what was wrong."""

    def __init__(self, path: Union[str, os.PathLike], reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class _Section(BaseModel):
    # strict: "true" is not a boolean and "12" is not a count; extra keys are a schema mismatch
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Number = Union[StrictInt, float]


# ------------------------------------------------------------------------------------ identity

class InputFile(_Section):
    """One input a run read: which role it played, and what identifies its content."""

    role: str  # checkpoint, tokenizer, dataset root, annotation file, ...
    path: str  # absolute
    size: Optional[StrictInt] = None  # bytes, files only
    mtime: Optional[float] = None  # seconds; a folder's is its own, not its contents'
    sha256: Optional[str] = None  # content hash, for weight files


def fingerprint(role: str, path: Union[str, os.PathLike], content_hash: bool = False) -> InputFile:
    """What identifies ``path`` for a run: size and modification time, plus a SHA-256 of the content when
    ``content_hash`` (weights: two copies of one file are one input, an edited file in place is another)."""
    path = Path(path).expanduser().absolute()
    stat = path.stat()
    digest = None
    if content_hash and path.is_file():
        sha = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                sha.update(chunk)
        digest = sha.hexdigest()
    return InputFile(role=role, path=str(path), size=stat.st_size if path.is_file() else None,
                     mtime=stat.st_mtime, sha256=digest)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


class Identity(_Section):
    """Everything that can change a run's result; ``key`` hashes the rest of the fields."""

    key: str
    config: str  # SHA-256 of the resolved config, minus the keys that cannot change the result
    inputs: list[InputFile]
    device: str  # cpu, cuda, cuda:<name> ...
    code: str  # the code version that matters: git commit (+dirty) or the package version

    @classmethod
    def of(cls, config: dict, inputs: list[InputFile], device: str, code: str) -> "Identity":
        fields = {"config": _digest(config), "inputs": [f.model_dump() for f in inputs], "device": device,
                  "code": code}
        return cls(key=_digest(fields)[:16], **{**fields, "inputs": inputs})


# ------------------------------------------------------------------------------------ sections

class Method(_Section):
    """The table row a run belongs to: the method whose declaration (``repshift/configs/method/``) matches what
    the run did, or a name derived from what it did (``repshift.run.recorded_method``)."""

    name: str
    label: str
    requested: Optional[str] = None  # the method= the run asked for, when it is not the one it ran
    declares: Optional[dict[str, list[Any]]] = None  # what the method declares (score, site, kernel, mode ...)


class ModelInfo(_Section):
    name: Optional[str]  # the model config (deit_s, umt_b, ...)
    arch: str  # the factory name
    family: Optional[str]  # the adapter family; None when the model runs unpatched


class Compress(_Section):
    layers: Optional[list[StrictInt]]  # null: every block (merging)
    ratio: Optional[Number] = None
    num: Union[StrictInt, list[StrictInt], None] = None
    keep: Literal["top", "bottom"] = "top"
    mode: str = "sequence"
    proportional: Optional[StrictBool] = None  # mode=merge only


class Weights(_Section):
    real: StrictBool  # false: random initialisation
    source: str
    initial: Optional["Weights"] = None  # after training: what training started from
    resampled: Optional[dict[str, Any]] = None  # position/patch embeddings resampled to the model's size


class DatasetInfo(_Section):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)  # evaluators add their own counts
    name: str
    root: Optional[str]
    split: Optional[str] = None
    synthetic: StrictBool
    n: StrictInt = Field(gt=0)  # samples evaluated: an empty evaluation is a failed run, never a record


class Bench(_Section):
    throughput: float = Field(gt=0)
    unit: str
    repeats: list[float]
    kernel: list[str]
    batch: StrictInt = Field(gt=0)
    iters: StrictInt = Field(gt=0)
    warmup: StrictInt = Field(ge=0)
    num_repeats: StrictInt = Field(gt=0)
    precision: str
    device: str
    part: Optional[str] = None  # what was timed: the whole model or the vision encoder
    compiled: StrictBool = False  # torch.compile before timing
    first_call_s: Optional[float] = None  # the untimed first call (it compiles a compiled model)
    clock: Optional[str] = None  # wall clock, or process CPU time on one thread


class Train(_Section):
    history: list[dict[str, Any]]
    checkpoint: str
    resumed_from: Optional[Number] = None  # epochs done when training started (fractional: mid-epoch)


# ------------------------------------------------------------------------------------ the record

class RunRecord(_Section):
    """One run's ``result.json`` (schema :data:`SCHEMA`; fields in docs/architecture.md, "Run records")."""

    schema_: Literal["repshift.result/3"] = Field(SCHEMA, alias="schema")
    identity: Identity
    experiment: str
    run_name: str
    method: Method
    model: ModelInfo
    metric: str
    metric_resolved: Optional[str] = None
    site: str
    reading: str
    attention: str
    compress: Optional[Compress] = None
    weights: Weights
    evaluator: Optional[str] = None
    dataset: Optional[DatasetInfo] = None
    metrics: dict[str, Optional[Number]] = Field(default_factory=dict)
    bench: Optional[Bench] = None
    gmacs: Optional[float] = Field(default=None, gt=0)
    tokens: list[StrictInt] = Field(default_factory=list)
    train: Optional[Train] = None
    world_size: StrictInt = Field(1, gt=0)
    config: dict[str, Any]
    env: dict[str, Any]

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    @model_validator(mode="after")
    def _measured_something(self) -> "RunRecord":
        if self.evaluator is None and self.bench is None and self.train is None:
            raise ValueError("the run measured nothing (no evaluation, benchmark or training)")
        if self.evaluator is not None and (self.dataset is None or not self.metrics):
            raise ValueError(f"evaluator {self.evaluator!r} ran but the record has no dataset or metrics")
        if self.bench is not None and self.gmacs is None:
            raise ValueError("a benchmarked run records its GMACs")
        return self

    # -------------------------------------------------------------------------------- reading

    @property
    def tainted(self) -> bool:
        """Random weights or synthetic data: never evidence about the paper's numbers."""
        return not self.weights.real or bool(self.dataset and self.dataset.synthetic)

    def metric_value(self, name: str) -> Optional[float]:
        """A named metric as a float; None when absent or not a number."""
        value = self.metrics.get(name)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    @classmethod
    def read(cls, path: Union[str, os.PathLike]) -> "RunRecord":
        """The record of ``path`` (a ``result.json`` or the run folder holding it); :class:`RecordError` naming
        the file and the first field that is wrong otherwise."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULT_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise RecordError(path, f"unreadable ({error.strerror or error})") from None
        try:
            data = json.loads(text)
        except ValueError as error:
            raise RecordError(path, f"not JSON ({error})") from None
        if not isinstance(data, dict):
            raise RecordError(path, f"expected a JSON object, got {type(data).__name__}")
        schema = data.get("schema")
        if schema != SCHEMA:
            raise RecordError(path, f"schema {schema!r} is not {SCHEMA!r}; "
                                    + ("rerun it with this release" if schema else "not a repshift run record"))
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "record"
            more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
            raise RecordError(path, f"{where}: {first['msg']}, got {first.get('input')!r}{more}") from None

    # -------------------------------------------------------------------------------- writing

    def write(self, run_dir: Union[str, os.PathLike]) -> Path:
        """Write ``run_dir/result.json`` atomically and return its path; the file is read back first in
        memory, so what is written is what every reader will accept."""
        text = self.model_dump_json(by_alias=True, indent=2)
        type(self).model_validate_json(text)  # a record that cannot be read back is never written
        target = Path(run_dir) / RESULT_NAME
        with atomic_open(target, "w") as fh:
            fh.write(text + "\n")
        return target


class RecordProblem(BaseModel):
    """A ``result.json`` that :func:`scan` could not use, and why."""

    path: str
    reason: str


class Scan(BaseModel):
    """Every ``result.json`` under a folder: the valid records (with where they came from) and the rest."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    records: list[tuple[str, RunRecord]]  # (path, record), sorted by path
    problems: list[RecordProblem]


def scan(root: Union[str, os.PathLike], experiment: Optional[str] = None) -> Scan:
    """Read every ``result.json`` under ``root`` (recursively); with ``experiment``, keep that experiment's."""
    root = Path(root)
    records, problems = [], []
    for path in sorted(root.rglob(RESULT_NAME)) if root.exists() else []:
        try:
            record = RunRecord.read(path)
        except RecordError as error:
            problems.append(RecordProblem(path=error.path, reason=error.reason))
            continue
        if experiment is None or record.experiment == experiment:
            records.append((str(path), record))
    return Scan(records=records, problems=problems)
