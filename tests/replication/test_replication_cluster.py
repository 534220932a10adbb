"""Real multi-process dqlitepy clusters: forming with --join, replicating, failing over.

Each node is a separate ``dqlitepy server`` process on loopback, started by the pytest
plugin's ``dqlitepy_cluster`` fixture (dqlitepy.testing); nodes are killed with SIGKILL and
restarted on the same data directory.  Every wait is bounded.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from dqlite_cluster import DqliteDemoCluster
from dqlitepy_server import DqlitepyServer
from waiting import wait_until

import dqlitepy
from dqlitepy.testing import Cluster, ClusterFactory


@pytest.fixture
def cluster(dqlitepy_cluster: ClusterFactory) -> Cluster:
    return dqlitepy_cluster(size=3)


def _count(servers: list[str], database: str) -> int:
    conn = dqlitepy.connect(database, servers=servers)
    try:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        conn.close()


def _commits(servers: list[str], database: str) -> None:
    """A table is created and a row written in ``database``, through ``servers``."""
    conn = dqlitepy.connect(database, servers=servers, isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
    finally:
        conn.close()


def test_cluster_forms_and_the_go_shell_sees_it(cluster: Cluster) -> None:
    shell = DqliteDemoCluster()
    lines = shell.shell(".cluster", servers=cluster.addresses).splitlines()
    assert sorted(line.split("|")[1] for line in lines) == sorted(cluster.addresses)
    assert all(line.endswith("|voter") for line in lines)
    leader = shell.shell(".leader", servers=cluster.addresses)
    assert leader == cluster.wait_for_leader().address


def test_every_node_holds_the_data(cluster: Cluster) -> None:
    conn = dqlitepy.connect("app", servers=cluster.addresses, isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, r, at)")
        for _ in range(100):
            conn.execute("INSERT INTO t (r, at) VALUES (random(), datetime('now'))")
        expected = conn.execute("SELECT id, r, at FROM t ORDER BY id").fetchall()
    finally:
        conn.close()
    # Make each node the leader in turn: it must answer with the same rows
    # (random() and datetime('now') replicate as pages, not as SQL).
    for node in cluster.nodes:
        cluster.transfer(node)
        conn = node.connect("app")
        try:
            assert conn.execute("SELECT id, r, at FROM t ORDER BY id").fetchall() == expected
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            conn.close()


def test_leader_kill_during_writes_loses_no_acknowledged_row(cluster: Cluster) -> None:
    conn = dqlitepy.connect("app", servers=cluster.addresses, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
    acknowledged: list[str] = []
    unknown: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        writer_conn = dqlitepy.connect(
            "app", servers=cluster.addresses, isolation_level=None, leader_timeout=20
        )
        i = 0
        while not stop.is_set():
            value = f"v{i}"
            i += 1
            try:
                writer_conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
                acknowledged.append(value)
            except dqlitepy.OperationalError:
                unknown.append(value)
                time.sleep(0.05)
        writer_conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    wait_until(lambda: len(acknowledged) >= 10, "writes to go through")
    leader = cluster.wait_for_leader()
    killed_at = time.monotonic()
    before = len(acknowledged)
    cluster.kill(leader)
    wait_until(
        lambda: len(acknowledged) > before + 10, "writes to resume on a new leader", 20, 0.05
    )
    failover = time.monotonic() - killed_at
    stop.set()
    thread.join(30)
    live = [n.address for n in cluster.nodes if n is not leader]
    conn.close()
    conn = dqlitepy.connect("app", servers=live)
    rows = [r[0] for r in conn.execute("SELECT v FROM t")]
    conn.close()
    assert len(rows) == len(set(rows))
    missing = set(acknowledged) - set(rows)
    assert not missing, f"acknowledged rows lost: {sorted(missing)[:5]}"
    assert set(rows) <= set(acknowledged) | set(unknown)
    print(f"failover {failover:.2f}s, {len(acknowledged)} acknowledged, {len(unknown)} unknown")
    assert failover < 10


def test_a_restarted_node_catches_up(cluster: Cluster) -> None:
    conn = dqlitepy.connect("app", servers=cluster.addresses, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    victim = cluster.kill(cluster.followers()[0])
    for i in range(200):
        conn.execute("INSERT INTO t (v) VALUES (?)", (i,))
    conn.close()
    cluster.restart(victim)
    cluster.transfer(victim)  # TRANSFER is repeated until it has caught up and leads
    assert _count([victim.address], "app") == 200


def test_full_cluster_restart_keeps_the_data(cluster: Cluster) -> None:
    conn = dqlitepy.connect("app", servers=cluster.addresses, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(i,) for i in range(50)])
    conn.close()
    for node in cluster.nodes:
        cluster.kill(node)
    for node in cluster.nodes:
        cluster.restart(node)
    cluster.wait_for_leader(timeout=30)
    assert _count(cluster.addresses, "app") == 50


def test_joining_without_the_key_is_refused(tmp_path: Path) -> None:
    node = DqlitepyServer(tmp_path / "n", join=["127.0.0.1:1"])
    with pytest.raises(RuntimeError):
        node.start(timeout=10)
    assert "needs its key" in node.log()


def test_statements_that_commit_nothing(cluster: Cluster) -> None:
    conn = dqlitepy.connect("empty", servers=cluster.addresses, isolation_level=None)
    try:
        # A write statement that changes nothing, on a database whose WAL is empty.
        conn.execute("DROP TABLE IF EXISTS nosuch")
        conn.execute("CREATE TABLE t (x UNIQUE)")
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(dqlitepy.IntegrityError):
            conn.execute("INSERT INTO t VALUES (1)")  # fails: nothing to replicate
        conn.execute("DELETE FROM t WHERE x = 42")  # matches nothing
        conn.execute("BEGIN")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    finally:
        conn.close()


def test_transfer_answers_once_leadership_moved(cluster: Cluster) -> None:
    client = dqlitepy.Client(cluster.addresses)
    try:
        leader = cluster.wait_for_leader().address
        target = next(n for n in client.cluster() if n.address != leader)
        client.transfer(target.id)
        # No waiting: the old leader already stopped leading when TRANSFER returned.
        with dqlitepy.Client([leader]) as old:
            named = old.leader()
        assert named is None or named.address != leader
    finally:
        client.close()


def test_stopping_the_leader_hands_over_first(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    started = time.monotonic()
    assert leader.stop() == 0  # SIGTERM
    # The others had a leader as soon as the old one was gone: no election timeout.
    new_leader = cluster.wait_for_leader(timeout=5)
    assert new_leader is not leader
    assert time.monotonic() - started < 5


def test_a_large_transaction_replicates(cluster: Cluster) -> None:
    conn = dqlitepy.connect("big", servers=cluster.addresses)
    try:
        conn.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, data BLOB)")
        # One transaction of about 72 MiB of pages: past the 64 MiB a transport
        # frame may carry, so it travels as several entries, applied as one.
        with conn:
            for _ in range(9):
                conn.execute("INSERT INTO b (data) VALUES (randomblob(8 * 1048576))")
        with conn:  # and a small one after it
            conn.execute("INSERT INTO b (data) VALUES (randomblob(10))")
        expected = conn.execute("SELECT sum(length(data)), count(*) FROM b").fetchone()
    finally:
        conn.close()
    assert expected == (72 * 1048576 + 10, 10)
    for node in cluster.nodes:
        cluster.transfer(node)
        single = node.connect("big")
        try:
            assert (
                single.execute("SELECT sum(length(data)), count(*) FROM b").fetchone() == expected
            )
        finally:
            single.close()


def test_a_stranger_on_a_nodes_address_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    import pickle
    import socket
    import struct

    from dqlitepy.wire import ConnectRequest, encode_message

    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self) -> tuple[object, ...]:
            return (Path.touch, (marker,))

    host, _, port = cluster.addresses[0].rpartition(":")
    for payload in (pickle.dumps({"type": "append_entries", "x": Boom()}), b"\xff" * 64):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(struct.pack("<Q", 1))
            sock.sendall(encode_message(ConnectRequest(0x1234, "127.0.0.1:1")))
            sock.sendall(struct.pack("<I", len(payload)) + payload)
            sock.settimeout(5)
            hung_up = True
            try:
                while sock.recv(4096):
                    pass
            except TimeoutError:
                hung_up = False
            except OSError:
                pass
            # The control: the node hung up, so it has read the frame and is done with it.
            assert hung_up, "the node neither refused nor closed within 5 s"
    assert not marker.exists()
    _commits(cluster.addresses, "after")  # the cluster still commits


def test_membership_changes_during_writes(cluster: Cluster) -> None:
    conn = dqlitepy.connect("members", servers=cluster.addresses, isolation_level=None)
    conn.execute("CREATE TABLE t (v TEXT PRIMARY KEY)")
    conn.close()
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        writer_conn = dqlitepy.connect(
            "members", servers=cluster.addresses, isolation_level=None, leader_timeout=20
        )
        i = 0
        while not stop.is_set():
            try:
                writer_conn.execute("INSERT INTO t VALUES (?)", (f"m{i}",))
                acknowledged.append(f"m{i}")
            except dqlitepy.OperationalError:
                time.sleep(0.05)
            i += 1
        writer_conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        fourth = cluster.add_node()
        client = dqlitepy.Client(cluster.addresses)
        # Three voters already: the fourth joins as a standby; then it votes.
        wait_until(
            lambda: fourth.address in {n.address for n in client.cluster() if n.role == 1},
            "the fourth node to become a standby",
            30,
            0.2,
        )
        node_id = next(n.id for n in client.cluster() if n.address == fourth.address)
        client.assign(node_id, dqlitepy.NodeRole.VOTER)
        assert fourth.address in {n.address for n in client.cluster() if n.role == 0}
        acked = len(acknowledged)
        wait_until(lambda: len(acknowledged) >= acked + 10, "writes with four voters", 30)
        client.remove(node_id)
        assert fourth.address not in {n.address for n in client.cluster()}
        client.close()
        acked = len(acknowledged)
        wait_until(lambda: len(acknowledged) >= acked + 5, "writes after the removal", 30)
    finally:
        stop.set()
        thread.join(60)
        for node in cluster.nodes[3:]:
            node.kill()
    check = dqlitepy.connect("members", servers=cluster.addresses)
    rows = {r[0] for r in check.execute("SELECT v FROM t")}
    check.close()
    assert len(acknowledged) > 20
    assert not set(acknowledged) - rows


def test_go_shell_remove(cluster: Cluster) -> None:
    shell = DqliteDemoCluster()
    victim = cluster.followers()[0].address
    shell.shell(f".remove {victim}", servers=cluster.addresses)
    lines = shell.shell(".cluster", servers=cluster.addresses).splitlines()
    assert sorted(line.split("|")[1] for line in lines) == sorted(
        a for a in cluster.addresses if a != victim
    )
    _commits(cluster.addresses, "after_remove")  # the remaining two still commit


def test_a_client_gone_mid_transaction_frees_the_writer(cluster: Cluster) -> None:
    first = dqlitepy.connect("gone", servers=cluster.addresses, isolation_level=None)
    first.execute("CREATE TABLE t (x)")
    # The second session exists before the first goes away.
    second = dqlitepy.connect("gone", servers=cluster.addresses, isolation_level=None, timeout=2)
    second.execute("SELECT count(*) FROM t").fetchall()
    first.execute("BEGIN")
    first.execute("INSERT INTO t VALUES (1)")
    first.close()  # never committed: the server rolls back and frees the database
    try:
        started = time.monotonic()
        second.execute("INSERT INTO t VALUES (2)")
        assert time.monotonic() - started < 2
        assert second.execute("SELECT x FROM t").fetchall() == [(2,)]
    finally:
        second.close()
