"""Snapshots and log compaction on a real 3-process cluster.

The nodes compact their log every 40 entries (``DQLITEPY_SNAPSHOT_ENTRIES``), so a
node that was down while more than that was written can only catch up through a
snapshot, and a restart starts from a snapshot plus the log after it.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from dqlitepy_server import DqlitepyCluster

import dqlitepy
from dqlitepy.replication.journal import DurableJournal


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


def _crash_before_compaction(raft: Path, before: Path) -> int:
    """Make ``raft/journal`` what a crash between snapshot and compaction leaves.

    ``before`` is the journal file as it was until compaction replaced it (a
    hard link to it): its entries up to then, followed by the entries appended
    to the compacted log since, with the term, vote and commit index the node
    has now.  Returns how many entries come before the snapshot's two.
    """
    shutil.copy(raft / "journal.meta", f"{before}.meta")
    with DurableJournal(before, sync=False) as old, DurableJournal(raft / "journal") as new:
        kept = old[:]
        later = [e for e in new[:] if e[1] > kept[-1][1]]
        overlap = [e for e in new[:] if e[1] <= kept[-1][1]]
        assert overlap, "the old journal ends before the compacted one starts"
        assert overlap == kept[-len(overlap) :]
        term, vote, commit = new.getCurrentTerm(), new.getVotedForNodeId(), new.getRaftCommitIndex()
    entries = kept + later
    os.unlink(raft / "journal")
    os.unlink(raft / "journal.meta")
    with DurableJournal(raft / "journal") as journal:
        journal.setCurrentTerm(term, vote)
        journal.add_many(entries)
        journal.setRaftCommitIndex(commit)
    with (raft / "snapshot").open("rb") as f:
        previous = tuple(cbor2.load(f)["previous"])
    position = [tuple(e) for e in entries].index(previous)
    assert entries[-1][1] > previous[1] + 1, "no entry after the snapshot"
    return position


def test_a_crash_between_snapshot_and_compaction_loses_no_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The snapshot is durable, the log not yet compacted at it, entries follow:
    # on restart PySyncObj replaced such a log by the snapshot's two entries,
    # dropping every committed entry after them.
    monkeypatch.setenv("DQLITEPY_SNAPSHOT_ENTRIES", "40")
    with DqlitepyCluster.formed(1) as cluster:
        node = cluster.nodes[0]
        raft = node.data_dir / "raft"
        conn = dqlitepy.connect("snap", servers=cluster.addresses, isolation_level=None)
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        before = tmp_path / "journal"
        os.link(raft / "journal", before)  # keeps the file compaction replaces
        inode = before.stat().st_ino
        for _ in range(200):
            conn.execute("INSERT INTO t (v) VALUES (randomblob(50))")
            if (raft / "journal").stat().st_ino != inode:
                break
        else:
            pytest.fail("the log was never compacted")
        assert (raft / "snapshot").exists()
        for _ in range(15):  # committed after the snapshot
            conn.execute("INSERT INTO t (v) VALUES (randomblob(50))")
        expected = conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()
        conn.close()
        node.stop(signal.SIGKILL)
        assert _crash_before_compaction(raft, before) > 0
        node.start(timeout=60)
        rows, check = _contents(cluster.leader(timeout=30))
        assert check == "ok"
        assert len(rows) == len(expected)
        assert rows == expected
        assert "was not compacted after its snapshot" in node.log()


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
