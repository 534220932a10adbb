"""Voters, standbys and spares on real multi-process dqlitepy clusters.

A node that joins becomes a voter while the cluster has fewer than ``--voters``
(3), else a standby while it has fewer than ``--standbys`` (3), else a spare.
Standbys receive every entry but neither vote nor count toward the quorum;
spares receive nothing.  A leader replaces a voter silent for OFFLINE_AFTER
with an online standby.  What a node holds is read with DUMP, which any node
answers about its own copy.
"""

from __future__ import annotations

import signal
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dqlite_cluster import DqliteDemoCluster
from dqlitepy_server import CLUSTER_KEY, DqlitepyCluster, DqlitepyServer
from waiting import wait_until

import dqlitepy
from dqlitepy import NodeRole
from dqlitepy.replication.replicator import PeerHealth
from dqlitepy.server.membership import OFFLINE_AFTER, next_role_change


@pytest.fixture
def cluster() -> Iterator[DqlitepyCluster]:
    extra: list[DqlitepyServer] = []
    with DqlitepyCluster.formed() as c:
        c.extra = extra  # type: ignore[attr-defined]
        try:
            yield c
        finally:
            for node in extra:
                node.close()


def _join(cluster: DqlitepyCluster, name: str, *options: str) -> DqlitepyServer:
    node = DqlitepyServer(
        cluster.root / name,
        cluster_key=CLUSTER_KEY,
        join=[cluster.addresses[0]],
        options=list(options),
    )
    cluster.extra.append(node)  # type: ignore[attr-defined]
    node.start(timeout=60)
    return node


def _roles(servers: list[str]) -> dict[str, NodeRole]:
    with dqlitepy.Client(servers) as client:
        return {n.address: NodeRole(n.role) for n in client.cluster()}


def _wait_role(servers: list[str], address: str, role: NodeRole, timeout: float = 30) -> None:
    wait_until(
        lambda: _roles(servers).get(address) == role,
        lambda: f"{address} to be a {role.name}: {_roles(servers)}",
        timeout,
        0.2,
    )


def _rows_on(address: str, database: str) -> int:
    """Rows of ``t`` in the copy that the node at ``address`` holds (0 if none)."""
    with dqlitepy.Client([address]) as client:
        files = client.dump(database, address=address)
    if not files.get(database):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            Path(tmp, name).write_bytes(content)
        conn = sqlite3.connect(Path(tmp, database))
        try:
            return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # the table is not there yet
        finally:
            conn.close()


def _wait_rows(address: str, database: str, count: int, timeout: float = 30) -> None:
    held = [0]

    def holds() -> bool:
        held[0] = _rows_on(address, database)
        return held[0] == count

    wait_until(holds, lambda: f"{address} to hold {count} rows, not {held[0]}", timeout, 0.2)


def _insert(servers: list[str], database: str, count: int) -> int:
    conn = dqlitepy.connect(database, servers=servers, isolation_level=None)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v)")
        for i in range(count):
            conn.execute("INSERT INTO t (v) VALUES (?)", (i,))
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        conn.close()


def test_joining_nodes_become_standbys_then_spares(cluster: DqlitepyCluster) -> None:
    standby = _join(cluster, "standby")
    spare = _join(cluster, "spare", "--standbys", "1")
    everyone = [*cluster.addresses, standby.address, spare.address]
    _wait_role(everyone, standby.address, NodeRole.STANDBY)
    _wait_role(everyone, spare.address, NodeRole.SPARE)
    assert sorted(_roles(everyone).values()) == [0, 0, 0, 1, 2]

    # The Go shell reads the roles like a C dqlite cluster's.
    lines = DqliteDemoCluster().shell(".cluster", servers=everyone).splitlines()
    shown = {line.split("|")[1]: line.split("|")[2] for line in lines}
    assert shown[standby.address] in ("stand-by", "standby")
    assert shown[spare.address] == "spare"

    total = _insert(everyone, "roles", 50)
    # The control: a sibling that must change in the same window, the standby, has every
    # row before the spare is looked at (and the same probe sees rows once it is a standby).
    _wait_rows(standby.address, "roles", total)
    time.sleep(0.5)  # more of the window
    assert _rows_on(spare.address, "roles") == 0

    # Only voters lead.
    with dqlitepy.Client(everyone) as client:
        standby_id = next(n.id for n in client.cluster() if n.address == standby.address)
        spare_id = next(n.id for n in client.cluster() if n.address == spare.address)
        with pytest.raises(dqlitepy.Error, match="only voters"):
            client.transfer(standby_id)

        # A spare made a standby catches up; a standby made a spare stops receiving.
        client.assign(spare_id, NodeRole.STANDBY)
        client.assign(standby_id, NodeRole.SPARE)
    _wait_rows(spare.address, "roles", total)
    frozen = _rows_on(standby.address, "roles")
    total = _insert(everyone, "roles", 20)
    _wait_rows(spare.address, "roles", total)  # the control, as above
    time.sleep(0.5)  # more of the window
    assert _rows_on(standby.address, "roles") == frozen


def test_standbys_do_not_vote_until_promoted(cluster: DqlitepyCluster) -> None:
    standby = _join(cluster, "standby")
    everyone = [*cluster.addresses, standby.address]
    _wait_role(everyone, standby.address, NodeRole.STANDBY)
    total = _insert(everyone, "votes", 30)
    _wait_rows(standby.address, "votes", total)

    # Two of three voters down: one voter and a standby are no majority.
    leader = cluster.leader()
    survivor = next(a for a in cluster.addresses if a != leader)
    down = [a for a in cluster.addresses if a != survivor]
    for address in down:
        cluster.node(address).stop(signal.SIGKILL)
    with pytest.raises(dqlitepy.OperationalError):
        conn = dqlitepy.connect(
            "votes", servers=[survivor, standby.address], leader_timeout=4, isolation_level=None
        )
        try:
            conn.execute("INSERT INTO t (v) VALUES ('no quorum')")
        finally:
            conn.close()
    with dqlitepy.Client([standby.address]) as client:
        named = client.leader()
    assert named is None or named.address != standby.address

    # One voter back: a leader again, which replaces the voter still down
    # with the standby (promoting first), as go-dqlite's app does.
    cluster.node(down[0]).start(timeout=60)
    # The control for the 4 s above: once a quorum has a leader again, the same probe
    # writes within them.
    cluster.leader(timeout=60, among=[survivor, down[0]])
    conn = dqlitepy.connect(
        "votes", servers=[survivor, standby.address], leader_timeout=4, isolation_level=None
    )
    try:
        conn.execute("INSERT INTO t (v) VALUES ('quorum again')")
    finally:
        conn.close()
    total += 1
    live = [survivor, down[0], standby.address]
    _wait_role(live, standby.address, NodeRole.VOTER, timeout=OFFLINE_AFTER + 30)
    _wait_role(live, down[1], NodeRole.SPARE, timeout=30)
    # Voters now: survivor, down[0] and the former standby; any one may fail.
    victim = cluster.leader()
    (standby if victim == standby.address else cluster.node(victim)).stop(signal.SIGKILL)
    live = [a for a in [survivor, down[0], standby.address] if a != victim]
    assert _insert(live, "votes", 10) == total + 10


def test_a_dead_voter_is_replaced_by_a_standby(cluster: DqlitepyCluster) -> None:
    standby = _join(cluster, "standby")
    everyone = [*cluster.addresses, standby.address]
    _wait_role(everyone, standby.address, NodeRole.STANDBY)
    total = _insert(everyone, "replace", 10)
    victim = cluster.addresses[0]  # the first node: it restarts without --join
    cluster.node(victim).stop(signal.SIGKILL)
    started = time.monotonic()
    _wait_role(everyone, standby.address, NodeRole.VOTER, timeout=OFFLINE_AFTER + 30)
    _wait_role(everyone, victim, NodeRole.SPARE)
    print(f"voter replaced after {time.monotonic() - started:.1f} s")
    total = _insert(everyone, "replace", 10)
    # Back, the replaced node asks for a role again and catches up as a standby.
    cluster.node(victim).start(timeout=60)
    _wait_role(everyone, victim, NodeRole.STANDBY)
    _wait_rows(victim, "replace", total)
    # Three voters online: one more may fail, the leader included.
    leader = cluster.leader()
    (standby if leader == standby.address else cluster.node(leader)).stop(signal.SIGKILL)
    live = [a for a in everyone if a != leader]
    assert _insert(live, "replace", 10) == total + 10


LEADER = "10.0.0.1:9001"


def _h(silent: float, behind: int = 0, acknowledged: bool = True) -> PeerHealth:
    return PeerHealth(silent, behind, acknowledged)


@pytest.mark.parametrize(
    ("roles", "health", "expected"),
    [
        # Three voters online: nothing to do.
        ({LEADER: 0, "b": 0, "c": 0, "s": 1}, {"b": _h(0.1), "c": _h(0.2), "s": _h(0.1)}, None),
        # A voter silent too long: the standby is promoted first...
        (
            {LEADER: 0, "b": 0, "c": 0, "s": 1},
            {"b": _h(0.1), "c": _h(OFFLINE_AFTER + 1), "s": _h(0.1)},
            ("s", NodeRole.VOTER),
        ),
        # ... and then the silent voter becomes a spare.
        (
            {LEADER: 0, "b": 0, "c": 0, "s": 0},
            {"b": _h(0.1), "c": _h(OFFLINE_AFTER + 1), "s": _h(0.1)},
            ("c", NodeRole.SPARE),
        ),
        # A voter missing (removed): a standby fills the place.
        ({LEADER: 0, "b": 0, "s": 1}, {"b": _h(0.1), "s": _h(0.1)}, ("s", NodeRole.VOTER)),
        # No standby fit to vote (silent, or far behind): nothing to do.
        (
            {LEADER: 0, "b": 0, "c": 0, "s": 1, "t": 1},
            {"b": _h(0.1), "c": _h(OFFLINE_AFTER + 1), "s": _h(5.0), "t": _h(0.1, 5000)},
            None,
        ),
        # A standby that never acknowledged anything in this term is not caught up, however
        # short the log and however recently it became a standby (it may not even exist).
        (
            {LEADER: 0, "b": 0, "s": 1},
            {"b": _h(0.1), "s": _h(0.1, 3, acknowledged=False)},
            None,
        ),
        # A spare is never picked: the leader does not know whether it is up.
        ({LEADER: 0, "b": 0, "x": 2}, {"b": _h(0.1)}, None),
        # Four voters, all online: no demotion.
        ({LEADER: 0, "b": 0, "c": 0, "d": 0}, {a: _h(0.1) for a in "bcd"}, None),
    ],
)
def test_the_leader_replaces_offline_voters_one_change_at_a_time(
    roles: dict[str, int],
    health: dict[str, PeerHealth],
    expected: tuple[str, NodeRole] | None,
) -> None:
    assert next_role_change(roles, health, LEADER, 3) == expected
