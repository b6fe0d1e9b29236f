"""Sweeps that fail cheaply: inputs checked before a model is built, a sweep whose first runs fail alike stops
with one summary, and a failed run's memory is released (a sweep of failing runs stays at about one run's)."""
import subprocess
import sys
import textwrap

import pytest
from runner_support import run_here
from support import ROOT, make_record
from support import run_module as run

import repshift.run
from repshift import status
from repshift.run import RunFailed, SweepGuard, SweepStopped

TINY = ["smoke=on", "model=tiny"]


def test_a_missing_tokenizer_is_found_before_any_model_is_built(tmp_path, monkeypatch):
    def build(cfg):
        raise AssertionError("a model was built before the inputs were checked")

    monkeypatch.setattr(repshift.run, "build", build)
    umt = ["smoke=video", "model=umt_b", "dataset=msrvtt", "task=[evaluate]"]
    failed = run_here(tmp_path, *umt, "model.tokenizer=bert-base-cased")  # a hub name not in the cache
    assert isinstance(failed, RunFailed) and failed.early
    assert "model.tokenizer=bert-base-cased: BERT tokenizer 'bert-base-cased' is neither a local folder nor in " \
           "the Hugging Face cache" in str(failed)
    assert "(checked before building the model)" in str(failed) and "while checking the inputs" in str(failed)
    # the same check names a missing tokenizer folder, checkpoint and data root
    for override, message in [(f"model.tokenizer={tmp_path}/vocab", f"model.tokenizer={tmp_path}/vocab: no such folder"),
                              ("model.checkpoint=nope.pth", "model.checkpoint=nope.pth: no such file"),
                              ("dataset.generate=null", f"dataset.root={tmp_path}/data/synthetic_video-smoke: no such folder")]:
        failed = run_here(tmp_path, *umt, override)
        assert message in str(failed), str(failed)


def _failure(signature=("InputError", "model.checkpoint"), early=True) -> RunFailed:
    return RunFailed("run failed while checking the inputs: ...", signature, early, None)


@pytest.mark.parametrize(
    "outcomes,keep_going,stops",
    [
        ([_failure()] * 3, False, True),
        ([_failure()] * 3, True, False),  # keep_going=true: the user goes on
        ([_failure(), _failure(("InputError", "model.tokenizer")), _failure()], False, False),  # not the same way
        ([_failure(early=False)] * 3, False, False),  # failed after doing work: not a setup problem
        ([make_record()] + [_failure()] * 3, False, False),  # not the first runs
    ],
)
def test_the_sweep_guard_stops_only_when_the_first_runs_fail_alike_before_work(outcomes, keep_going, stops):
    guard, stopped = SweepGuard(), False
    for outcome in outcomes:
        try:
            guard.after(outcome, keep_going=keep_going, sweep=True)
        except SweepStopped as error:
            stopped = "the first 3 runs of this sweep failed the same way before doing any work" in str(error)
            break
    assert stopped == stops


def test_a_sweep_whose_first_runs_fail_alike_stops_with_one_summary(tmp_path):
    proc = run(tmp_path, "-m", *TINY, "task=[evaluate]", "model.checkpoint=missing.pth", "experiment_name=stop",
               "seed=0,1,2,3,4,5", check=False)
    assert proc.returncode != 0
    assert "the first 3 runs of this sweep failed the same way before doing any work" in proc.stderr
    assert "keep_going=true runs the rest anyway" in proc.stderr and "model.checkpoint=missing.pth: no such file" in proc.stderr
    attempted = sorted(p.parent.name for p in (tmp_path / "outputs/smoke/stop").glob(f"*/{status.RUN_STATE}"))
    assert [name.split("seed=")[1].split(",")[0] for name in attempted] == ["0", "1", "2"]  # seeds 3-5 never ran
    assert all(status.read_state(tmp_path / "outputs/smoke/stop" / name)["state"] == "failed" for name in attempted)


#: A ViT of 21.7 M parameters (87 MB), built by every run of the sweep below and then failing.
BIG = ["model=tiny", "model.kwargs.embed_dim=384", "model.kwargs.depth=12", "model.kwargs.num_heads=6"]
MODEL_MB = 87

DRIVER = """
import os, runpy, sys
import repshift.run

def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

resident, outcome = [], repshift.run.Run.outcome

def measured(self):  # the memory held when each run starts: what the runs before it left behind
    resident.append(resident_mb())
    return outcome(self)

repshift.run.Run.outcome = measured
sys.argv = ["repshift.run", *sys.argv[1:]]
try:
    runpy.run_module("repshift.run", run_name="__main__")
except SystemExit:
    pass
resident.append(resident_mb())
print("RESIDENT_MB", *(round(r) for r in resident))
"""


def test_a_sweep_of_failing_runs_that_build_a_model_stays_within_one_model_of_memory(tmp_path):
    """Each run builds the model and then fails (the classification evaluator needs class logits, and this model
    has none): a failure after the build, as a missing tokenizer was before the inputs were checked first."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    proc = subprocess.run(
        [sys.executable, str(script), "-m", "smoke=on", *BIG, "model.kwargs.num_classes=0", "task=[evaluate]",
         "experiment_name=memory", "keep_going=true", "seed=0,1,2,3,4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env={"PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    line = next((line for line in proc.stdout.splitlines() if line.startswith("RESIDENT_MB")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-3000:]
    resident = [float(x) for x in line.split()[1:]]
    assert len(resident) == 6 and proc.stdout.count("needs class logits") >= 5  # five runs, each built and failed
    # after the first run, memory stays put: five retained models would add 4 x 87 MB
    assert resident[-1] - resident[1] < MODEL_MB, resident
