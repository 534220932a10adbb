"""Snapshots and log compaction on a real 3-process cluster.

The nodes compact their log every 40 entries (``DQLITEPY_SNAPSHOT_ENTRIES``), so a
node that was down while more than that was written can only catch up through a
snapshot, and a restart starts from a snapshot plus the log after it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from dqlitepy_server import DqlitepyCluster

import dqlitepy


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[DqlitepyCluster]:
    monkeypatch.setenv("DQLITEPY_SNAPSHOT_ENTRIES", "40")
    with DqlitepyCluster.formed() as c:
        yield c


def _contents(address: str) -> tuple[list[tuple[object, ...]], str]:
    conn = dqlitepy.connect("snap", servers=[address])
    try:
        rows = conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    return rows, check


def test_a_node_behind_the_compacted_log_installs_a_snapshot(cluster: DqlitepyCluster) -> None:
    conn = dqlitepy.connect("snap", servers=cluster.addresses, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    victim = next(a for a in cluster.addresses if a != cluster.leader())
    cluster.node(victim).stop(signal.SIGKILL)
    for _ in range(150):
        conn.execute("INSERT INTO t (v) VALUES (randomblob(3000))")
    expected = conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    conn.close()
    leader = cluster.leader()
    assert (cluster.node(leader).data_dir / "raft" / "snapshot").exists()
    cluster.node(victim).start(timeout=60)
    cluster.make_leader(victim, timeout=30)
    rows, check = _contents(victim)
    assert check == "ok"
    assert rows == expected
    assert "installed a snapshot" in cluster.node(victim).log()


def test_a_full_restart_starts_from_snapshot_and_log(cluster: DqlitepyCluster) -> None:
    conn = dqlitepy.connect("snap", servers=cluster.addresses, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    for _ in range(130):
        conn.execute("INSERT INTO t (v) VALUES (randomblob(100))")
    expected = conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    conn.close()
    for node in cluster.nodes:
        node.stop(signal.SIGKILL)
    for node in cluster.nodes:
        node.start(timeout=60)
    leader = cluster.leader(timeout=30)
    rows, check = _contents(leader)
    assert check == "ok"
    assert rows == expected
    # Writing goes on after the restart.
    conn = dqlitepy.connect("snap", servers=cluster.addresses, isolation_level=None)
    conn.execute("INSERT INTO t (v) VALUES (x'00')")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (131,)
    conn.close()


@pytest.mark.slow
def test_a_database_past_one_gib_travels_by_snapshot(cluster: DqlitepyCluster) -> None:
    # Past 1 GiB SQLite skips the page holding its lock bytes: the snapshot
    # copy, the transfer and the install must all cope with that hole.
    conn = dqlitepy.connect("snap", servers=cluster.addresses, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    victim = next(a for a in cluster.addresses if a != cluster.leader())
    cluster.node(victim).stop(signal.SIGKILL)
    chunk = 8 * 1024 * 1024
    written = 0
    deadline = time.monotonic() + 600
    while written < 140:  # 1.1 GiB in 8 MiB transactions
        try:
            conn.execute("INSERT INTO t (v) VALUES (randomblob(?))", (chunk,))
            written += 1
        except dqlitepy.OperationalError:
            # Multi-MiB entries on a loaded machine can cost an election; the
            # outcome is unknown, which does not matter here: the expected state
            # is read back from the cluster below.
            assert time.monotonic() < deadline
            time.sleep(0.5)
    expected = conn.execute("SELECT count(*), sum(length(v)), max(id) FROM t").fetchone()
    size = (
        conn.execute("PRAGMA page_count").fetchone()[0]
        * conn.execute("PRAGMA page_size").fetchone()[0]
    )
    conn.close()
    assert size > 1 << 30
    cluster.node(victim).start(timeout=120)
    deadline = time.monotonic() + 300
    while True:
        cluster.make_leader(victim, timeout=300)
        try:
            conn = dqlitepy.connect("snap", servers=[victim], request_timeout=600)
        except dqlitepy.OperationalError:
            # An election under load took leadership away again: hand it back.
            assert time.monotonic() < deadline
            continue
        break
    try:
        assert (
            conn.execute("SELECT count(*), sum(length(v)), max(id) FROM t").fetchone() == expected
        )
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    assert "installed a snapshot" in cluster.node(victim).log()
