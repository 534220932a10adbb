"""The admin ``Client``: one method per cluster request, against a real cluster.

Read-only requests run on the shared cluster (``servers``); membership changes and leadership
transfers get a fresh cluster each.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dqlite_cluster import DqliteDemoCluster
from waiting import wait_until

import dqlitepy
from dqlitepy import NodeRole

pytestmark = pytest.mark.dqlite

Connect = Callable[..., dqlitepy.Connection]


@pytest.fixture
def client(servers: list[str]) -> Iterator[dqlitepy.Client]:
    with dqlitepy.Client(servers) as admin:
        yield admin


@pytest.fixture
def fresh_client(fresh_dqlite_cluster: DqliteDemoCluster) -> Iterator[dqlitepy.Client]:
    with dqlitepy.Client(fresh_dqlite_cluster.addresses) as admin:
        yield admin


def _unused_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _roles(admin: dqlitepy.Client) -> dict[int, int]:
    return {node.id: node.role for node in admin.cluster()}


def _wait_for_leader(admin: dqlitepy.Client, node_id: int, timeout: float = 10.0) -> None:
    seen: list[dqlitepy.NodeInfo | None] = [None]

    def leads() -> bool:
        seen[0] = admin.leader()
        return seen[0] is not None and seen[0].id == node_id

    wait_until(leads, lambda: f"id {node_id} to lead (leader is {seen[0]})", timeout, 0.05)


# -- read-only requests --------------------------------------------------------------------------


def test_leader(client: dqlitepy.Client, servers: list[str]) -> None:
    leader = client.leader()
    assert leader is not None
    assert leader.address in servers
    assert leader.id in {node.id for node in client.cluster()}
    # Every node names the same leader.
    for address in servers:
        with dqlitepy.Client([address]) as one:
            assert one.leader() == leader


def test_cluster(client: dqlitepy.Client, servers: list[str]) -> None:
    nodes = client.cluster()
    assert sorted(node.address for node in nodes) == sorted(servers)
    assert [node.role for node in nodes] == [NodeRole.VOTER] * len(servers)
    assert len({node.id for node in nodes}) == len(servers)
    assert all(node.id > 0 for node in nodes)
    assert all(isinstance(node, dqlitepy.NodeInfo) for node in nodes)


def test_cluster_matches_the_go_shell(
    client: dqlitepy.Client, dqlite_cluster: DqliteDemoCluster, servers: list[str]
) -> None:
    roles = {0: "voter", 1: "standby", 2: "spare"}
    ours = sorted(f"{n.id:x}|{n.address}|{roles[n.role]}" for n in client.cluster())
    theirs = sorted(dqlite_cluster.shell(".cluster", servers=servers).splitlines())
    assert ours == theirs


def test_client_accepts_a_comma_separated_string(servers: list[str]) -> None:
    with dqlitepy.Client(",".join(servers)) as admin:
        assert len(admin.cluster()) == len(servers)


def test_client_needs_servers() -> None:
    with pytest.raises(dqlitepy.InterfaceError):
        dqlitepy.Client([])


def test_describe(client: dqlitepy.Client, servers: list[str]) -> None:
    default = client.describe()
    assert isinstance(default, dqlitepy.NodeMetadata)
    assert isinstance(default.failure_domain, int)
    assert isinstance(default.weight, int)
    assert client.describe(servers[0]) == default
    for address in servers:
        assert client.describe(address).failure_domain >= 0


def test_weight_then_describe(client: dqlitepy.Client, servers: list[str]) -> None:
    address = servers[-1]
    before = client.describe(address).weight
    try:
        client.weight(before + 7, address)
        assert client.describe(address).weight == before + 7
        # Only that node changed.
        for other in servers[:-1]:
            assert client.describe(other).weight != before + 7
    finally:
        client.weight(before, address)
    assert client.describe(address).weight == before


def test_dump(client: dqlitepy.Client, connect: Connect, db_name: str, tmp_path: Path) -> None:
    conn = connect()
    conn.execute("CREATE TABLE t (x INTEGER, s TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row {i}") for i in range(200)])
    conn.commit()
    leader = client.leader()
    assert leader is not None
    files = client.dump(db_name, leader.address)  # followers may be a heartbeat behind
    assert list(files) == [db_name, db_name + "-wal"]
    assert files[db_name].startswith(b"SQLite format 3\0")
    assert len(files[db_name]) % 512 == 0
    assert files[db_name + "-wal"]
    # The two files are a database the standard library's sqlite3 can read.
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    copy = sqlite3.connect(tmp_path / db_name)
    try:
        assert copy.execute("SELECT count(*), sum(x), max(s) FROM t").fetchone() == (
            200,
            sum(range(200)),
            "row 99",
        )
    finally:
        copy.close()


def test_unknown_node_errors(client: dqlitepy.Client, servers: list[str]) -> None:
    unknown = 0x7EADBEEF
    with pytest.raises(dqlitepy.OperationalError) as info:
        client.assign(unknown, "standby")
    assert info.value.sqlite_errorcode == 1
    with pytest.raises(dqlitepy.OperationalError) as info:
        client.remove(unknown)
    assert info.value.sqlite_errorcode == 1
    with pytest.raises(dqlitepy.OperationalError):
        client.transfer(unknown)
    # The failures changed nothing.
    assert [node.role for node in client.cluster()] == [NodeRole.VOTER] * len(servers)


def test_bad_role_is_refused_locally(client: dqlitepy.Client) -> None:
    with pytest.raises(ValueError):
        client.assign(1, "chairman")
    with pytest.raises(ValueError):
        client.assign(1, 7)


def test_unreachable_node(client: dqlitepy.Client) -> None:
    with pytest.raises(dqlitepy.OperationalError):
        client.describe(_unused_address())


# -- membership changes (fresh cluster) ----------------------------------------------------------


def test_add_assign_remove(fresh_client: dqlitepy.Client) -> None:
    admin = fresh_client
    new_id, address = 4242, _unused_address()
    admin.add(new_id, address)
    nodes = {node.id: node for node in admin.cluster()}
    assert nodes[new_id].address == address
    assert nodes[new_id].role == NodeRole.SPARE == 2

    admin.assign(new_id, "standby")
    assert _roles(admin)[new_id] == NodeRole.STANDBY == 1
    admin.assign(new_id, NodeRole.SPARE)
    assert _roles(admin)[new_id] == NodeRole.SPARE

    with pytest.raises(dqlitepy.OperationalError) as info:
        admin.add(new_id, _unused_address())  # the id is taken
    assert info.value.sqlite_errorcode == 1

    admin.remove(new_id)
    assert new_id not in _roles(admin)
    assert len(admin.cluster()) == 3


def test_transfer_leadership(
    fresh_dqlite_cluster: DqliteDemoCluster, fresh_client: dqlitepy.Client
) -> None:
    admin = fresh_client
    conn = dqlitepy.connect("transfer", servers=fresh_dqlite_cluster.addresses)
    try:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        before = admin.leader()
        assert before is not None
        target = next(node for node in admin.cluster() if node.id != before.id)

        admin.transfer(target.id)
        _wait_for_leader(admin, target.id)
        assert fresh_dqlite_cluster.leader() == target.address  # the Go shell agrees

        # Calls that only the leader serves find the new one (the old leader now answers
        # "not leader", which is safe to retry).
        admin.add(99, _unused_address())
        assert _roles(admin)[99] == NodeRole.SPARE
        admin.remove(99)
        # So does an open driver connection, on its next statement.
        conn.execute("INSERT INTO t VALUES (2)")
        conn.commit()
        assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]

        # And back, with 0: let raft pick a voter.
        admin.transfer(0)
        wait_until(
            lambda: (leader := admin.leader()) is not None and leader.id != target.id,
            "leadership to move on",
            10,
            0.05,
        )
    finally:
        conn.close()
