"""The cluster tests' fixtures: one 3-node RabbitMQ cluster for the whole session, started
by the project's own harness (never the default broker on 5672), torn down at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import RabbitCluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[RabbitCluster]:
    """Three nodes on 127.0.0.1:5681-5683 under a temporary directory. Fails (never skips)
    when they cannot be brought up."""
    base = Path(tempfile.mkdtemp(prefix="clusterbus-cluster-"))
    harness = RabbitCluster(base / "cluster")
    try:
        harness.start()
    except Exception as exc:
        harness.teardown()
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"the test cluster did not come up: {exc}", pytrace=False)
    try:
        yield harness
    finally:
        harness.teardown()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def all_nodes_up(cluster: RabbitCluster) -> Iterator[RabbitCluster]:
    """The cluster with every node running before and after the test."""
    for i in range(cluster.size):
        if not cluster.running(i):
            cluster.start_node(i)
    yield cluster
    for i in range(cluster.size):
        if not cluster.running(i):
            cluster.start_node(i)


SCALE = max(1, int(os.environ.get("CLUSTERBUS_CHAOS_SCALE", "1")))
"""1 in the suite (one node loss per primitive); ``make chaos`` runs the long version."""
