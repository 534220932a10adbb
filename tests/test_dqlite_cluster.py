"""Tests of the test infrastructure itself: the dqlite-demo cluster fixtures."""

from __future__ import annotations

import pytest
from dqlite_cluster import DqliteDemoCluster

pytestmark = pytest.mark.dqlite


def test_three_voters(dqlite_cluster: DqliteDemoCluster) -> None:
    members = dqlite_cluster.members()
    assert sorted(m.address for m in members) == sorted(dqlite_cluster.addresses)
    assert [m.role for m in members] == ["voter"] * 3
    assert len({m.id for m in members}) == 3
    assert dqlite_cluster.leader() in dqlite_cluster.addresses
    assert len(dqlite_cluster.pids) == 3


def test_go_shell_writes_and_reads_back(dqlite_cluster: DqliteDemoCluster) -> None:
    dqlite_cluster.shell("CREATE TABLE fixture_check (n INTEGER, s TEXT)", database="fixture")
    dqlite_cluster.shell(
        "INSERT INTO fixture_check VALUES (1, 'one'), (2, 'two')", database="fixture"
    )
    rows = dqlite_cluster.shell("SELECT n, s FROM fixture_check ORDER BY n", database="fixture")
    assert rows.splitlines() == ["1|one", "2|two"]


@pytest.mark.slow
def test_killing_the_leader_elects_another(fresh_dqlite_cluster: DqliteDemoCluster) -> None:
    cluster = fresh_dqlite_cluster
    cluster.shell("CREATE TABLE t (n INTEGER)")
    cluster.shell("INSERT INTO t VALUES (42)")
    old = cluster.leader()

    cluster.kill(old)

    new = cluster.leader(timeout=60)
    assert new != old
    assert new in cluster.addresses
    assert old not in cluster.pids
    # The committed write survived and the two remaining voters still accept writes.
    cluster.shell("INSERT INTO t VALUES (43)")
    assert cluster.shell("SELECT n FROM t ORDER BY n").splitlines() == ["42", "43"]

    # The killed node comes back and the cluster is whole again. (Asked through the restarted
    # node, the shell still reads on the leader: dqlite serves SQL only there.)
    cluster.restart(old)
    cluster.wait_ready(30)
    assert len(cluster.pids) == 3
    rows = cluster.shell("SELECT n FROM t ORDER BY n", servers=[old])
    assert rows.splitlines() == ["42", "43"]
