"""``dqlitepy server --advertise``: a node listening on one address and known by another.

On Linux every 127.x.y.z is loopback: a node binding ``0.0.0.0:P`` can be dialled
at ``127.0.0.k:P``, so a cluster of such nodes is three machines binding every
interface.  The Raft handshake authenticates the address a peer dialled against
the one the acceptor calls itself, so a node that named itself by its bind
address (or listed it) would not form a cluster with peers dialling the
advertised one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
from dqlite_cluster import DQLITE_SHELL
from dqlitepy_server import CLUSTER_KEY, DqlitepyCluster, DqlitepyServer, free_port

import dqlitepy
from dqlitepy.server import NodeServer
from dqlitepy.server.advertise import AddressRefused
from dqlitepy.server.datadir import StartupRefused
from dqlitepy.server.identity import InitialConfiguration
from dqlitepy.wire import NodeRole


def _server(
    *args: str, key: bool = True, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``dqlitepy server ARGS`` to its exit (for the ones that refuse to start)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DQLITEPY_")}
    if key:
        environ["DQLITEPY_CLUSTER_KEY"] = CLUSTER_KEY
    environ.update(env or {})
    argv = [sys.executable, "-m", "dqlitepy", "server", *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=environ, check=False
    )


def _go_shell(servers: list[str], database: str, command: str) -> str:
    argv = [DQLITE_SHELL, "-s", ",".join(servers), "-f", "tabular", database, command]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _our_shell(servers: list[str], *args: str) -> str:
    argv = [sys.executable, "-m", "dqlitepy", "shell", "-s", ",".join(servers), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _rows(servers: list[str]) -> list[tuple[object, ...]]:
    with dqlitepy.connect("app", servers=servers, timeout=10, leader_timeout=30) as conn:
        return [tuple(r) for r in conn.execute("SELECT n FROM t ORDER BY n")]


def _insert(servers: list[str], n: int) -> None:
    with dqlitepy.connect("app", servers=servers, timeout=10, leader_timeout=30) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
        conn.execute("INSERT INTO t VALUES (?)", (n,))
        conn.commit()


def test_a_cluster_binding_every_interface_is_known_by_its_advertised_addresses() -> None:
    ports = [free_port() for _ in range(3)]
    advertised = [f"127.0.0.{i + 2}:{port}" for i, port in enumerate(ports)]
    listen = [f"0.0.0.0:{port}" for port in ports]
    # On every interface, membership requests need the key unless loopback clients are
    # trusted: the helpers below (TRANSFER) send none.
    options = ["--trust-loopback-admin"]
    with DqlitepyCluster.formed(3, addresses=advertised, listen=listen, options=options) as cluster:
        assert "advertised as 127.0.0.2:" in cluster.nodes[0].log()
        # Every node, asked on its own advertised address, lists the advertised addresses.
        for address in advertised:
            with dqlitepy.Client([address], timeout=5) as client:
                members = client.cluster()
            assert sorted(n.address for n in members) == sorted(advertised)
            assert all(n.role == NodeRole.VOTER and n.id for n in members), members
        leader = cluster.leader()
        assert leader in advertised
        follower = next(a for a in advertised if a != leader)
        _insert([follower], 1)  # redirected to the leader's advertised address

        # The Go shell and ours, given only a follower, find the leader and its members.
        if os.environ.get("DQLITEPY_NO_DQLITE") != "1":
            assert _go_shell([follower], "app", ".leader").strip() == leader
            listing = _go_shell([follower], "app", ".cluster")
            assert all(a in listing for a in advertised) and "0.0.0.0" not in listing
            assert _go_shell([follower], "app", "SELECT n FROM t").split() == ["1"]
            _go_shell([follower], "app", "INSERT INTO t VALUES (2)")
        else:
            _insert([follower], 2)
        assert _our_shell([follower], "app", ".leader").strip() == leader
        listing = _our_shell([follower], "app", ".cluster")
        assert all(a in listing for a in advertised) and "0.0.0.0" not in listing
        assert _our_shell([follower], "app", "SELECT n FROM t").split() == ["1", "2"]

        # Failover: the survivors elect one of themselves, under its advertised address.
        old = cluster.node(leader)
        old.stop(signal.SIGKILL)
        survivors = [a for a in advertised if a != leader]
        new_leader = cluster.leader(timeout=60, among=survivors)
        assert new_leader in survivors
        _insert(survivors, 3)
        assert _rows(survivors) == [(1,), (2,), (3,)]

        # Restarted with the same advertised address, the old leader is a member again
        # and holds every row.
        old.start(timeout=60)
        cluster.wait_voters(3)
        with dqlitepy.Client([leader], timeout=5) as client:
            assert sorted(n.address for n in client.cluster()) == sorted(advertised)
        assert cluster.read_on(leader, "app", "SELECT n FROM t ORDER BY n") == [(1,), (2,), (3,)]


def test_a_member_keeps_its_advertised_address_across_restarts(tmp_path: Path) -> None:
    port = free_port()
    node = DqlitepyServer(
        tmp_path / "node",
        f"127.0.0.2:{port}",
        cluster_key=CLUSTER_KEY,
        listen=f"0.0.0.0:{port}",
    )
    with node:
        _insert([node.address], 1)
    # Another advertised address would be another member to its cluster: refused.
    moved = _server(
        "-a", f"0.0.0.0:{port}", "--advertise", f"127.0.0.3:{port}", "-d", str(tmp_path / "node")
    )
    assert moved.returncode == 2, moved.stderr
    assert f"knows as 127.0.0.2:{port}" in moved.stderr and "cannot change" in moved.stderr
    # So would listening on another address without advertising the old one.
    bare = _server("-a", f"127.0.0.1:{port}", "-d", str(tmp_path / "node"))
    assert bare.returncode == 2 and f"--advertise 127.0.0.2:{port}" in bare.stderr, bare.stderr
    # Another bind under the same identity is the same member: accepted.
    with DqlitepyServer(tmp_path / "node", f"127.0.0.2:{port}", cluster_key=CLUSTER_KEY) as same:
        assert _rows([same.address]) == [(1,)]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["-a", "0.0.0.0:{port}"], {}, "0.0.0.0 cannot be dialled; give --advertise"),
        (["-a", "[::]:{port}", "-j", "127.0.0.1:1"], {}, ":: cannot be dialled; give --advertise"),
        (["-a", "127.0.0.1:{port}", "--advertise", "0.0.0.0:{port}"], {}, "cannot be dialled"),
        (["-a", "127.0.0.1:{port}", "--advertise", "[::]:{port}"], {}, ":: cannot be dialled"),
        (["-a", "127.0.0.1:{port}", "--advertise", "127.0.0.2:0"], {}, "port 0 cannot be"),
        (["-a", "127.0.0.1:0", "--advertise", "127.0.0.2:0"], {}, "port 0 cannot be"),
        (["-a", "127.0.0.1:{port}", "--advertise", "node1"], {}, "invalid node address"),
        (["-a", "@dqlitepy-adv", "--advertise", "127.0.0.2:{port}"], {}, "listening on TCP"),
        (["-a", "127.0.0.1:{port}"], {"DQLITEPY_ADVERTISE": "0.0.0.0:1"}, "cannot be dialled"),
    ],
)
def test_addresses_nobody_can_dial_are_refused(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    port = free_port()
    argv = [a.format(port=port) for a in args]
    result = _server(*argv, "-d", str(tmp_path / "d"), env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "d").exists()  # refused before it touched anything


def test_a_standalone_node_advertises_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("DQLITEPY_ADVERTISE", f"127.0.0.2:{port}")
    with DqlitepyServer(tmp_path / "node", f"0.0.0.0:{port}") as node:
        with dqlitepy.Client([f"127.0.0.3:{port}"], timeout=5) as client:
            leader = client.leader()
            assert leader is not None and leader.address == f"127.0.0.2:{port}"
            assert [n.address for n in client.cluster()] == [f"127.0.0.2:{port}"]
        assert f"serving on 0.0.0.0:{port}, advertised as 127.0.0.2:{port}" in node.log()


def test_a_standalone_node_on_every_interface_still_starts(tmp_path: Path) -> None:
    port = free_port()
    with DqlitepyServer(tmp_path / "node", f"0.0.0.0:{port}") as node:
        _insert([f"127.0.0.5:{port}"], 1)
    assert "give --advertise" in node.log()


def test_the_embedding_api_takes_advertise(tmp_path: Path) -> None:
    with pytest.raises(AddressRefused, match=r"0\.0\.0\.0 cannot be dialled") as info:
        NodeServer("0.0.0.0:0", tmp_path / "keyed", cluster_key=CLUSTER_KEY.encode())
    assert isinstance(info.value, ValueError) and isinstance(info.value, StartupRefused)
    assert not (tmp_path / "keyed").exists()
    # A free port to listen on, and the port a NAT or proxy forwards to it: its own.
    with dqlitepy.Node("127.0.0.1:0", tmp_path / "free", advertise="127.0.0.2:9") as node:
        assert node.address == "127.0.0.2:9"
        assert node.listen_address.startswith("127.0.0.1:")
        assert not node.listen_address.endswith(":0")
        leader = node.leader()
        assert leader is not None and leader.address == "127.0.0.2:9"
    port = free_port()
    with dqlitepy.Node(f"0.0.0.0:{port}", tmp_path / "all", advertise=f"127.0.0.2:{port}") as node:
        assert node.listen_address == f"0.0.0.0:{port}"
        with dqlitepy.Client([f"127.0.0.3:{port}"], timeout=5) as client:
            assert [n.address for n in client.cluster()] == [f"127.0.0.2:{port}"]


def test_the_first_configuration_records_the_address_and_older_files_have_none(
    tmp_path: Path,
) -> None:
    InitialConfiguration(("127.0.0.3:1",), voting=False, address="127.0.0.2:1").save(tmp_path)
    loaded = InitialConfiguration.load(tmp_path)
    assert loaded == InitialConfiguration(("127.0.0.3:1",), False, "127.0.0.2:1")
    # A file written before the address was recorded: nothing to compare a restart with.
    path = tmp_path / "raft" / "initial-voters.cbor"
    path.write_bytes(cbor2.dumps({"version": 1, "voters": ["127.0.0.3:1"], "voting": True}))
    loaded = InitialConfiguration.load(tmp_path)
    assert loaded is not None and loaded.address is None and loaded.voting
