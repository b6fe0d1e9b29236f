"""Hydra's submitit SLURM launcher with what a sweep on a cluster needs.

``hydra/launcher=slurm`` (repshift/configs/hydra/launcher/slurm.yaml) selects :class:`SlurmLauncher` (through
``hydra_plugins.repshift_launcher``: Hydra instantiates launchers only from that namespace). Over the
plugin's launcher it adds:

- **Sweep resume.** Before submitting, each run's folder and identity are worked out as the runner
  will (:mod:`repshift.identity`); runs whose folder holds a result of that identity (unless
  ``force=true``) and runs still queued or running from an earlier submission are not submitted again. A
  relaunch of the same command runs only what is missing. The submitting host cannot know which GPU a job
  will get: a result matches when its identity is the same but for the GPU's name (a ``cpu`` result never
  stands for a GPU job, nor the other way round); the job itself checks its full identity again.
- **Clear failures.** A run whose Python code raised ends as FAILED in SLURM (the plugin reports it
  as COMPLETED). Failures are logged as they happen, the other runs go on, and the sweep ends with
  one summary naming each failed run, its job id, SLURM state, error and log path, instead of the
  first traceback. Finished results are never touched.
- **A request SLURM can satisfy.** CPUs, memory, GPUs and time are checked against the partition
  (``sinfo``) before submitting; a request no node can meet fails at once with the config key to
  change, instead of pending forever or failing in ``sbatch``.
- **Submit and return.** ``hydra.launcher.detach=true`` returns once the array is queued; follow it
  with ``python -m repshift.status <sweep dir>``.

Every submission is recorded in ``<sweep dir>/.submissions/<array job id>.json`` (run folder,
overrides, job id, log paths): :mod:`repshift.status` and the resume check read it.
"""
from __future__ import annotations

import copy
import logging
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import DictConfig, OmegaConf, open_dict

import repshift.identity as identity
from repshift.record import Identity, RecordError, RunRecord
from repshift.status import ACTIVE_STATES, read_submissions, slurm_states, write_submission
from repshift.tasks import parse_tasks

log = logging.getLogger(__name__)

# SLURM end states in which a job cannot have written its result; no need to wait for one
ENDED_WITHOUT_RESULT = {"CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
_INT_KEYS = ("timeout_min", "cpus_per_task", "gpus_per_node", "gpus_per_task", "tasks_per_node", "mem_gb",
             "nodes", "array_parallelism", "max_num_timeout", "signal_delay_s")


class SweepFailed(CompactHydraException):
    """Some runs of a sweep failed; the message is the summary (Hydra prints it without a traceback)."""


class LauncherConfigError(CompactHydraException):
    """The launcher's request is malformed or no node of the partition can satisfy it."""


@dataclass
class PlannedRun:
    overrides: list[str]
    job_num: int
    run_dir: Path
    force: bool  # the run's `force=true`: run again even with a result
    identity: Optional[Identity] = None  # None: not known here (an input is missing: the job will say which)
    gpu: bool = False  # the job runs on a GPU (device=cuda, or auto with GPUs requested)

    def finished(self) -> Optional[Path]:
        """The folder holding this run's result (same identity but perhaps the GPU's name), else None."""
        if self.identity is None:
            return None
        return identity.find_finished(self.run_dir, self.identity, same=self._same)

    def _same(self, stored: Identity, planned: Identity) -> bool:
        fields = ("config", "inputs", "code")
        return (all(getattr(stored, f) == getattr(planned, f) for f in fields)
                and stored.device.startswith("cuda") == self.gpu)


@dataclass
class Failure:
    run: PlannedRun
    job_id: str
    state: str
    error: str
    log_path: Path


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """See the module docstring. ``detach`` and ``poll_s`` are ours; every other key is the plugin's."""

    def __init__(self, detach: bool = False, poll_s: float = 10.0, **params: Any) -> None:
        super().__init__(**params)
        self.detach = bool(detach)
        self.poll_s = float(poll_s)
        self.params = _checked_params(self.params)

    # ---------------------------------------------------------------- inside the SLURM job
    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state) -> JobReturn:
        ret = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        if ret.status == JobStatus.FAILED:
            error = ret._return_value
            log.error("run failed: %s: %s", type(error).__name__, error)
            # re-raised, the job ends FAILED in SLURM and submitit keeps the traceback for the launcher
            raise error
        return ret

    # ---------------------------------------------------------------- on the submitting host
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        planned = self._plan(job_overrides, initial_job_idx)
        active = _active_runs(sweep_dir)
        todo, finished, running = [], [], []
        for run in planned:
            if not run.force and run.finished() is not None:
                finished.append(run)
            elif str(run.run_dir) in active:
                running.append((run, active[str(run.run_dir)]))
            else:
                todo.append(run)
        for run in finished:
            log.info("finished, not submitted: %s", run.run_dir)
        for run, (job_id, state) in running:
            log.info("still %s as job %s, not submitted: %s", state.lower(), job_id, run.run_dir)
        if not todo:
            log.info("nothing to submit: %d finished, %d queued or running", len(finished), len(running))
            return [_placeholder(run) for run in planned]

        self._check_request()
        jobs = self._submit(todo, sweep_dir)
        array_id = jobs[0].job_id.split("_")[0]
        write_submission(sweep_dir, array_id, [
            {"run_dir": str(run.run_dir), "overrides": run.overrides, "job_num": run.job_num, "job_id": job.job_id,
             "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
            for run, job in zip(todo, jobs)
        ])
        log.info("submitted array job %s: %d runs (%d finished and %d running skipped)",
                 array_id, len(todo), len(finished), len(running))
        if self.detach:
            log.info("detached: follow with `python -m repshift.status %s`", sweep_dir)
            return [_placeholder(run) for run in planned]

        failures = self._wait(todo, jobs)
        if failures:
            raise SweepFailed(_summary(failures, n_runs=len(planned), sweep_dir=sweep_dir))
        return [_placeholder(run) for run in planned]

    def _plan(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[PlannedRun]:
        """Each job's run folder, resolved as run_job will resolve it inside the job."""
        hydra_config = HydraConfig.instance().cfg
        planned = []
        try:
            for offset, overrides in enumerate(job_overrides):
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                HydraConfig.instance().set_config(cfg)
                run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
                force = OmegaConf.select(cfg, "force", default=False) is True
                device = str(OmegaConf.select(cfg, "device", default="auto"))
                gpu = device.startswith("cuda") or (device == "auto" and bool(
                    self.params.get("gpus_per_node") or self.params.get("gpus_per_task")))
                planned.append(PlannedRun(list(overrides), initial_job_idx + offset, run_dir.absolute(), force,
                                          _planned_identity(cfg), gpu))
        finally:
            HydraConfig.instance().cfg = hydra_config
        return planned

    def _check_request(self) -> None:
        if self._EXECUTOR == "slurm":
            check_request(self.params)

    def _submit(self, runs: list[PlannedRun], sweep_dir: Path) -> list:
        import submitit

        sweep_dir.mkdir(parents=True, exist_ok=True)
        params = dict(self.params)
        folder = params.pop("submitit_folder")
        max_num_timeout = params.pop("max_num_timeout", 0)
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=folder,
                                         **{f"{self._EXECUTOR}_max_num_timeout": max_num_timeout})
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        for run in runs:
            log.info("\t#%d : %s", run.job_num, " ".join(filter_overrides(run.overrides)))
        state = Singleton.get_state()
        calls = [(run.overrides, "hydra.sweep.dir", run.job_num, f"job_id_for_{run.job_num}", state) for run in runs]
        try:
            return executor.map_array(self, *zip(*calls))
        except submitit.core.utils.FailedJobError as error:  # sbatch refused the request
            raise LauncherConfigError(
                f"sbatch refused the array job ({_request_text(self.params)}):\n{_sbatch_message(error)}\n"
                "Change the request with hydra.launcher.<key>=... (see repshift/configs/hydra/launcher/slurm.yaml)"
            ) from None

    def _wait(self, runs: list[PlannedRun], jobs: list) -> list[Failure]:
        """Wait until SLURM has ended every job; log each failure as it happens; return them all.

        A job is over when SLURM says so, not when a result file appears: a requeued job (preemption,
        ``scontrol requeue``) may leave the error of its interrupted attempt behind and still run again.
        """
        pending = dict(enumerate(jobs))
        failures: list[Failure] = []
        done = 0
        while pending:
            states = slurm_states([job.job_id for job in pending.values()])
            for index, job in list(pending.items()):
                state = states.get(job.job_id, {}).get("state")
                if state in ACTIVE_STATES or (state is None and not job.done()):
                    continue  # still queued or running (None: SLURM does not list it yet, or forgot it)
                del pending[index]
                failure = _failure_of(runs[index], job, state or "UNKNOWN")
                if failure is None:
                    done += 1
                    log.info("done (%d/%d): %s", done, len(jobs), runs[index].run_dir)
                else:
                    failures.append(failure)
                    log.error("FAILED (job %s, %s): %s\n    %s\n    log: %s", failure.job_id, failure.state,
                              failure.run.run_dir, failure.error, failure.log_path)
            if pending:
                time.sleep(self.poll_s)
        return sorted(failures, key=lambda f: f.run.job_num)


def _planned_identity(cfg: DictConfig) -> Optional[Identity]:
    """The run's identity as the runner will compute it, but for the device (the job's, unknown here)."""
    task = copy.deepcopy(cfg)
    with open_dict(task):
        for key in ("hydra", "logger"):
            task.pop(key, None)
        task.train.pop("output", None)  # both name the run folder through Hydra's runtime, unset here
    try:
        config = OmegaConf.to_container(task, resolve=True)
        return identity.run_identity(config, parse_tasks(config["task"]), device="planned")
    except (OSError, ValueError, KeyError) as error:  # the job reports it, with its full message
        log.info("cannot tell whether %s is finished (%s): submitting it", cfg.hydra.sweep.subdir, error)
        return None


def _placeholder(run: PlannedRun) -> JobReturn:
    """What the sweeper gets for a run this launcher did not wait on (finished, running or detached)."""
    return JobReturn(overrides=run.overrides, working_dir=str(run.run_dir), status=JobStatus.COMPLETED)


def _failure_of(run: PlannedRun, job, state: str) -> Failure | None:
    """None when the run wrote its result; else why not, from SLURM's end state and submitit's record."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    if _has_result(run):
        return None
    log_path = job.paths.stderr
    if state in ENDED_WITHOUT_RESULT:
        return Failure(run, job.job_id, state, f"stopped by SLURM before writing a result ({state})", log_path)
    try:
        job.result()
    except FailedJobError as error:  # the run raised; its traceback is in the log
        return Failure(run, job.job_id, state, _last_error_line(str(error)), log_path)
    except UncompletedJobError:
        pass
    return Failure(run, job.job_id, state, f"ended without writing result.json (SLURM state {state})", log_path)


def _has_result(run: PlannedRun) -> bool:
    """Whether the job left its result (in its folder, or in the identity folder beside it when its folder held
    another run's result)."""
    if run.identity is not None:
        return run.finished() is not None
    try:
        RunRecord.read(run.run_dir)
        return True
    except RecordError:
        return False


def _last_error_line(text: str) -> str:
    """The exception line of a traceback embedded in submitit's message."""
    lines = [line for line in text.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    trace_end = next((i for i, line in enumerate(lines) if line.startswith("You can check full logs")), len(lines))
    return lines[trace_end - 1].strip() if trace_end else text.strip()


def _summary(failures: list[Failure], n_runs: int, sweep_dir: Path) -> str:
    lines = [f"{len(failures)} of {n_runs} runs failed (finished results are kept; relaunching the same "
             "command submits only the runs without a result):"]
    for f in failures:
        log_note = "" if f.log_path.exists() else "  (no log: the job never started)"
        lines += [f"  {f.run.run_dir}", f"      job {f.job_id}  {f.state}: {f.error}", f"      log: {f.log_path}{log_note}"]
    lines.append(f"Status of the whole sweep: python -m repshift.status {sweep_dir}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- submissions

def _active_runs(sweep_dir: Path) -> dict[str, tuple[str, str]]:
    """Run folders whose latest job is still pending or running: {run_dir: (job id, state)}."""
    latest = read_submissions(sweep_dir)
    if not latest:
        return {}
    states = slurm_states([run["job_id"] for run in latest.values()])
    return {run_dir: (run["job_id"], states[run["job_id"]]["state"]) for run_dir, run in latest.items()
            if run["job_id"] in states and states[run["job_id"]]["state"] in ACTIVE_STATES}


# ------------------------------------------------------------------------------- the request

def _checked_params(params: dict) -> dict:
    """Ints where submitit needs ints; a GPU count of 0 means no GPU request at all."""
    checked = dict(params)
    for key in _INT_KEYS:
        value = checked.get(key)
        if value is None:
            continue
        try:
            checked[key] = int(value)
        except (TypeError, ValueError):
            raise LauncherConfigError(f"hydra.launcher.{key}={value!r}: expected a whole number") from None
        if checked[key] < 0:
            raise LauncherConfigError(f"hydra.launcher.{key}={value}: must not be negative")
    for key in ("gpus_per_node", "gpus_per_task"):
        if checked.get(key) == 0:
            checked[key] = None
    return checked


def _request_text(params: dict) -> str:
    keys = ("partition", "account", "qos", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node",
            "gpus_per_task", "mem_gb", "timeout_min")
    return ", ".join(f"{k}={params[k]}" for k in keys if params.get(k) is not None)


def _sbatch_message(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if "error" in line.lower() and "sbatch" in line.lower()]
    return "\n".join(lines) or str(error).strip()


def _slurm_minutes(text: str) -> float:
    """Minutes in a SLURM time limit: 'infinite', 'MM', 'HH:MM:SS', 'D-HH:MM:SS', 'D-HH'."""
    if text in ("infinite", "UNLIMITED", "n/a", ""):
        return float("inf")
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = 0, parts[0], 0
    return (int(days or 0) * 24 + hours) * 60 + minutes + seconds / 60


def _gpus(gres: str) -> int:
    return sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))


def check_request(params: dict) -> None:
    """Fail with the key to change when no node of the partition can run one task of this request."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        raise LauncherConfigError(
            "hydra/launcher=slurm needs SLURM's sinfo and sbatch on PATH (none here). "
            "Run the sweep locally with hydra/launcher=basic or submitit_local, or bring up a test cluster "
            "with scripts/slurm/cluster.sh up")
    partition = params.get("partition")
    command = ["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%l"] + (["-p", str(partition)] if partition else [])
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise LauncherConfigError(f"SLURM does not answer ({' '.join(command)}): {proc.stderr.strip()}")
    rows = [line.split("|") for line in proc.stdout.split()]
    if not partition:  # the default partition carries a '*'
        rows = [r for r in rows if r[0].endswith("*")]
    if not rows and not partition:
        raise LauncherConfigError("this cluster has no default partition: set hydra.launcher.partition=... "
                                  "or REPSHIFT_SLURM_PARTITION")
    if not rows:
        available = [p.rstrip("*") for p in subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                                                                      timeout=60).stdout.split()]
        raise LauncherConfigError(
            f"hydra.launcher.partition={partition}: no such partition (or no nodes in it); available: "
            f"{', '.join(available) or 'none'}. Set hydra.launcher.partition=... or REPSHIFT_SLURM_PARTITION")
    name = partition or rows[0][0].rstrip("*")
    cpus = max(int(r[1]) for r in rows)
    mem_mib = max(int(re.sub(r"\D", "", r[2]) or 0) for r in rows)
    gpus = max(_gpus(r[3]) for r in rows)
    limit = max(_slurm_minutes(r[4]) for r in rows)
    tasks = params.get("tasks_per_node") or 1
    problems = []
    if (params.get("cpus_per_task") or 1) * tasks > cpus:
        problems.append(f"hydra.launcher.cpus_per_task={params['cpus_per_task']} x tasks_per_node={tasks}: the largest "
                        f"node has {cpus} CPUs (or set REPSHIFT_SLURM_CPUS)")
    if params.get("mem_gb") and params["mem_gb"] * 1024 > mem_mib:
        problems.append(f"hydra.launcher.mem_gb={params['mem_gb']}: the largest node has {mem_mib} MiB "
                        "(or set REPSHIFT_SLURM_MEM_GB)")
    wanted_gpus = params.get("gpus_per_node") or (params.get("gpus_per_task") or 0) * tasks
    if wanted_gpus > gpus:
        problems.append(f"GPUs per node {wanted_gpus} (hydra.launcher.gpus_per_node / gpus_per_task): the partition's "
                        f"nodes have at most {gpus} (set 0 for none, or REPSHIFT_SLURM_GPUS)")
    if params.get("timeout_min") and params["timeout_min"] > limit:
        problems.append(f"hydra.launcher.timeout_min={params['timeout_min']}: the partition allows {limit:.0f} minutes "
                        "(or set REPSHIFT_SLURM_TIME_MIN)")
    if problems:
        raise LauncherConfigError(f"SLURM partition {name} cannot run this request:\n  " + "\n  ".join(problems))
