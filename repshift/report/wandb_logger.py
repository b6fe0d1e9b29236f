"""Weights & Biases logging, offline unless told otherwise.

Mode resolution for :class:`WandbLogger`: the ``mode`` argument when given, else the
``WANDB_MODE`` environment variable when set, else ``"offline"``. Online logging is
never the silent default. Each :meth:`WandbLogger.start` finishes any run still open in
the process (``reinit="finish_previous"``), so sequential Hydra multirun jobs each get a
run of their own.

A run logged with a ``dir`` (the Hydra run folder) gets an id derived from that folder and
``resume="allow"``: a job that SLURM requeues, or a relaunch of a sweep, continues the same W&B
run instead of starting a duplicate (offline, each attempt is one ``offline-run-*-<id>`` folder,
and ``wandb sync`` merges them into one run).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["WandbLogger", "NullLogger", "resolve_mode", "run_id_for"]

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

    def finish(self, exit_code: int | None = None) -> None:
        pass

    def __enter__(self) -> "NullLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()


class WandbLogger:
    """Thin wrapper over one ``wandb`` run.

    ``dir`` is where W&B writes its ``wandb/`` folder (the Hydra run folder); it is
    created when missing. ``id`` defaults to :func:`run_id_for` ``(dir)`` when ``dir`` is given
    (else W&B draws one); ``resume`` is passed to ``wandb.init`` ("allow": continue the run with
    this id if it exists, else start it).
    """

    def __init__(self, project: str = "repshift", entity: str | None = None, mode: str | None = None,
                 group: str | None = None, name: str | None = None, tags: Iterable[str] = (),
                 dir: str | os.PathLike | None = None, id: str | None = None,  # noqa: A002 - mirror wandb.init
                 resume: str | None = "allow") -> None:
        self.project = project
        self.entity = entity
        self.requested_mode = mode
        self.group = group
        self.name = name
        self.tags = [str(t) for t in (tags or ())]
        self.dir = Path(dir) if dir is not None else None
        self.id = id or (run_id_for(self.dir) if self.dir is not None else None)
        self.resume = resume if self.id else None
        self.mode: str | None = None
        self.run = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, config: Mapping[str, Any] | None = None) -> "WandbLogger":
        import wandb

        if self.run is not None:
            self.finish()
        self.mode = resolve_mode(self.requested_mode)
        kwargs: dict[str, Any] = dict(
            project=self.project,
            entity=self.entity,
            group=self.group,
            name=self.name,
            tags=self.tags or None,
            config=dict(config) if config is not None else None,
            mode=self.mode,
            reinit="finish_previous",
            id=self.id,
            resume=self.resume,
        )
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            kwargs["dir"] = str(self.dir)
        self.run = wandb.init(**kwargs)
        return self

    def finish(self, exit_code: int | None = None) -> None:
        """Close the run; safe to call any number of times."""
        run, self.run = self.run, None
        if run is None:
            return
        try:
            if exit_code is None:
                run.finish()
            else:
                run.finish(exit_code=exit_code)
        except Exception:  # noqa: BLE001 - closing must never mask the real error
            pass

    def __enter__(self) -> "WandbLogger":
        if self.run is None:
            self.start({})
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=1 if exc_type is not None else None)

    # ------------------------------------------------------------------ logging
    @contextlib.contextmanager
    def _guarded(self, what: str):
        """W&B is a record beside result.json, never a reason to lose a run: a failing call (its service
        process killed by a requeue's SIGTERM, a full disk) turns W&B off for the rest of the run."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 - wandb raises many types; all mean "W&B is gone"
            warnings.warn(f"W&B {what} failed ({type(error).__name__}: {error}); the run goes on without W&B "
                          "(its results still go to result.json)", RuntimeWarning, stacklevel=3)
            self.run = None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.run is None:
            return
        with self._guarded("logging"):
            if step is None:
                self.run.log(dict(metrics))
            else:
                self.run.log(dict(metrics), step=step)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        with self._guarded("summary"):
            for key, value in summary.items():
                self.run.summary[key] = value

    def log_table(self, key: str, df: Any) -> None:
        """Log a pandas DataFrame as a ``wandb.Table``."""
        if self.run is None:
            return
        import wandb

        table_df = df.reset_index() if getattr(df.index, "name", None) else df
        table_df = table_df.copy()
        table_df.columns = [str(c) for c in table_df.columns]
        # wandb.Table wants plain Python/numpy columns: avoid pandas extension dtypes
        for col in table_df.columns:
            if table_df[col].dtype.kind not in "biuf":
                table_df[col] = table_df[col].astype(object)
        with self._guarded("table logging"):
            self.run.log({key: wandb.Table(dataframe=table_df)})
