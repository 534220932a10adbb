"""Driver failover on a real cluster whose nodes are killed or frozen: a fresh cluster each.

design.md §1: after a leader change the *next* call finds the new leader; only what provably
did not run is retried; a write whose outcome is unknown raises OperationalError and is never
re-sent; an open transaction does not survive the change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dqlite_cluster import DqliteDemoCluster

import dqlitepy

pytestmark = [pytest.mark.dqlite, pytest.mark.slow]

#: Longest acceptable failover: the demo's election takes about 5 s on this machine.
FAILOVER_LIMIT = 25.0


@pytest.fixture
def cluster(fresh_dqlite_cluster: DqliteDemoCluster) -> DqliteDemoCluster:
    return fresh_dqlite_cluster


@pytest.fixture
def connect(cluster: DqliteDemoCluster) -> Iterator[Callable[..., dqlitepy.Connection]]:
    made: list[dqlitepy.Connection] = []

    def factory(**kwargs: Any) -> dqlitepy.Connection:
        kwargs.setdefault("servers", cluster.addresses)
        kwargs.setdefault("leader_timeout", 30.0)
        kwargs.setdefault("attempt_timeout", 1.0)
        conn = dqlitepy.connect("failover", **kwargs)
        made.append(conn)
        return conn

    yield factory
    for conn in made:
        conn.close()


def _leader(cluster: DqliteDemoCluster) -> str:
    with dqlitepy.Client(cluster.addresses, timeout=30) as admin:
        leader = admin.leader()
    assert leader is not None
    return leader.address


def _count(conn: dqlitepy.Connection, sql: str = "SELECT count(*) FROM t") -> int:
    (n,) = conn.execute(sql).fetchone()
    assert isinstance(n, int)
    return n


def test_leader_killed_next_read_succeeds(
    cluster: DqliteDemoCluster, connect: Callable[..., dqlitepy.Connection]
) -> None:
    conn = connect()
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    conn.commit()
    old = _leader(cluster)

    cluster.kill(old)
    started = time.monotonic()
    assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
    elapsed = time.monotonic() - started
    print(f"failover (read): {elapsed:.2f}s")
    assert elapsed < FAILOVER_LIMIT
    new = _leader(cluster)
    assert new != old
    # And the connection goes on writing, on the new leader.
    conn.execute("INSERT INTO t VALUES (3)")
    conn.commit()
    assert _count(conn) == 3


def test_leader_killed_next_write_succeeds(
    cluster: DqliteDemoCluster, connect: Callable[..., dqlitepy.Connection]
) -> None:
    conn = connect()
    other = connect(isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    old = _leader(cluster)

    cluster.kill(old)
    started = time.monotonic()
    conn.execute("INSERT INTO t VALUES (2)")  # implicit BEGIN, then the INSERT
    conn.commit()
    elapsed = time.monotonic() - started
    print(f"failover (write): {elapsed:.2f}s")
    assert elapsed < FAILOVER_LIMIT
    # An autocommit connection fails over on its next write too.
    other.execute("INSERT INTO t VALUES (3)")
    assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,), (3,)]
    # The admin client finds the new leader as well.
    with dqlitepy.Client(cluster.addresses, timeout=30) as admin:
        assert len(admin.cluster()) == 3
        leader = admin.leader()
    assert leader is not None
    assert leader.address != old


@pytest.mark.parametrize("isolation_level", [None, ""], ids=["autocommit", "legacy"])
def test_write_with_unknown_outcome_is_never_resent(
    cluster: DqliteDemoCluster,
    connect: Callable[..., dqlitepy.Connection],
    isolation_level: str | None,
) -> None:
    conn = connect(request_timeout=1.0, isolation_level=isolation_level)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    leader = _leader(cluster)

    cluster.stop(leader)
    try:
        started = time.monotonic()
        with pytest.raises(dqlitepy.ConnectionLostError) as info:
            conn.execute("INSERT INTO t VALUES (1)")
        elapsed = time.monotonic() - started
    finally:
        cluster.cont(leader)
    # It gave up after request_timeout instead of sending the INSERT somewhere else.
    assert 0.9 <= elapsed < 3.0, elapsed
    assert info.value.request_sent  # the outcome is unknown
    assert isinstance(info.value, dqlitepy.OperationalError)
    assert not conn.in_transaction

    # The connection works again (on whichever node leads now) ...
    deadline = time.monotonic() + 3.0
    counts = []
    while time.monotonic() < deadline:
        counts.append(_count(conn))
        time.sleep(0.2)
    # ... and the INSERT ran at most once: the stopped leader may still apply it.
    assert max(counts) <= 1, counts
    conn.execute("INSERT INTO t VALUES (2)")
    conn.commit()
    assert _count(conn, "SELECT count(*) FROM t WHERE x = 2") == 1


def test_open_transaction_is_lost_with_the_leader(
    cluster: DqliteDemoCluster, connect: Callable[..., dqlitepy.Connection]
) -> None:
    conn = connect()
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (1)")
    assert conn.in_transaction
    old = _leader(cluster)

    cluster.kill(old)
    with pytest.raises(dqlitepy.ConnectionLostError) as info:
        conn.execute("INSERT INTO t VALUES (2)")
    assert "transaction" in str(info.value)
    assert not conn.in_transaction
    conn.rollback()  # what sqlite3 code does after an error: fine, nothing to roll back

    started = time.monotonic()
    conn.execute("INSERT INTO t VALUES (3)")
    assert conn.in_transaction
    conn.commit()
    print(f"failover (after a lost transaction): {time.monotonic() - started:.2f}s")
    assert conn.execute("SELECT x FROM t").fetchall() == [(3,)]


def test_dead_or_frozen_first_server(
    cluster: DqliteDemoCluster, connect: Callable[..., dqlitepy.Connection]
) -> None:
    leader = _leader(cluster)
    frozen, dead = (a for a in cluster.addresses if a != leader)
    connect().execute("CREATE TABLE t (x)")

    # A frozen node accepts the TCP connection and never answers: the per-attempt timeout
    # moves on to the next node.
    cluster.stop(frozen)
    try:
        started = time.monotonic()
        conn = connect(servers=[frozen, dead, leader], attempt_timeout=0.5)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, elapsed
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
    finally:
        cluster.cont(frozen)

    # A killed node refuses the connection at once.
    cluster.kill(dead)
    started = time.monotonic()
    conn = connect(servers=[dead, leader])
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    conn.execute("INSERT INTO t VALUES (2)")
    conn.commit()
    assert _count(conn) == 2
