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
