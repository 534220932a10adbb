"""Fixtures giving tests a real dqlite cluster (``dqlite-demo`` nodes from Debian's go-dqlite).

Nothing is skipped silently: without ``/usr/bin/dqlite-demo`` and ``/usr/bin/dqlite`` a test that
needs a cluster fails, unless ``DQLITEPY_NO_DQLITE=1`` says to skip such tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from dqlite_cluster import DQLITE_DEMO, DQLITE_SHELL, DqliteDemoCluster


def _require_dqlite() -> None:
    if os.environ.get("DQLITEPY_NO_DQLITE") == "1":
        pytest.skip("DQLITEPY_NO_DQLITE=1: tests that need a real dqlite cluster are skipped")
    missing = [path for path in (DQLITE_DEMO, DQLITE_SHELL) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: install Debian's go-dqlite package "
            "(apt-get install go-dqlite), or set DQLITEPY_NO_DQLITE=1 to skip the tests "
            "that need a real dqlite cluster",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def dqlite_cluster() -> Iterator[DqliteDemoCluster]:
    """A 3-node dqlite cluster shared by the whole session. Do not kill, stop or reconfigure
    its nodes; use ``fresh_dqlite_cluster`` for that."""
    _require_dqlite()
    with DqliteDemoCluster() as cluster:
        cluster.start(3)
        yield cluster


@pytest.fixture
def fresh_dqlite_cluster() -> Iterator[DqliteDemoCluster]:
    """A new 3-node dqlite cluster for one test, which may kill, stop or restart its nodes."""
    _require_dqlite()
    with DqliteDemoCluster() as cluster:
        cluster.start(3)
        yield cluster
