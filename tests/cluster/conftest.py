"""The cluster tier: tests against a real SLURM (`make test-cluster` brings a one-node cluster up).

Collected only with REPSHIFT_CLUSTER_TESTS=1, so the default `make test` never needs root or SLURM.
"""
import os
import subprocess
import time

import pytest

ENABLED = os.environ.get("REPSHIFT_CLUSTER_TESTS") == "1"
if not ENABLED:
    collect_ignore_glob = ["test_*.py"]


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs a running SLURM cluster (make test-cluster)")


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster():
    """Fail (not skip) when asked to run without a cluster: skipping is make test-cluster's decision."""
    state = []
    for _ in range(60):  # a node may still be completing jobs of an earlier session for a few seconds
        try:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30).stdout.split()
        except FileNotFoundError:
            break
        if any(s in ("idle", "mix", "alloc") for s in state):
            break
        time.sleep(1)
    if not any(s in ("idle", "mix", "alloc") for s in state):
        pytest.fail("REPSHIFT_CLUSTER_TESTS=1 but no SLURM node is up (sinfo: %s); run `make test-cluster`" % (state or "absent"))
