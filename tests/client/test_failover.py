"""Driver failover on a real cluster whose nodes are killed or frozen: a fresh cluster each.

docs/architecture.md, "What users see": after a leader change the *next* call finds the new
leader; only what provably did not run is retried; a write whose outcome is unknown raises
OperationalError and is never re-sent; an open transaction does not survive the change.
Errors say truthfully what became of the request (``outcome``: unknown, rolled back or not
run).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dqlite_cluster import DqliteDemoCluster
from waiting import wait_until

import dqlitepy
from dqlitepy.client import failover, protocol
from dqlitepy.client.discovery import find_leader
from dqlitepy.client.needs import Gen
from dqlitepy.testing import ClusterFactory

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


def _move_leadership(addresses: list[str], away_from: str, timeout: float = 20.0) -> str:
    """Hand leadership from ``away_from`` to another voter; return the new leader's address
    once ``away_from`` itself names it."""
    with dqlitepy.Client(addresses, timeout=timeout) as admin:
        target = next(
            m
            for m in admin.cluster()
            if m.address != away_from and m.role == dqlitepy.NodeRole.VOTER
        )
        admin.transfer(target.id)

    def new_leader() -> str | None:
        with dqlitepy.Client([away_from], timeout=2) as old:
            leader = old.leader()
        return leader.address if leader is not None and leader.address != away_from else None

    return wait_until(new_leader, f"{away_from} to hand leadership over", timeout, 0.05)


class _DeposingDiscovery:
    """The driver's leader discovery, except that the next ``pending`` leaders it finds are
    deposed (leadership handed to another voter) before the driver's next request reaches
    them: a real server then refuses that request (OPEN, or the first statement) as not
    leader, deterministically."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.pending = 0
        self.deposed: list[str] = []

    def __call__(self, servers: list[str], **kwargs: Any) -> Gen[protocol.Protocol]:
        proto = yield from find_leader(servers, **kwargs)
        if self.pending > 0:
            self.pending -= 1
            _move_leadership(self.addresses, proto.address)
            self.deposed.append(proto.address)
        return proto


@pytest.fixture(params=["dqlite", "dqlitepy-cluster"])
def any_cluster(request: pytest.FixtureRequest) -> list[str]:
    """The addresses of a fresh 3-voter cluster of C dqlite or of dqlitepy processes."""
    if request.param == "dqlite":
        demo: DqliteDemoCluster = request.getfixturevalue("fresh_dqlite_cluster")
        return list(demo.addresses)
    clusters: ClusterFactory = request.getfixturevalue("dqlitepy_cluster")
    return clusters(size=3).addresses


def test_not_leader_refusals_are_retried_not_shown(
    any_cluster: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    discovery = _DeposingDiscovery(any_cluster)
    monkeypatch.setattr(failover, "find_leader", discovery)

    # connect(): the leader found is deposed before OPEN (dqlitepy refuses OPEN; C dqlite
    # opens, then refuses the first statement).  connect() succeeds all the same.
    discovery.pending = 1
    conn = dqlitepy.connect(
        "failover", servers=any_cluster, isolation_level=None, attempt_timeout=1.0
    )
    try:
        conn.execute("CREATE TABLE t (x)")
        assert len(discovery.deposed) == 1

        # Leadership moves while the connection is idle, and once more right after the
        # reconnection found the next leader: the statement is refused, then OPEN (or the
        # statement again) is refused; all of it is retried, none of it is shown.
        with dqlitepy.Client(any_cluster) as admin:
            leader = admin.leader()
        assert leader is not None
        _move_leadership(any_cluster, leader.address)
        discovery.pending = 1
        conn.execute("INSERT INTO t VALUES (1)")
        assert len(discovery.deposed) == 2
        assert _count(conn) == 1

        # In a transaction a refusal cannot be retried: the transaction is gone, and the
        # error says it was rolled back (it was: nothing of it committed).
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (2)")
        with dqlitepy.Client(any_cluster) as admin:
            leader = admin.leader()
        assert leader is not None
        _move_leadership(any_cluster, leader.address)
        with pytest.raises(dqlitepy.ConnectionLostError) as info:
            conn.execute("INSERT INTO t VALUES (3)")
        assert info.value.outcome == "rolled back"
        assert "the open transaction was rolled back" in str(info.value)
        assert not info.value.request_sent
        assert not conn.in_transaction
        assert _count(conn) == 1
    finally:
        conn.close()


CHURN_SECONDS = 8.0


def test_leadership_churn_shows_only_errors_of_unknown_outcome(
    dqlitepy_cluster: ClusterFactory,
) -> None:
    """Leadership moves every fraction of a second while clients connect and write: what
    reaches them is never a not-leader refusal (those did not run and are retried), only
    errors that say what became of the request."""
    cluster = dqlitepy_cluster(size=3)
    stop = threading.Event()
    seen: list[dqlitepy.Error] = []
    writes = [0]
    moves = [0]

    def churn() -> None:
        while not stop.wait(0.2):
            try:
                with dqlitepy.Client(cluster.addresses, timeout=2) as admin:
                    leader = admin.leader()
                    members = admin.cluster()
                    others = [m for m in members if leader and m.address != leader.address]
                    if others:  # else an election is under way: it moves by itself
                        admin.transfer(others[moves[0] % len(others)].id)
                        moves[0] += 1
            except dqlitepy.Error as exc:
                # A move can fail (an election under way, a slow transfer): try the next.
                print("churn:", repr(exc))

    def worker(name: str) -> None:
        n = 0
        while not stop.is_set():
            try:
                conn = dqlitepy.connect(
                    "churn",
                    servers=cluster.addresses,
                    isolation_level=None,
                    attempt_timeout=1.0,
                    leader_timeout=10.0,
                    request_timeout=5.0,
                )
                try:
                    for _ in range(5):
                        conn.execute("INSERT INTO t VALUES (?)", (f"{name}-{n}",))
                        n += 1
                        writes[0] += 1
                finally:
                    conn.close()
            except dqlitepy.Error as exc:
                seen.append(exc)

    with dqlitepy.connect("churn", servers=cluster.addresses) as setup:
        setup.execute("CREATE TABLE t (v TEXT)")
    setup.close()
    threads = [threading.Thread(target=churn)]
    threads += [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(CHURN_SECONDS)
    stop.set()
    for thread in threads:
        thread.join(30)
    print(f"{moves[0]} leadership moves, {writes[0]} writes, errors: {seen}")
    assert moves[0] >= 2
    assert writes[0] > 0
    assert not [e for e in seen if isinstance(e, dqlitepy.NotLeaderError)]
    for exc in seen:
        assert isinstance(exc, dqlitepy.ConnectionLostError | dqlitepy.LeadershipLostError), exc
        assert exc.outcome == "unknown", exc
        assert "the outcome of the statement is unknown" in str(exc), exc


def test_commit_lost_with_the_leader_has_unknown_outcome(
    dqlitepy_cluster: ClusterFactory,
) -> None:
    cluster = dqlitepy_cluster(size=3)
    conn = dqlitepy.connect(
        "failover", servers=cluster.addresses, attempt_timeout=1.0, request_timeout=10.0
    )
    try:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.execute("INSERT INTO t VALUES (1)")
        leader = cluster.wait_for_leader()
        # Frozen, the leader takes the COMMIT into its socket buffer and never answers;
        # killed, it resets the connection.  The driver cannot know whether the COMMIT
        # ran (had the leader run it before dying, the row would be committed).
        cluster.pause(leader)
        killer = threading.Timer(0.5, leader.kill)
        killer.start()
        try:
            started = time.monotonic()
            with pytest.raises(dqlitepy.ConnectionLostError) as info:
                conn.commit()
            elapsed = time.monotonic() - started
        finally:
            killer.join()
        assert elapsed < 5.0, elapsed
        assert info.value.outcome == "unknown"
        assert "the outcome of the commit is unknown" in str(info.value)
        assert "rolled back" not in str(info.value)
        assert info.value.request_sent
        assert not conn.in_transaction
        # The connection goes on, on the new leader; the row is there or not, once.
        assert _count(conn) in (0, 1)
        conn.execute("INSERT INTO t VALUES (2)")
        conn.commit()
        assert _count(conn, "SELECT count(*) FROM t WHERE x = 2") == 1
    finally:
        conn.close()


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
    if isolation_level is not None:
        # The write of unknown outcome is the COMMIT: the INSERT alone cannot commit.
        conn.execute("INSERT INTO t VALUES (1)")
    leader = _leader(cluster)

    cluster.stop(leader)
    try:
        started = time.monotonic()
        with pytest.raises(dqlitepy.ConnectionLostError) as info:
            if isolation_level is None:
                conn.execute("INSERT INTO t VALUES (1)")
            else:
                conn.commit()
        elapsed = time.monotonic() - started
    finally:
        cluster.cont(leader)
    # It gave up after request_timeout instead of sending the INSERT somewhere else.
    assert 0.9 <= elapsed < 3.0, elapsed
    assert info.value.request_sent  # the outcome is unknown
    assert info.value.outcome == "unknown"
    what = "statement" if isolation_level is None else "commit"
    assert f"the outcome of the {what} is unknown" in str(info.value)
    assert "rolled back" not in str(info.value)
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
    # The control: the same probe (a count through this connection) sees a write at once.
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
    assert "the open transaction was rolled back" in str(info.value)
    assert info.value.outcome == "rolled back"
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
