"""The leader's write path on a real 3-process cluster: commits Raft never accepted.

A leader whose followers are gone commits a transaction locally that Raft can
never commit; its client is told the outcome is unknown.  That transaction must
leave no trace on the node, even though its session was the database's only one
(SQLite folds the WAL into the database file when the last connection closes,
which would have made the commit permanent locally).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from dqlitepy_server import DqlitepyCluster, DqlitepyServer

import dqlitepy


@pytest.fixture
def cluster() -> Iterator[DqlitepyCluster]:
    with DqlitepyCluster.formed() as c:
        yield c


def _signal(node: DqlitepyServer, sig: int) -> None:
    assert node.process is not None
    node.process.send_signal(sig)


def _rows(address: str, table: str) -> list[tuple[object, ...]]:
    conn = dqlitepy.connect("app", servers=[address], timeout=10)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return conn.execute(f"SELECT x FROM {table} ORDER BY x").fetchall()
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_commit_raft_never_accepted_leaves_no_trace(cluster: DqlitepyCluster) -> None:
    conn = dqlitepy.connect("app", servers=cluster.addresses, isolation_level=None)
    try:
        # Two tables on separate pages: the later write to t cannot overwrite p's page.
        conn.execute("CREATE TABLE p (x TEXT)")
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.execute("INSERT INTO p VALUES ('committed')")
    finally:
        conn.close()
    old = cluster.node(cluster.leader())
    followers = [n for n in cluster.nodes if n is not old]
    # Killed, not paused: a paused follower would still read the entry from its socket.
    for node in followers:
        node.stop(signal.SIGKILL)
    # The only session of the database on the old leader commits locally.
    phantom = dqlitepy.connect("app", servers=[old.address], isolation_level=None, timeout=5)
    try:
        with pytest.raises(dqlitepy.OperationalError, match="leadership lost"):
            phantom.execute("INSERT INTO p VALUES ('never committed')")
    finally:
        phantom.close()
    # The old leader sleeps while the others come back and elect a leader that
    # never saw the entry.
    _signal(old, signal.SIGSTOP)
    try:
        for node in followers:
            node.start(timeout=60)
        others = [n.address for n in followers]
        cluster.leader(30, among=others)
        conn = dqlitepy.connect("app", servers=others, isolation_level=None, timeout=10)
        try:
            conn.execute("INSERT INTO t VALUES ('after')")
        finally:
            conn.close()
    finally:
        _signal(old, signal.SIGCONT)
    # The old leader's uncommitted entry is replaced by the new leader's log.
    cluster.make_leader(old.address)
    assert _rows(old.address, "p") == [("committed",)]
    assert _rows(old.address, "t") == [("after",)]
    for node in followers:
        cluster.make_leader(node.address)
        assert _rows(node.address, "p") == [("committed",)]
        assert _rows(node.address, "t") == [("after",)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_resumed_old_leader_serves_no_stale_read(cluster: DqlitepyCluster) -> None:
    """Jepsen's probe: pause the leader, write elsewhere, resume it, read through it."""
    setup = dqlitepy.connect("app", servers=cluster.addresses, isolation_level=None)
    try:
        setup.execute("CREATE TABLE r (k INTEGER PRIMARY KEY, v INTEGER)")
        setup.execute("INSERT INTO r VALUES (1, 0)")
    finally:
        setup.close()
    outcomes: list[str] = []
    for value in range(1, 6):
        old = cluster.node(cluster.leader())
        # A client already connected to the old leader, its session open.
        reader = dqlitepy.connect("app", servers=[old.address], isolation_level=None, timeout=5)
        try:
            assert reader.execute("SELECT v FROM r WHERE k = 1").fetchone() == (value - 1,)
            _signal(old, signal.SIGSTOP)
            try:
                others = [n.address for n in cluster.nodes if n is not old]
                cluster.leader(30, among=others)
                writer = dqlitepy.connect("app", servers=others, isolation_level=None, timeout=10)
                try:
                    writer.execute("UPDATE r SET v = ? WHERE k = 1", (value,))
                finally:
                    writer.close()
            finally:
                _signal(old, signal.SIGCONT)
            try:
                row = reader.execute("SELECT v FROM r WHERE k = 1").fetchone()
            except dqlitepy.OperationalError as exc:
                outcomes.append(f"refused: {exc}")
            else:
                assert row == (value,), f"round {value}: stale read {row} from {old.address}"
                outcomes.append("current")
        finally:
            reader.close()
    print(outcomes)
