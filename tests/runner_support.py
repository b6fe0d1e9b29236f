"""Helpers of the runner tests (tests/test_runner_*.py): one run in this process, as Hydra would start it."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write
from support import compose_run

from repshift.run import Run  # also registers the config resolvers


def run_here(workdir: Path, *overrides: str):
    """``python -m repshift.run <overrides>`` launched from ``workdir``, in this process: what Hydra does before it
    calls the task function (compose, work out the run folder), then the runner's :class:`~repshift.run.Run`.
    Returns the run's record, or the :class:`~repshift.run.RunFailed` that ``main`` would raise."""
    cfg = compose_run([f"paths.root_dir={workdir}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    named = Path(str(cfg.hydra.run.dir)).absolute()
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(named)
    HydraConfig.instance().set_config(cfg)
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    with contextlib.chdir(workdir):  # relative paths are the launch folder's
        return Run(task, named).outcome()


def named_folder(workdir: Path, *overrides: str) -> Path:
    """The folder a run of ``overrides`` is named after (before the runner settles on its folder)."""
    cfg = compose_run([f"paths.root_dir={workdir}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return Path(str(cfg.hydra.run.dir)).absolute()
