"""Shared fixtures (the helpers they use are in support.py, which tests import by name).

Test tiers (markers in pyproject.toml):
- default (`make test`): unit tests and the quick end-to-end runs (subprocess / make with SMOKE=1);
- `slow` (`make test-slow`): the long SMOKE sweeps (Fig. 5, the readings, Table 2, Table 6, Table 7);
- `tests/cluster/` (`make test-cluster`): the real single-node SLURM tier.
`.ci/run` runs all three.
"""
import pytest
from support import ToyAdapter

from repshift.patch import register_adapter, unregister_adapter


@pytest.fixture
def toy_adapter():
    adapter = register_adapter(ToyAdapter())
    yield adapter
    unregister_adapter(adapter.family)


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """Keep every W&B file in tmp_path and make sure nothing goes online."""
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return tmp_path
