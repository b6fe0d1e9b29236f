"""Sweeps on a real SLURM: arrays, skipping finished runs, failures, cancellation, requeue, status.

Every job asks for 1 CPU, 1 GB and no GPU (REPSHIFT_SLURM_* below); the node has 2 CPUs, so at
most two runs go at once. Each test works in its own tmp folder.
"""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repshift.configs import CONFIG_DIR

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["smoke=on", "model=tiny"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.poll_s=1"]
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "WANDB_MODE": "disabled",
    "REPSHIFT_SLURM_GPUS": "0",
    "REPSHIFT_SLURM_CPUS": "1",
    "REPSHIFT_SLURM_MEM_GB": "1",
    "REPSHIFT_SLURM_TIME_MIN": "20",
}
ENV.pop("REPSHIFT_SLURM_PARTITION", None)


def sh(args, cwd, env=None, check=True, timeout=900):
    proc = subprocess.run(args, cwd=cwd, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    proc.text = proc.stdout + proc.stderr
    print(f"$ {' '.join(map(str, args))}\n{proc.text[-6000:]}")
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {' '.join(map(str, args))}\n{proc.text[-4000:]}")
    return proc


def repshift_run(workdir, *args, **kwargs):
    return sh([sys.executable, "-m", "repshift.run", *args], cwd=workdir, **kwargs)


def start_run(workdir, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "repshift.run", *args], cwd=workdir, env={**ENV, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=900):
    out, _ = proc.communicate(timeout=timeout)
    print(out[-6000:])
    return out


def status(sweep_dir):
    return sh([sys.executable, "-m", "repshift.status", str(sweep_dir)], cwd=ROOT)


def wait_for(what, predicate, timeout=600, every=0.5):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def submissions(sweep_dir):
    return sorted(Path(sweep_dir).glob(".submissions/*.json"), key=lambda p: p.stat().st_mtime)


def latest_submission(sweep_dir):
    found = submissions(sweep_dir)
    return json.loads(found[-1].read_text()) if found else None


def slurm_state(job_id):
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    return out.strip().splitlines()[0] if out.strip() else None


def sacct_states(job_id, duplicates=False):
    args = ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State"] + (["-D"] if duplicates else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line]


def ended(job_id):
    """Every state SLURM recorded for the job (requeued attempts first), once its last attempt has ended."""
    states = [state for _, state in sacct_states(job_id, duplicates=True)]
    return states if states and states[-1] not in ("PENDING", "RUNNING", "COMPLETING") else None


def results_under(folder):
    return sorted(Path(folder).rglob("result.json"))


def smoke_data(data_dir):
    """Generate the smoke ShapeBench once, so parallel jobs do not race to create it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import repshift.run  # noqa: F401 - registers the config resolvers
    from repshift.data import shapebench

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("run", overrides=["smoke=on", f"paths.data_dir={data_dir}"])
    shapebench.ensure(cfg.dataset.root, **cfg.dataset.generate, img_size=cfg.dataset.img_size, progress=False)


@pytest.fixture
def workdir(tmp_path):
    smoke_data(tmp_path / "data")
    return tmp_path


# ------------------------------------------------------------------------------------------


def sweep_size(experiment):
    """How many runs the experiment's sweep has: the product of its swept values."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("run", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    return math.prod(len(str(values).split(",")) for values in cfg.hydra.sweeper.params.values())


def test_table5_array_lands_every_result_and_a_rerun_submits_nothing(workdir):
    n = sweep_size("table5")  # models x methods
    outputs = workdir / "outputs/smoke"
    make = ["make", "-s", "-C", str(ROOT), "reproduce-table5", "SMOKE=1", "LAUNCHER=slurm", f"OUTPUTS={outputs}",
            f"VENV={Path(sys.executable).parents[1]}",
            f"ARGS=paths.output_dir={outputs} paths.data_dir={workdir}/data hydra.launcher.poll_s=1"]
    first = sh(make, cwd=ROOT)
    sweep = outputs / "table5"
    (record,) = [json.loads(p.read_text()) for p in submissions(sweep)]
    array = record["array_job_id"]
    assert len(record["runs"]) == n and {r["job_id"] for r in record["runs"]} == {f"{array}_{i}" for i in range(n)}
    assert f"submitted array job {array}: {n} runs" in first.text
    assert sorted(state for _, state in sacct_states(array)) == ["COMPLETED"] * n
    found = results_under(sweep)
    assert len(found) == n
    assert {json.loads(p.read_text())["env"]["slurm_array_job_id"] for p in found} == {array}  # run by the array
    assert "Table 5" in first.stdout and "77.8" in first.stdout  # the report followed, paper beside ours
    stamps = {p: p.stat().st_mtime_ns for p in found}

    again = sh(make, cwd=ROOT)
    assert f"nothing to submit: {n} finished, 0 queued or running" in again.text
    assert len(submissions(sweep)) == 1  # no second array
    assert {p: p.stat().st_mtime_ns for p in results_under(sweep)} == stamps
    table = status(sweep).stdout
    assert f"{n} runs: {n} done, 0 running, 0 failed, 0 missing" in table
    assert table.count("COMPLETED") == n


def test_failed_and_cancelled_runs_are_summarised_and_a_relaunch_runs_only_them(workdir):
    # a good run, a bad override (ratio 1.5), and a third run cancelled once it runs (two run at a time)
    sweep_args = ["-m", *QUICK, "task=[bench]", "compress.ratio=0.2,1.5,0.1", "experiment_name=failures", *SLURM,
                  "hydra.launcher.array_parallelism=2"]
    sweep = workdir / "outputs/smoke/failures"
    proc = start_run(workdir, *sweep_args)
    record = wait_for("the submission record", lambda: latest_submission(sweep))
    good, bad, cancelled = record["runs"]
    wait_for(f"job {cancelled['job_id']} to run", lambda: slurm_state(cancelled["job_id"]) == "RUNNING", every=0.2)
    subprocess.run(["scancel", cancelled["job_id"]], check=True)
    out = finish(proc)
    assert proc.returncode != 0
    assert "2 of 3 runs failed" in out and "Traceback" not in out  # a summary, not the first traceback
    summary = out[out.index("2 of 3 runs failed"):]
    for run in (bad, cancelled):
        assert run["run_dir"] in summary and f"log: {run['stderr']}" in summary
    assert f"job {bad['job_id']}  FAILED: " in summary and "compress.ratio=1.5: expected a number < 1" in summary
    assert f"job {cancelled['job_id']}  CANCELLED" in summary
    # the log named holds the error (refused before anything was built: the settings check)
    assert "compress.ratio=1.5: expected a number < 1" in Path(bad["stderr"]).read_text()
    kept = Path(good["run_dir"]) / "result.json"
    stamp = kept.stat().st_mtime_ns
    assert dict(sacct_states(bad["job_id"]))[bad["job_id"]] == "FAILED"  # not COMPLETED, as with Hydra's plugin

    table = status(sweep).stdout
    assert "3 runs: 1 done, 0 running, 2 failed, 0 missing" in table
    assert bad["stderr"] in table and cancelled["stderr"] in table

    relaunch = repshift_run(workdir, *sweep_args, check=False)
    assert relaunch.returncode != 0  # the bad override fails again, on its own
    assert f"finished, not submitted: {good['run_dir']}" in relaunch.text
    second = latest_submission(sweep)
    assert second["array_job_id"] != record["array_job_id"]
    assert [r["run_dir"] for r in second["runs"]] == [bad["run_dir"], cancelled["run_dir"]]
    assert "1 of 3 runs failed" in relaunch.text
    assert (Path(cancelled["run_dir"]) / "result.json").exists()
    assert kept.stat().st_mtime_ns == stamp
    assert "3 runs: 2 done, 0 running, 1 failed, 0 missing" in status(sweep).stdout


def test_requeued_training_resumes_from_its_checkpoint_with_the_same_result(workdir):
    from repshift.wandb_log import run_id_for

    args = ["-m", *QUICK, "task=[train,evaluate]", "compress=none", "logger=wandb", "train.epochs=4", "train.batch_size=4",
            "+copy=reference,requeued", "experiment_name=requeue", *SLURM, "hydra.launcher.array_parallelism=2"]
    sweep = workdir / "outputs/smoke/requeue"
    proc = start_run(workdir, *args, env={"WANDB_MODE": "offline"})
    record = wait_for("the submission record", lambda: latest_submission(sweep))
    (reference,) = [r for r in record["runs"] if "copy=reference" in r["run_dir"]]
    (victim,) = [r for r in record["runs"] if "copy=requeued" in r["run_dir"]]
    checkpoint = Path(victim["run_dir"]) / "checkpoint.pth"  # train.output's default
    wait_for("the first epoch checkpoint", checkpoint.exists, every=0.2)
    subprocess.run(["scontrol", "requeue", victim["job_id"]], check=True)
    # SLURM holds a requeued job for BeginTime (~2 min); release it at once to keep the test short
    wait_for("the requeued job to pend", lambda: slurm_state(victim["job_id"]) == "PENDING")
    subprocess.run(["scontrol", "update", f"JobId={victim['job_id']}", "StartTime=now"], check=True)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]

    # the launcher returns on the result file; SLURM closes the job a moment later
    states = wait_for("the job's end in sacct", lambda: ended(victim["job_id"]))
    assert states == ["REQUEUED", "COMPLETED"], states
    ref = json.loads((Path(reference["run_dir"]) / "result.json").read_text())
    req = json.loads((Path(victim["run_dir"]) / "result.json").read_text())
    assert req["train"]["resumed_from"] >= 1 and ref["train"]["resumed_from"] == 0

    def without_time(history):
        return [{k: v for k, v in entry.items() if k != "time_s"} for entry in history]

    assert len(req["train"]["history"]) == 4
    # same losses (to float noise: two processes on a shared CPU), same accuracies
    for resumed, uninterrupted in zip(without_time(req["train"]["history"]), without_time(ref["train"]["history"])):
        assert resumed == pytest.approx(uninterrupted, rel=1e-6)
    assert req["metrics"] == ref["metrics"]
    log = (Path(victim["run_dir"]) / "run.log").read_text()
    assert log.count("epoch 1:") == 1 and log.count("epoch 4:") == 1  # epoch 1 was not redone

    # one W&B run per folder, its id derived from the folder: the requeued attempt continued it
    attempts = sorted((Path(victim["run_dir"]) / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and {p.name.rsplit("-", 1)[1] for p in attempts} == {run_id_for(victim["run_dir"])}
    (ref_run,) = (Path(reference["run_dir"]) / "wandb").glob("offline-run-*")
    assert ref_run.name.rsplit("-", 1)[1] == run_id_for(reference["run_dir"]) != run_id_for(victim["run_dir"])


def test_a_request_no_node_can_meet_fails_before_submitting(workdir):
    base = ["-m", *QUICK, "task=[bench]", "experiment_name=toolarge", *SLURM]
    too_big = repshift_run(workdir, *base, "hydra.launcher.cpus_per_task=64", "hydra.launcher.mem_gb=4096", check=False)
    assert too_big.returncode != 0 and "Traceback" not in too_big.text
    assert "hydra.launcher.cpus_per_task=64 x tasks_per_node=1: the largest node has 2 CPUs" in too_big.text
    assert "hydra.launcher.mem_gb=4096: the largest node has" in too_big.text
    no_partition = repshift_run(workdir, *base, "hydra.launcher.partition=nope", check=False)
    assert no_partition.returncode != 0 and "hydra.launcher.partition=nope: no such partition" in no_partition.text
    assert not submissions(workdir / "outputs/smoke/toolarge")


def test_detach_returns_at_once_and_status_follows_the_sweep(workdir):
    outputs = workdir / "outputs/smoke"
    make = ["make", "-s", "-C", str(ROOT), "SMOKE=1", f"OUTPUTS={outputs}", f"VENV={Path(sys.executable).parents[1]}"]
    args = (f"ARGS=paths.output_dir={outputs} paths.data_dir={workdir}/data "
            "hydra.sweeper.params.model=deit_t hydra.sweeper.params.method=base")
    queued = sh([*make, "reproduce-table5", "LAUNCHER=slurm", "DETACH=1", args], cwd=ROOT)
    assert "detached: follow with" in queued.text and "queued: follow with 'make status EXP=table5 SMOKE=1'" in queued.text
    assert not list((outputs / "table5").rglob("result.json"))  # make returned before the run could finish
    record = latest_submission(outputs / "table5")
    assert len(record["runs"]) == 1
    early = sh([*make, "status", "EXP=table5"], cwd=ROOT).stdout
    # by the time status has started (seconds on a busy machine) the short job may be done already
    assert "1 run: 0 done, 1 running" in early or "1 run: 1 done, 0 running" in early
    assert str(record["array_job_id"]) in early
    wait_for("the detached job to finish",
             lambda: [state for _, state in sacct_states(record["array_job_id"])] == ["COMPLETED"])
    assert "1 run: 1 done, 0 running, 0 failed, 0 missing" in sh([*make, "status", "EXP=table5"], cwd=ROOT).stdout
