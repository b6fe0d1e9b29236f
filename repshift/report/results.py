"""Result files: one ``result.json`` per run, written atomically, plus environment info.

A run writes its result exactly once, at the end, with :func:`write_result`. The file
appears in one step (``os.replace`` of a fully written and fsynced temp file), so a run
killed half-way leaves no ``result.json`` and :func:`is_finished` stays false for it.

Reports read results through one typed loader, :func:`load_results`, which turns every file
(schema :data:`SCHEMA`, and the unversioned files of earlier releases) into a :class:`RunResult`.
The fields are documented in docs/architecture.md ("Result files").
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from repshift.io import atomic_open

RESULT_NAME = "result.json"
#: Version of the result file layout; written into every result.json as ``schema``.
SCHEMA = "repshift.result/2"

__all__ = [
    "RESULT_NAME",
    "SCHEMA",
    "RunResult",
    "load_results",
    "write_result",
    "read_result",
    "collect",
    "is_finished",
]


# --------------------------------------------------------------------------- writing

def _to_jsonable(obj: Any) -> Any:
    """Recursively turn ``obj`` into plain JSON types (NaN/inf become ``null``)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        seq = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [_to_jsonable(v) for v in seq]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    # OmegaConf containers
    try:  # pragma: no cover - depends on omegaconf being importable
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return _to_jsonable(OmegaConf.to_container(obj, resolve=True))
    except ImportError:  # pragma: no cover
        pass
    # numpy scalars / arrays and torch tensors expose .tolist() / .item()
    if hasattr(obj, "tolist"):
        try:
            return _to_jsonable(obj.tolist())
        except Exception:  # noqa: BLE001
            pass
    if hasattr(obj, "item"):
        try:
            return _to_jsonable(obj.item())
        except Exception:  # noqa: BLE001
            pass
    return str(obj)


def write_result(run_dir: str | os.PathLike, result: dict) -> Path:
    """Write ``run_dir/result.json`` atomically (:func:`repshift.io.atomic_open`) and return its path.

    If anything fails before the final move, no ``result.json`` appears (or the old one stays).
    """
    target = Path(run_dir) / RESULT_NAME
    text = json.dumps(_to_jsonable(result), indent=2, sort_keys=False, allow_nan=False)
    with atomic_open(target, "w") as fh:
        fh.write(text + "\n")
    return target


# --------------------------------------------------------------------------- reading

def read_result(path: str | os.PathLike) -> dict:
    """Read one result file (``result.json`` or the run folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_NAME
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def collect(root: str | os.PathLike, experiment: str | None = None) -> list[dict]:
    """All ``result.json`` files under ``root`` (recursive), sorted by path.

    Each dict gets ``_path`` (str) and ``_mtime`` (float, seconds). With ``experiment``
    only results whose ``experiment`` key equals it are kept. Unreadable files are
    skipped with a warning.
    """
    root = Path(root)
    if not root.exists():
        return []
    out: list[dict] = []
    for path in sorted(root.rglob(RESULT_NAME)):
        if not path.is_file():
            continue
        try:
            data = read_result(path)
        except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            warnings.warn(f"skipping unreadable result file {path}: {exc}", stacklevel=2)
            continue
        if experiment is not None and data.get("experiment") != experiment:
            continue
        data["_path"] = str(path)
        try:
            data["_mtime"] = path.stat().st_mtime
        except OSError:  # pragma: no cover - raced with a delete
            data["_mtime"] = 0.0
        out.append(data)
    return out


def _number(value: Any) -> Optional[float]:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _name(value: Any) -> Optional[str]:
    """A config name from a string or a config node (``{"name": ...}``)."""
    if isinstance(value, dict):
        value = value.get("name")
    return None if value is None else str(value)


@dataclass(frozen=True)
class RunResult:
    """One run's result as reports see it (every field optional but ``method`` and ``model``)."""

    method: str  # the method's name (base, attn, ours, static, random, top50, ...)
    method_label: str  # what a table shows for it, as declared in repshift/configs/method/
    model: str  # the model config's name (deit_s, umt_b, ...)
    experiment: Optional[str] = None
    metric: Optional[str] = None
    site: Optional[str] = None
    reading: str = "literal"
    attention: Optional[str] = None
    layers: tuple[int, ...] = ()
    ratio: Optional[float] = None
    keep: Optional[str] = None
    metrics: dict = field(default_factory=dict)  # the evaluator's named metrics
    throughput: Optional[float] = None
    throughput_unit: Optional[str] = None
    bench_device: Optional[str] = None
    bench_precision: Optional[str] = None
    bench_batch: Optional[int] = None
    kernels: tuple[str, ...] = ()
    gmacs: Optional[float] = None
    tokens: tuple[int, ...] = ()
    real_weights: Optional[bool] = None
    synthetic: Optional[bool] = None
    dataset: Optional[str] = None
    dataset_n: Optional[int] = None
    env_device: Optional[str] = None
    path: Optional[str] = None
    mtime: float = 0.0
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def tainted(self) -> bool:
        """Random weights or synthetic data: not comparable with the paper."""
        return self.real_weights is False or self.synthetic is True

    def metric_value(self, name: str) -> Optional[float]:
        return _number(self.metrics.get(name))

    @classmethod
    def from_dict(cls, data: dict, path: Optional[str] = None, mtime: float = 0.0) -> "RunResult":
        """Read a result dict of the current schema or of the unversioned one before it."""
        method = data.get("method")
        if isinstance(method, dict):
            name, label = _name(method), method.get("label")
        else:  # unversioned files: the method was a plain string
            name, label = _name(method), None
        bench = data.get("bench") or {}
        throughput = bench.get("throughput", bench.get("img_per_s"))
        unit = bench.get("unit", "img/s" if "img_per_s" in bench else None)
        compress = data.get("compress") or {}
        layers = compress.get("layers")
        layers = (layers,) if isinstance(layers, int) else tuple(int(x) for x in (layers or ()))
        kernels = bench.get("kernel") or ()
        tokens = data.get("tokens") or ()
        dataset = data.get("dataset") or {}
        weights = data.get("weights") or {}
        return cls(
            method=name or "?",
            method_label=str(label or name or "?"),
            model=_name(data.get("model")) or "?",
            experiment=data.get("experiment"),
            metric=_name(data.get("metric")),
            site=_name(data.get("site")),
            reading=data.get("reading") or "literal",
            attention=_name(data.get("attention")),
            layers=layers,
            ratio=_number(compress.get("ratio")),
            keep=compress.get("keep"),
            metrics=dict(data.get("metrics") or {}),
            throughput=_number(throughput),
            throughput_unit=unit,
            bench_device=bench.get("device"),
            bench_precision=bench.get("precision"),
            bench_batch=bench.get("batch"),
            kernels=(kernels,) if isinstance(kernels, str) else tuple(kernels),
            gmacs=_number(data.get("gmacs")),
            tokens=tuple(int(t) for t in tokens) if isinstance(tokens, (list, tuple)) else (int(tokens),),
            real_weights=weights.get("real"),
            synthetic=dataset.get("synthetic"),
            dataset=dataset.get("name"),
            dataset_n=dataset.get("n", (data.get("metrics") or {}).get("n")),
            env_device=(data.get("env") or {}).get("device"),
            path=path if path is not None else data.get("_path"),
            mtime=float(mtime or data.get("_mtime") or 0.0),
            raw=data,
        )


def load_results(root: str | os.PathLike, experiment: str | None = None) -> list[RunResult]:
    """Every ``result.json`` under ``root`` as :class:`RunResult`, sorted by path (see :func:`collect`)."""
    return [RunResult.from_dict(data) for data in collect(root, experiment)]


def is_finished(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir/result.json`` exists and parses as a JSON object."""
    try:
        read_result(Path(run_dir) / RESULT_NAME)
    except (OSError, ValueError):
        return False
    return True
