"""Run identity, one run record, empty runs, logs and status: a result is returned only for the run that made it."""
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from runner_support import named_folder, run_here
from support import QUICK, ROOT, make_record

from repshift import identity, status
from repshift.record import RunRecord
from repshift.run import RunFailed

EVAL = [*QUICK, "task=[evaluate]", "dataset.limit=8"]
BENCH = [*QUICK, "task=[bench]"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A launch folder with its own data/ and outputs/, shared by this module's runs."""
    return tmp_path_factory.mktemp("identity")


def records(folder: Path) -> dict[str, RunRecord]:
    return {p.parent.name: RunRecord.read(p) for p in sorted(folder.glob("*/result.json"))}


# --- identity: skip only the same run ---------------------------------------------------------


def test_a_rerun_skips_only_a_run_of_the_same_identity(workdir):
    first = run_here(workdir, *EVAL, "experiment_name=roots")
    result = named_folder(workdir, *EVAL, "experiment_name=roots") / "result.json"
    stamp = result.stat().st_mtime_ns
    again = run_here(workdir, *EVAL, "experiment_name=roots")
    assert again.identity == first.identity and result.stat().st_mtime_ns == stamp  # skipped: the same run

    # dataset.root is left out of the folder name, so this run is named like the first: it is a different run
    # (another config), is not skipped, and does not overwrite the first one's result
    other = run_here(workdir, *EVAL, "experiment_name=roots", f"dataset.root={workdir}/data/shapebench-other")
    assert other.identity.key != first.identity.key and other.config["dataset"]["root"].endswith("shapebench-other")
    found = records(workdir / "outputs/smoke/roots")
    assert found == {result.parent.name: first, f"{result.parent.name}@{other.identity.key[:8]}": other}
    assert result.stat().st_mtime_ns == stamp


def test_a_cpu_result_is_never_returned_for_a_cuda_request(workdir):
    cpu = run_here(workdir, *BENCH, "experiment_name=devices", "device=cpu")
    assert cpu.identity.device == "cpu"
    cuda = run_here(workdir, *BENCH, "experiment_name=devices", "device=cuda")
    if not torch.cuda.is_available():  # refused plainly, not "skipped" with the CPU result
        assert isinstance(cuda, RunFailed) and "device=cuda asked for, but torch sees no CUDA device" in str(cuda)
    else:
        assert cuda.identity.device.startswith("cuda:") and cuda.identity.key != cpu.identity.key
    # the identity the runner looks for on a GPU does not match the CPU result, whose own identity does
    named = named_folder(workdir, *BENCH, "experiment_name=devices", "device=cpu")
    assert identity.run_identity(cpu.config, ["bench"], "cpu") == cpu.identity
    assert identity.find_finished(named, cpu.identity) == named
    assert identity.find_finished(named, identity.run_identity(cpu.config, ["bench"], "cuda:NVIDIA H200")) is None


def tiny_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", embed_dim=32, depth=8, num_heads=2, num_classes=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def test_checkpoints_that_sanitise_alike_or_change_in_place_are_different_runs(workdir):
    slashed = tiny_checkpoint(workdir / "ck/good.pth", seed=1)
    underscored = Path(shutil.copyfile(slashed, workdir / "ck_good.pth"))  # the same file under another path
    args = [*BENCH, "experiment_name=checkpoints"]
    a = run_here(workdir, *args, "model.checkpoint=ck/good.pth")
    b = run_here(workdir, *args, "model.checkpoint=ck_good.pth")
    assert a.weights.source == f"file:{slashed}" and b.weights.source == f"file:{underscored}"
    assert a.identity.inputs[0].sha256 == b.identity.inputs[0].sha256 and a.identity.key != b.identity.key
    assert set(records(workdir / "outputs/smoke/checkpoints")) == {a.run_name, b.run_name}  # two folders

    tiny_checkpoint(underscored, seed=2)  # the same name, other weights: a new run, the old result kept
    c = run_here(workdir, *args, "model.checkpoint=ck_good.pth")
    assert c.identity.inputs[0].sha256 != b.identity.inputs[0].sha256
    assert c.run_name == f"{b.run_name}@{c.identity.key[:8]}"
    assert records(workdir / "outputs/smoke/checkpoints")[b.run_name] == b


def test_labels_that_sanitise_alike_are_different_runs(workdir):
    e = run_here(workdir, *BENCH, "experiment_name=labels", "+label='é'")
    u = run_here(workdir, *BENCH, "experiment_name=labels", "+label='ü'")
    assert e.run_name != u.run_name and e.identity.key != u.identity.key
    assert (e.config["label"], u.config["label"]) == ("é", "ü")


def test_a_folder_holding_another_result_is_never_overwritten(workdir, caplog):
    named = named_folder(workdir, *BENCH, "experiment_name=taken")
    named.mkdir(parents=True)
    theirs = make_record().write(named).read_bytes()
    mine = run_here(workdir, *BENCH, "experiment_name=taken")
    assert (named / "result.json").read_bytes() == theirs
    assert mine.run_name == f"{named.name}@{mine.identity.key[:8]}"

    broken = named_folder(workdir, *BENCH, "experiment_name=broken-record")
    broken.mkdir(parents=True)
    (broken / "result.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="repshift.run"):
        kept = run_here(workdir, *BENCH, "experiment_name=broken-record")
    assert (broken / "result.json").read_text() == "{}"  # reported, kept as it is
    assert f"{broken} holds a result.json that is not a valid run record (schema None" in caplog.text
    assert kept.run_name.startswith(f"{broken.name}@")


# --- nothing empty is done; logs and status tell the truth ------------------------------------


def test_an_evaluation_of_nothing_fails_without_a_result(workdir):
    root = workdir / "unreadable"
    for name in ("a", "b"):
        (root / "val" / name).mkdir(parents=True)
        (root / "val" / name / "x.JPEG").write_bytes(b"not a jpeg")
    args = [*QUICK, "task=[evaluate]", "dataset=imagenet", f"dataset.root={root}", "dataset.generate=null", "dataset.limit=null",
            "dataset.skip_corrupt=true", "dataset.num_workers=0", "model.kwargs.num_classes=2", "experiment_name=empty"]
    failed = run_here(workdir, *args)
    assert isinstance(failed, RunFailed) and "nothing was evaluated" in str(failed)
    folder = named_folder(workdir, *args)
    assert not (folder / "result.json").exists()
    assert "Traceback" in (folder / "run.log").read_text()
    (row,) = status.sweep_status(folder.parent)
    assert row["status"] == "failed" and "nothing was evaluated" in row["note"] and str(folder / "run.log") in row["note"]


def test_a_failed_run_logs_its_traceback_and_shows_as_failed(workdir):
    args = ["smoke=on", "model=tiny", "task=[evaluate]", "model.kwargs.num_classes=0", "experiment_name=failing"]
    failed = run_here(workdir, *args)
    folder = named_folder(workdir, *args)
    assert isinstance(failed, RunFailed) and failed.early and failed.run_dir == folder
    assert f"(traceback in {folder / 'run.log'})" in str(failed)
    log = (folder / "run.log").read_text()
    assert "Traceback (most recent call last)" in log and "needs class logits" in log
    assert status.read_state(folder)["state"] == "failed"


def test_status_tells_done_invalid_running_and_failed_apart(tmp_path):
    sweep = tmp_path / "sweep"
    make_record().write(sweep / "done")
    (sweep / "empty").mkdir()
    (sweep / "empty/result.json").write_text("{}")
    wrong = json.loads(make_record().model_dump_json(by_alias=True))
    wrong["bench"] = "fast"
    (sweep / "wrong").mkdir()
    (sweep / "wrong/result.json").write_text(json.dumps(wrong))
    status.mark_running(sweep / "running", "0123456789abcdef")  # this process: alive
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    status.mark_running(sweep / "killed", "0123456789abcdef")
    state = json.loads((sweep / "killed" / status.RUN_STATE).read_text())
    (sweep / "killed" / status.RUN_STATE).write_text(json.dumps({**state, "pid": int(gone.stdout)}))
    status.mark_running(sweep / "failed", "0123456789abcdef")
    status.mark_failed(sweep / "failed", "ValueError: boom")

    rows = {r["run"]: r for r in status.sweep_status(sweep)}
    assert {run: r["status"] for run, r in rows.items()} == {
        "done": "done", "empty": "invalid", "wrong": "invalid", "running": "running", "killed": "failed",
        "failed": "failed"}
    assert rows["done"]["identity"] == make_record().identity.key[:8]
    assert rows["empty"]["note"] == f"{sweep / 'empty/result.json'}: schema None is not 'repshift.result/3'; not a repshift run record"
    assert rows["wrong"]["note"].startswith(f"{sweep / 'wrong/result.json'}: bench: Input should be")
    assert f"pid {os.getpid()}" in rows["running"]["note"] and "is gone without a result" in rows["killed"]["note"]
    assert rows["failed"]["note"].startswith("ValueError: boom; traceback in")


def test_status_of_a_folder_where_nothing_is_readable(tmp_path, capsys):
    sweep = tmp_path / "table5"
    for name, text in (("a", ""), ("b", "not json"), ("c", "[1, 2]")):
        (sweep / name).mkdir(parents=True)
        (sweep / name / "result.json").write_text(text)
    assert status.main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert f"{sweep}: 3 runs: 0 done, 3 invalid, 0 running, 0 failed, 0 missing" in printed
    assert "not JSON" in printed and "expected a JSON object, got list" in printed


def test_status_finds_the_folder_an_experiment_writes_into(tmp_path, capsys):
    make_record().write(tmp_path / "table2" / "model=umt_b")
    assert status.main([str(tmp_path), "--experiment", "fig1"]) == 0  # fig1's runs land in table2's folder
    assert f"{tmp_path / 'table2'}: 1 run: 1 done" in capsys.readouterr().out


# --- training: force retrains, a resumed run says so ------------------------------------------


def test_force_retrains_and_a_resumed_training_logs_where_it_resumed(workdir, caplog):
    args = [*QUICK, "task=[train]", "train.epochs=1", "train.batch_size=4", "train.warmup_epochs=0",
            "experiment_name=training"]
    first = run_here(workdir, *args)
    folder = named_folder(workdir, *args)
    checkpoint = folder / "checkpoint.pth"
    assert first.train.resumed_from in (0, None) and checkpoint.exists()

    (folder / "result.json").unlink()  # a run killed after its last checkpoint, relaunched
    with caplog.at_level(logging.INFO):
        resumed = run_here(workdir, *args)
    assert resumed.train.resumed_from == 1
    assert f"train.output={checkpoint} exists: training resumes from it" in caplog.text
    assert f"training resumed from {checkpoint} after epoch 1 of 1" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = run_here(workdir, *args, "force=true")
    assert again.train.resumed_from in (0, None)  # trained from the start, not resumed from the old checkpoint
    assert (folder / "checkpoint.pth.replaced").exists() and (folder / "result.json.replaced").exists()
    assert "force=true: moved" in caplog.text and RunRecord.read(folder) == again


# --- one record -------------------------------------------------------------------------------


RUNNER_MODULES = ("run.py", "tasks.py", "identity.py", "settings.py", "status.py", "launchers.py", "wandb_log.py")


@pytest.mark.parametrize("module", RUNNER_MODULES)
def test_the_runner_side_reads_and_writes_run_records_only(module):
    source = (ROOT / "repshift" / module).read_text()
    assert "repshift.report" not in source  # no report module (results.py's dicts are gone from this side)
    if module in ("run.py", "status.py", "launchers.py", "identity.py"):
        assert "RunRecord" in source


def test_the_slurm_launcher_plans_with_the_runners_identity(workdir):
    """The submitting host works out each run's identity as the runner will; it cannot know the GPU a job gets,
    so a result counts as finished when all but the GPU's name match, and never across CPU and GPU."""
    from hydra.core.hydra_config import HydraConfig
    from support import compose_run

    from repshift.launchers import PlannedRun, _planned_identity

    cpu = run_here(workdir, *BENCH, "experiment_name=planned", "device=cpu")
    cfg = compose_run([f"paths.root_dir={workdir}", *BENCH, "experiment_name=planned", "device=cpu"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    planned = _planned_identity(cfg)
    assert (planned.config, planned.inputs, planned.code) == (cpu.identity.config, cpu.identity.inputs, cpu.identity.code)
    named = named_folder(workdir, *BENCH, "experiment_name=planned", "device=cpu")
    assert PlannedRun([], 0, named, False, planned, gpu=False).finished() == named
    assert PlannedRun([], 0, named, False, planned, gpu=True).finished() is None  # a GPU job: not this CPU result
    other = planned.model_copy(update={"config": "0" * 64})
    assert PlannedRun([], 0, named, False, other, gpu=False).finished() is None
