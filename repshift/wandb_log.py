"""Weights & Biases logging for the runner: offline unless told otherwise, and never a reason to lose a run.

Mode resolution for :class:`WandbLogger`: the ``mode`` argument when given, else the ``WANDB_MODE``
environment variable when set, else ``"offline"``. Online logging is never the silent default.

Every W&B call is guarded and bounded in time. ``wandb.init`` waits at most ``init_timeout`` seconds (W&B's
own setting); when it fails (no API key, no network, a server that does not answer) the run goes on with an
offline W&B run, or without W&B when that fails too, after one warning. Every later call (log, summary,
table, finish) runs under a deadline of ``call_timeout`` seconds; one that fails or overruns turns W&B off
for the rest of the run, again with one warning. The run's ``result.json`` is written either way.

A run logged with a ``dir`` (the run folder) gets an id derived from that folder and ``resume="allow"``: a job
that SLURM requeues, or a relaunch of a sweep, continues the same W&B run instead of starting a duplicate
(offline, each attempt is one ``offline-run-*-<id>`` folder, and ``wandb sync`` merges them into one run).
Each :meth:`WandbLogger.start` finishes any run still open in the process (``reinit="finish_previous"``), so
the runs of a sequential Hydra sweep each get their own.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

if TYPE_CHECKING:
    from repshift.record import RunRecord

__all__ = ["WandbLogger", "NullLogger", "resolve_mode", "run_id_for", "record_metrics"]

log = logging.getLogger("repshift.wandb")

VALID_MODES = ("online", "offline", "disabled", "shared")


def resolve_mode(mode: str | None = None) -> str:
    """``mode`` if given, else ``$WANDB_MODE`` if set, else ``"offline"``."""
    if mode is None or str(mode).strip() == "":
        mode = os.environ.get("WANDB_MODE") or "offline"
    mode = str(mode).strip().lower()
    if mode == "dryrun":  # old spelling of offline
        mode = "offline"
    if mode not in VALID_MODES:
        raise ValueError(f"unknown W&B mode {mode!r}; use one of {', '.join(VALID_MODES)}")
    return mode


def run_id_for(folder: str | os.PathLike) -> str:
    """A W&B run id that is the same for every attempt of the run writing to ``folder``."""
    return hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:20]


def record_metrics(record: "RunRecord") -> dict[str, float]:
    """What W&B shows of a run record: its metrics, and its throughput and GMACs when it was benchmarked."""
    flat = {f"metrics/{key}": value for key, value in record.metrics.items() if value is not None}
    if record.bench is not None:
        flat["bench/throughput"] = record.bench.throughput
        flat["gmacs"] = record.gmacs
    return flat


class NullLogger:
    """Same interface as :class:`WandbLogger`, does nothing (``logger=none``)."""

    run = None
    mode = "none"

    def start(self, config: Mapping[str, Any] | None = None) -> "NullLogger":
        return self

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        pass

    def log_table(self, key: str, df: Any) -> None:
        pass

    def log_record(self, record: "RunRecord") -> None:
        pass

    def finish(self, exit_code: int | None = None) -> None:
        pass

    def __enter__(self) -> "NullLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()


class WandbLogger:
    """One ``wandb`` run, every call guarded and bounded (module docstring).

    ``dir`` is where W&B writes its ``wandb/`` folder (the run folder); it is created when missing. ``id``
    defaults to :func:`run_id_for` ``(dir)`` when ``dir`` is given (else W&B draws one); ``resume`` is passed to
    ``wandb.init`` ("allow": continue the run with this id if it exists, else start it).
    """

    def __init__(self, project: str = "repshift", entity: str | None = None, mode: str | None = None,
                 group: str | None = None, name: str | None = None, tags: Iterable[str] = (),
                 dir: str | os.PathLike | None = None, id: str | None = None,  # noqa: A002 - mirror wandb.init
                 resume: str | None = "allow", init_timeout: float = 30.0, call_timeout: float = 30.0) -> None:
        self.project = project
        self.entity = entity
        self.requested_mode = mode
        self.group = group
        self.name = name
        self.tags = [str(t) for t in (tags or ())]
        self.dir = Path(dir) if dir is not None else None
        self.id = id or (run_id_for(self.dir) if self.dir is not None else None)
        self.resume = resume if self.id else None
        self.init_timeout = float(init_timeout)
        self.call_timeout = float(call_timeout)
        self.mode: str | None = None
        self.run = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, config: Mapping[str, Any] | None = None) -> "WandbLogger":
        """Open the W&B run; on failure go on offline, or without W&B, after one warning."""
        if self.run is not None:
            self.finish()
        self.mode = resolve_mode(self.requested_mode)
        try:
            self.run = self._init(self.mode, config)
            return self
        except Exception as error:  # noqa: BLE001 - wandb raises many types (UsageError, CommError, ...)
            first = f"{type(error).__name__}: {_first_line(error)}"
        if self.mode in ("online", "shared"):
            try:
                # the failed attempt may still hold the run id in W&B's service process: the offline run gets its
                # own (the same in every attempt of this run, so `wandb sync` still merges requeued attempts)
                self.id = f"{self.id}-offline" if self.id else None
                self.run = self._init("offline", config)
                log.warning("W&B %s run could not start (%s); logging offline instead (sync later with "
                            "`wandb sync`). The run goes on and writes result.json.", self.mode, first)
                self.mode = "offline"
                return self
            except Exception as error:  # noqa: BLE001
                first += f"; offline: {type(error).__name__}: {_first_line(error)}"
        log.warning("W&B could not start (%s); the run goes on without W&B and writes result.json.", first)
        self.mode, self.run = "none", None
        return self

    def _init(self, mode: str, config: Mapping[str, Any] | None):
        import wandb

        kwargs: dict[str, Any] = dict(
            project=self.project, entity=self.entity, group=self.group, name=self.name, tags=self.tags or None,
            config=dict(config) if config is not None else None, mode=mode, reinit="finish_previous", id=self.id,
            resume=self.resume, settings=wandb.Settings(init_timeout=self.init_timeout),
        )
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            kwargs["dir"] = str(self.dir)
        return wandb.init(**kwargs)

    def finish(self, exit_code: int | None = None) -> None:
        """Close the run (bounded like every call); safe to call any number of times."""
        run = self.run
        if run is not None:
            self._call("finish", lambda: run.finish() if exit_code is None else run.finish(exit_code=exit_code))
        self.run = None

    def __enter__(self) -> "WandbLogger":
        if self.run is None:
            self.start({})
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=1 if exc_type is not None else None)

    # ------------------------------------------------------------------ logging
    def _call(self, what: str, call: Callable[[], Any]) -> None:
        """Run one W&B call within ``call_timeout`` seconds; a failure or an overrun turns W&B off, with one
        warning (a W&B service killed by a requeue's SIGTERM, a full disk, a server that stopped answering)."""
        if self.run is None:
            return
        outcome: dict[str, BaseException] = {}

        def target() -> None:
            try:
                call()
            except BaseException as error:  # noqa: BLE001 - reported below, in the calling thread
                outcome["error"] = error

        worker = threading.Thread(target=target, name=f"wandb-{what}", daemon=True)
        worker.start()
        worker.join(self.call_timeout)
        if worker.is_alive():
            problem = f"did not return within {self.call_timeout:g} s"
        elif "error" in outcome:
            problem = f"failed ({type(outcome['error']).__name__}: {_first_line(outcome['error'])})"
        else:
            return
        log.warning("W&B %s %s; the run goes on without W&B (its results still go to result.json)", what, problem)
        self.run = None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        run = self.run
        if run is not None:
            self._call("logging", lambda: run.log(dict(metrics)) if step is None else run.log(dict(metrics), step=step))

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        run = self.run
        if run is not None:
            self._call("summary", lambda: [run.summary.__setitem__(key, value) for key, value in summary.items()])

    def log_table(self, key: str, df: Any) -> None:
        """Log a pandas DataFrame as a ``wandb.Table``."""
        run = self.run
        if run is None:
            return
        import wandb

        table_df = df.reset_index() if getattr(df.index, "name", None) else df
        table_df = table_df.copy()
        table_df.columns = [str(c) for c in table_df.columns]
        # wandb.Table wants plain Python/numpy columns: avoid pandas extension dtypes
        for col in table_df.columns:
            if table_df[col].dtype.kind not in "biuf":
                table_df[col] = table_df[col].astype(object)
        self._call("table logging", lambda: run.log({key: wandb.Table(dataframe=table_df)}))

    def log_record(self, record: "RunRecord") -> None:
        """A finished run's record: its metrics (:func:`record_metrics`), and one table row under its label."""
        import pandas as pd

        metrics = record_metrics(record)
        self.log_metrics(metrics)
        self.log_summary({"method": record.method.name, "identity": record.identity.key})
        self.log_table("result", pd.DataFrame([{"method": record.method.label, **metrics}]))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
