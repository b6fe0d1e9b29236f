"""One table of a sweep's runs: done / invalid / running / failed / missing.

    python -m repshift.status outputs/table5            (or: make status EXP=table5)
    python -m repshift.status outputs/smoke --experiment fig1      (the folder fig1 writes into: table2)
    python -m repshift.status outputs/smoke/table5 --json

A run is a folder of the sweep holding ``.hydra/``, ``result.json`` or a run state file, or a run recorded in
``<sweep dir>/.submissions/*.json`` by the SLURM launcher (:mod:`repshift.launchers`). Its state:

- ``done``: its ``result.json`` is a valid run record (:meth:`repshift.record.RunRecord.read`); the identity
  column shows the start of its identity key (two folders of one name are two different runs);
- ``invalid``: its ``result.json`` does not validate; the reason is shown, and no report uses the file;
- ``running``: its latest SLURM job is pending, running or requeued, or a local run's process is alive (the
  state file the runner writes names its host and pid; on another host it is shown as running there);
- ``failed``: its job ended without a result (FAILED, CANCELLED, TIMEOUT, ...), or the runner marked it
  failed (the error is shown; the traceback is in the run's ``run.log``), or its process is gone without a
  result (killed);
- ``missing``: submitted, but neither a folder nor a job SLURM still knows about.

Job id, SLURM state and wall time come from ``sacct`` where SLURM is present (``squeue`` when
accounting is off); without SLURM the wall time is the time from the run's config to its result.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from tabulate import tabulate

from repshift.io import atomic_open
from repshift.record import RESULT_NAME, RecordError, RunRecord

log = logging.getLogger(__name__)

__all__ = ["ACTIVE_STATES", "RUN_STATE", "SUBMISSIONS", "clear_state", "mark_failed", "mark_running", "read_state",
           "read_submissions", "slurm_states", "sweep_status", "write_submission", "main"]

# SLURM states of a job that may still write its result
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
ORDER = {"invalid": 0, "failed": 1, "missing": 2, "running": 3, "done": 4}
#: Where the SLURM launcher records each submission, inside the sweep folder.
SUBMISSIONS = ".submissions"
#: The runner's state file in a run folder while the run goes on, and after it failed (removed on success).
RUN_STATE = ".run_state.json"


# ------------------------------------------------------------------------------------------ run state

def _write_state(run_dir: Path, state: dict) -> None:
    with atomic_open(Path(run_dir) / RUN_STATE, "w") as fh:
        json.dump(state, fh, indent=1)


def mark_running(run_dir: Path, identity: str) -> None:
    """The runner starts a run in ``run_dir`` (this host, this process)."""
    _write_state(run_dir, {"state": "running", "host": socket.gethostname(), "pid": os.getpid(),
                           "identity": identity, "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def mark_failed(run_dir: Path, error: str) -> None:
    """The run in ``run_dir`` failed with ``error`` (its traceback is in run.log)."""
    state = read_state(run_dir) or {}
    _write_state(run_dir, {**state, "state": "failed", "host": socket.gethostname(), "pid": os.getpid(),
                           "error": error, "ended": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def clear_state(run_dir: Path) -> None:
    """The run in ``run_dir`` wrote its result: result.json is its state now."""
    (Path(run_dir) / RUN_STATE).unlink(missing_ok=True)


def read_state(run_dir: Path) -> Optional[dict]:
    try:
        state = json.loads((Path(run_dir) / RUN_STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _local_state(run_dir: Path) -> tuple[str, str]:
    """(status, note) of a run folder without a result, from the runner's state file."""
    state = read_state(run_dir)
    log_path = str(run_dir / "run.log")
    if state is None:
        return "failed", f"stopped without a result; see {log_path}"
    if state.get("state") == "failed":
        return "failed", f"{state.get('error', '?')}; traceback in {log_path}"
    host, pid = state.get("host"), state.get("pid")
    if host != socket.gethostname():
        return "running", f"on {host} (pid {pid}), since {state.get('started')}"
    if isinstance(pid, int) and _alive(pid):
        return "running", f"pid {pid}, since {state.get('started')}"
    return "failed", f"its process (pid {pid}) is gone without a result; see {log_path}"


def _expand(job_id: str) -> list[str]:
    """'12_[1,3-5%2]' -> ['12_1', '12_3', '12_4', '12_5'] (pending array tasks); other ids as they are."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id]
    array, spec = match.group(1), match.group(2).split("%")[0]
    tasks = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        tasks += range(int(first), int(last or first) + 1)
    return [f"{array}_{t}" for t in tasks]


def _query(command: list[str]) -> list[list[str]] | None:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return [line.split("|") for line in proc.stdout.splitlines() if line.strip()]


def slurm_states(job_ids: list[str]) -> dict[str, dict]:
    """{job id: {"state", "elapsed"}} for the given jobs (``123`` or array tasks ``123_4``), from sacct,
    else squeue; empty without SLURM. Jobs SLURM no longer knows are left out."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    rows = None
    if shutil.which("sacct"):
        rows = _query(["sacct", "-n", "-P", "-X", "-j", ",".join(arrays), "-o", "JobID,State,Elapsed"])
    if rows is None:  # accounting disabled: squeue knows jobs for MinJobAge after they end
        rows = _query(["squeue", "-h", "-t", "all", "-j", ",".join(arrays), "-o", "%i|%T|%M"])
    states: dict[str, dict] = {}
    for row in rows or []:
        if len(row) < 3:
            continue
        for job_id in _expand(row[0]):
            states[job_id] = {"state": row[1].split()[0] if row[1] else "UNKNOWN", "elapsed": row[2]}
    return {j: states[j] for j in job_ids if j in states}


def _local_wall(run_dir: Path) -> str | None:
    config, result = run_dir / ".hydra" / "config.yaml", run_dir / RESULT_NAME
    if not (config.exists() and result.exists()):
        return None
    minutes, seconds = divmod(round(max(0.0, result.stat().st_mtime - config.stat().st_mtime)), 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}:{seconds:02d}"  # as sacct's Elapsed


def write_submission(sweep_dir: Path, array_id: str, runs: list[dict]) -> Path:
    """Record one array submission: ``runs`` holds each run's ``run_dir, overrides, job_num, job_id, stdout,
    stderr``. Written atomically to ``<sweep dir>/.submissions/<array id>.json``."""
    record = {"array_job_id": array_id, "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "runs": runs}
    path = Path(sweep_dir) / SUBMISSIONS / f"{array_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as fh:
        json.dump(record, fh, indent=1)
    return path


def read_submissions(sweep_dir: str | Path) -> dict[str, dict]:
    """The latest submission record of each run folder under ``sweep_dir``, keyed by its path."""
    latest: dict[str, dict] = {}
    for path in sorted(Path(sweep_dir).glob(f"{SUBMISSIONS}/*.json"), key=lambda p: p.stat().st_mtime):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("ignoring unreadable submission record %s", path)
            continue
        for run in record.get("runs", []):
            latest[run["run_dir"]] = {**run, "submitted": record.get("submitted")}
    return latest


def sweep_status(sweep_dir: str | Path) -> list[dict]:
    """One dict per run: run, status, identity, job, slurm_state, wall, note (why a run failed or is invalid,
    where it runs, or where its log is)."""
    sweep_dir = Path(sweep_dir).absolute()
    submitted = read_submissions(sweep_dir)
    folders = {str(p.parent.absolute()) for marker in (".hydra", RESULT_NAME, RUN_STATE)
               for p in sweep_dir.glob(f"*/{marker}") if not p.parent.name.startswith(".")}
    states = slurm_states([run["job_id"] for run in submitted.values()])
    rows = []
    for run_dir in sorted(folders | set(submitted)):
        path = Path(run_dir)
        record = submitted.get(run_dir)
        job_id = record["job_id"] if record else None
        slurm = states.get(job_id, {}) if job_id else {}
        state = slurm.get("state")
        identity = None
        if (path / RESULT_NAME).exists():
            try:
                identity = RunRecord.read(path).identity.key[:8]
                status, note = "done", None
            except RecordError as error:
                status, note = "invalid", f"{error.path}: {error.reason}"
        elif state in ACTIVE_STATES:
            status, note = "running", None
        elif state is not None:
            status, note = "failed", record["stderr"]
        elif path.exists():
            status, note = _local_state(path)
        else:
            status, note = "missing", record["stderr"] if record else None
        wall = slurm.get("elapsed") or (_local_wall(path) if status == "done" else None)
        rows.append({"run": _relative(path, sweep_dir), "status": status, "identity": identity, "job": job_id,
                     "slurm_state": state, "wall": wall, "note": note})
    rows.sort(key=lambda r: (ORDER[r["status"]], r["run"]))
    return rows


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repshift.status", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a sweep's folder, e.g. outputs/table5 or outputs/smoke/table5; with "
                                          "--experiment, the outputs folder that holds it")
    parser.add_argument("--experiment", help="an experiment name: its folder under sweep_dir is the one its config "
                                             "declares (experiment=fig1 writes into table2); a name that is no "
                                             "experiment's is a folder name (experiment_name=custom)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    sweep_dir = Path(args.sweep_dir)
    if args.experiment:
        from repshift.configs import experiment_folder, names

        known = args.experiment in names("experiment")
        sweep_dir = sweep_dir / (experiment_folder(args.experiment) if known else args.experiment)
    if not sweep_dir.is_dir():
        print(f"{sweep_dir}: no such sweep folder", file=sys.stderr)
        return 2
    rows = sweep_status(sweep_dir)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    counts = {s: sum(r["status"] == s for r in rows) for s in ORDER}
    print(f"{sweep_dir}: {len(rows)} run{'s' * (len(rows) != 1)}: "
          + ", ".join(f"{counts[s]} {s}" for s in ("done", "invalid", "running", "failed", "missing") if counts[s] or s != "invalid"))
    if rows:
        table = [[r["status"], r["run"], r["identity"] or "-", r["job"] or "-", r["slurm_state"] or "-", r["wall"] or "-",
                  r["note"] or ""] for r in rows]
        print(tabulate(table, headers=["status", "run", "identity", "job", "slurm", "wall", "note"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
