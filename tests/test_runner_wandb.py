"""W&B never loses a run: every call guarded and bounded, offline (or no W&B) with one warning on failure.

Online tests point W&B at a closed port on this machine (``WANDB_BASE_URL=http://127.0.0.1:9``): no traffic
leaves it, and a home folder of the test's own keeps any real credentials out of reach.
"""
import inspect
import logging
import time

import pandas as pd
import pytest
from support import QUICK, make_record
from support import run_module as run

from repshift.record import RunRecord
from repshift.wandb_log import NullLogger, WandbLogger, record_metrics, resolve_mode


def test_resolve_mode(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode(None) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(None) == "disabled"
    assert resolve_mode("offline") == "offline"  # explicit mode beats the env var
    with pytest.raises(ValueError, match="unknown W&B mode 'sometimes'"):
        resolve_mode("sometimes")


def test_wandb_disabled(wandb_env):
    with WandbLogger(mode="disabled", dir=wandb_env / "run") as lg:
        assert lg.mode == "disabled"
        lg.log_metrics({"top1": 1.0})
        lg.log_table("t", pd.DataFrame({"a": [1.0, 2.0]}))
    lg.finish()
    lg.finish()  # twice is fine
    assert not list((wandb_env / "run").glob("wandb/offline-run-*"))


def test_wandb_offline_two_runs_log_their_records(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    ids = []
    for i in range(2):
        run_dir = wandb_env / f"job{i}"
        lg = WandbLogger(project="repshift-test", name=f"job{i}", group="multirun", tags=("test",), dir=run_dir)
        lg.start({"job": i, "model": {"name": "deit_s"}})
        assert lg.mode == "offline"
        ids.append(lg.run.id)
        lg.log_record(make_record())
        assert lg.run is not None  # every call went through
        lg.finish()
        lg.finish()
        runs = list((run_dir / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        assert list(runs[0].glob("run-*.wandb"))
    assert ids[0] != ids[1]


def test_what_wandb_shows_comes_from_the_record():
    record = make_record()
    assert record_metrics(record) == {"metrics/top1": 79.0, "metrics/top5": 94.5, "metrics/n": 50000,
                                      "metrics/skipped": 0, "bench/throughput": 1000.0, "gmacs": 2.99}


def test_null_logger_has_the_wandb_loggers_interface_and_writes_nothing(tmp_path, monkeypatch):
    public = {name for name, member in inspect.getmembers(WandbLogger, inspect.isfunction) if not name.startswith("_")}
    assert public <= set(dir(NullLogger)), public - set(dir(NullLogger))  # logger=none can stand in everywhere
    for name in public:
        assert (list(inspect.signature(getattr(NullLogger, name)).parameters)
                == list(inspect.signature(getattr(WandbLogger, name)).parameters)), name
    monkeypatch.chdir(tmp_path)
    with NullLogger().start({"a": 1}) as lg:
        lg.log_metrics({"x": 1})
        lg.log_record(make_record())
        assert lg.run is None and lg.mode == "none"
    assert list(tmp_path.iterdir()) == []


def test_a_failing_or_hanging_call_turns_wandb_off_with_one_warning(caplog):
    class DeadService:
        def log(self, *args, **kwargs):
            raise ConnectionResetError("Connection lost")

    class HungService:
        def log(self, *args, **kwargs):
            time.sleep(30)

    logger = WandbLogger(mode="disabled", call_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="repshift.wandb"):
        logger.run = DeadService()
        logger.log_metrics({"train/loss": 1.0})
        assert logger.run is None
        logger.log_metrics({"train/loss": 0.5})  # later calls are no-ops, not errors
        logger.run = HungService()
        started = time.monotonic()
        logger.log_metrics({"train/loss": 0.25})
        assert time.monotonic() - started < 5 and logger.run is None
    assert [r.getMessage().split(";")[0] for r in caplog.records if r.name == "repshift.wandb"] == [
        "W&B logging failed (ConnectionResetError: Connection lost)", "W&B logging did not return within 0.5 s"]


def offline_network(tmp_path) -> dict:
    """W&B online, pointed at a closed port here, with a home, config and cache of the test's own."""
    return {"WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9", "HOME": str(tmp_path / "home"),
            "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
            "WANDB_DATA_DIR": str(tmp_path / "wandb-data"), "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}


def test_wandb_online_without_a_key_goes_offline_with_one_warning(tmp_path, monkeypatch, caplog):
    for name, value in offline_network(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger="repshift.wandb"):
        logger = WandbLogger(dir=tmp_path / "run", init_timeout=4).start({"a": 1})
    try:
        assert logger.mode == "offline" and logger.run is not None
        (warning,) = [r for r in caplog.records if r.name == "repshift.wandb"]
        assert warning.getMessage().startswith("W&B online run could not start (UsageError")
        logger.log_record(make_record())
    finally:
        logger.finish()
    assert list((tmp_path / "run/wandb").glob("offline-run-*"))


def test_wandb_online_without_network_still_writes_the_result(tmp_path):
    """As a user runs it, with an API key: wandb.init times out (``logger.init_timeout``), the run goes on
    offline and writes its result."""
    started = time.monotonic()
    proc = run(tmp_path, *QUICK, "task=[bench]", "logger=wandb", "logger.init_timeout=4", "experiment_name=wb",
               env={**offline_network(tmp_path), "WANDB_API_KEY": "0" * 40}, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    (path,) = (tmp_path / "outputs/smoke/wb").glob("*/result.json")
    assert RunRecord.read(path).bench.throughput > 0
    warnings = [line for line in output.splitlines() if "W&B" in line]
    assert len(warnings) == 1 and "W&B online run could not start (CommError" in warnings[0], warnings
    assert "logging offline instead" in warnings[0]
    assert list((path.parent / "wandb").glob("offline-run-*"))  # it went on offline, in the run folder
    assert time.monotonic() - started < 300
