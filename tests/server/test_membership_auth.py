"""Who may change a replicated cluster, and who may vote in it: real ``dqlitepy server`` clusters.

A node serves ADD, ASSIGN, REMOVE and TRANSFER only to a connection that proved the cluster
key, or to a client on its own host when it trusts loopback (by default only a node listening
on loopback does).  Test clusters run on 127.0.0.1, so ``--no-trust-loopback-admin`` plays the
node reachable from elsewhere; a node on this host's non-loopback address checks the default.
Whoever asks, a node becomes a voter only once it has caught up with the log, so voters that
cannot be reached can never take the quorum away.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dqlite_cluster import DQLITE_SHELL
from dqlitepy_server import CLUSTER_KEY, DqlitepyCluster, DqlitepyServer, free_port
from raw_client import Raw
from waiting import wait_until

import dqlitepy
from dqlitepy import NodeRole
from dqlitepy.wire import (
    AddRequest,
    AuthChallengeRequest,
    AuthProofRequest,
    ChallengeResponse,
    EmptyResponse,
    FailureResponse,
    RemoveRequest,
    admin_proof,
)

KEY = CLUSTER_KEY.encode()
SQLITE_AUTH = 23
SQLITE_BUSY = 5
_REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DQLITEPY_CLUSTER_KEY", raising=False)


@pytest.fixture(scope="module")
def guarded() -> Iterator[DqlitepyCluster]:
    """Three nodes that trust no client without the key (their joins had to prove it)."""
    with DqlitepyCluster.formed(options=["--no-trust-loopback-admin"]) as cluster:
        yield cluster


def _unused_address() -> str:
    return f"127.0.0.1:{free_port()}"


def _members(servers: list[str]) -> list[tuple[int, str, int]]:
    with dqlitepy.Client(servers) as client:
        return sorted((n.id, n.address, int(n.role)) for n in client.cluster())


def _follower_id(cluster: DqlitepyCluster) -> int:
    leader = cluster.leader()
    return next(i for i, a, _ in _members(cluster.addresses) if a != leader)


def _refused(exc: pytest.ExceptionInfo[dqlitepy.DatabaseError], message: str) -> None:
    assert exc.value.sqlite_errorcode == SQLITE_AUTH, exc.value
    assert exc.value.sqlite_errorname == "SQLITE_AUTH"
    assert str(exc.value) == message


def _shell(servers: list[str], command: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "dqlitepy",
            "shell",
            "-s",
            ",".join(servers),
            *options,
            "db",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=_REPO,
    )


def _insert(servers: list[str], database: str, count: int) -> int:
    conn = dqlitepy.connect(database, servers=servers, isolation_level=None, timeout=10)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v)")
        for i in range(count):
            conn.execute("INSERT INTO t (v) VALUES (?)", (i,))
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        conn.close()


# -- strangers --------------------------------------------------------------------------------


def test_a_stranger_cannot_change_the_cluster(guarded: DqlitepyCluster) -> None:
    before = _members(guarded.addresses)
    assert [role for _, _, role in before] == [NodeRole.VOTER] * 3  # formed by proven joins
    leader = guarded.leader()
    follower = _follower_id(guarded)
    attempts = {
        "add": lambda c: c.add(4242, _unused_address()),
        "assign voter": lambda c: c.assign(4242, "voter"),
        "assign spare": lambda c: c.assign(follower, "spare"),
        "remove": lambda c: c.remove(follower),
        "transfer": lambda c: c.transfer(follower),
        "transfer to any": lambda c: c.transfer(0),
    }
    with dqlitepy.Client(guarded.addresses) as stranger:
        for name, attempt in attempts.items():
            with pytest.raises(dqlitepy.DatabaseError) as info:
                attempt(stranger)
            _refused(info, "not authorized")
            print(f"{name}: refused")
    # A wrong key proves nothing either.
    with dqlitepy.Client(guarded.addresses, cluster_key=b"wrong-key-0123456789abcdef-wrong") as c:
        with pytest.raises(dqlitepy.DatabaseError) as info:
            c.remove(follower)
        _refused(info, "not authorized: wrong cluster key")
    # Every node refuses, followers too, before telling "not leader".
    for address in guarded.addresses:
        raw = Raw(address)
        try:
            assert raw.call(AddRequest(4243, _unused_address())) == FailureResponse(
                SQLITE_AUTH, "not authorized"
            )
        finally:
            raw.close()
    assert _members(guarded.addresses) == before
    assert guarded.leader() == leader


def test_a_proof_is_good_for_one_challenge_on_one_connection(guarded: DqlitepyCluster) -> None:
    leader = guarded.leader()
    ghost = _unused_address()
    a, b, c = Raw(leader), Raw(leader), Raw(leader)
    try:
        # Without a challenge there is nothing to prove.
        refused = FailureResponse(SQLITE_AUTH, "not authorized: no challenge to answer")
        assert c.call(AuthProofRequest(bytes(32), bytes(32))) == refused

        challenge = a.call(AuthChallengeRequest())
        assert isinstance(challenge, ChallengeResponse)
        nonce = bytes(range(32))
        proof = AuthProofRequest(nonce, admin_proof(KEY, challenge.nonce, nonce))
        other = b.call(AuthChallengeRequest())
        assert isinstance(other, ChallengeResponse) and other.nonce != challenge.nonce
        wrong = FailureResponse(SQLITE_AUTH, "not authorized: wrong cluster key")
        assert b.call(proof) == wrong  # replayed on another connection
        assert b.call(AddRequest(4244, ghost)) == FailureResponse(SQLITE_AUTH, "not authorized")

        assert a.call(proof) == EmptyResponse()
        assert a.call(proof) == refused  # its challenge is used up; the connection stays trusted
        assert a.call(AddRequest(4244, ghost)) == EmptyResponse()
        assert a.call(RemoveRequest(4244)) == EmptyResponse()
        assert c.call(RemoveRequest(4244)) == FailureResponse(SQLITE_AUTH, "not authorized")
    finally:
        for raw in (a, b, c):
            raw.close()


@pytest.mark.dqlite
def test_the_go_shell_is_refused_too(guarded: DqlitepyCluster) -> None:
    if os.environ.get("DQLITEPY_NO_DQLITE") == "1":
        pytest.skip("DQLITEPY_NO_DQLITE=1: the Go dqlite shell is not used")
    assert os.access(DQLITE_SHELL, os.X_OK), f"{DQLITE_SHELL} not found (Debian's go-dqlite)"
    before = _members(guarded.addresses)
    victim = next(a for a in guarded.addresses if a != guarded.leader())
    argv = [DQLITE_SHELL, "-s", ",".join(guarded.addresses), "db", f".remove {victim}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "not authorized" in result.stderr
    assert _members(guarded.addresses) == before


# -- key holders ------------------------------------------------------------------------------


def test_with_the_key_the_cluster_can_be_changed(
    guarded: DqlitepyCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _members(guarded.addresses)
    key_file = tmp_path / "key"
    key_file.write_text(CLUSTER_KEY + "\n")
    ghost = _unused_address()

    with dqlitepy.Client(guarded.addresses, cluster_key=KEY) as admin:
        admin.add(4245, ghost)
        assert (4245, ghost, NodeRole.SPARE) in _members(guarded.addresses)
    with dqlitepy.Client(guarded.addresses, cluster_key=str(key_file)) as admin:
        admin.assign(4245, "standby")
        assert (4245, ghost, NodeRole.STANDBY) in _members(guarded.addresses)
    monkeypatch.setenv("DQLITEPY_CLUSTER_KEY", CLUSTER_KEY)
    with dqlitepy.Client(guarded.addresses) as admin:
        admin.remove(4245)
    assert _members(guarded.addresses) == before

    # The shell: refused without the key, served with --cluster-key-file.
    monkeypatch.delenv("DQLITEPY_CLUSTER_KEY")
    refused = _shell(guarded.addresses, f".add 4246 {ghost}")
    assert (refused.returncode, refused.stderr) == (1, "Error: not authorized\n")
    added = _shell(guarded.addresses, f".add 4246 {ghost}", "--cluster-key-file", str(key_file))
    assert added.returncode == 0, added.stderr
    removed = _shell(guarded.addresses, f".remove {ghost}", "--cluster-key-file", str(key_file))
    assert removed.returncode == 0, removed.stderr
    assert _members(guarded.addresses) == before

    # Last, as it moves the leader.
    leader = guarded.leader()
    target = next(a for a in guarded.addresses if a != leader)
    moved = _shell(guarded.addresses, f".transfer {target}", "--cluster-key-file", str(key_file))
    assert moved.returncode == 0, moved.stderr
    wait_until(lambda: guarded.leader() == target, "leadership to move", interval=0.1)


# -- the default ------------------------------------------------------------------------------


def _non_loopback_ip() -> str | None:
    """An IPv4 address of this host that is not loopback (that of the default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            ip = str(sock.getsockname()[0])
        except OSError:
            return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


def _wait_leader(address: str) -> None:
    def leads() -> bool:
        with dqlitepy.Client([address], timeout=2) as client:
            return client.leader() is not None

    wait_until(leads, f"{address} to lead", timeout=30, interval=0.1)


def test_a_node_on_a_non_loopback_address_wants_the_key_by_default() -> None:
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    with DqlitepyServer(address=f"{ip}:{free_port()}", cluster_key=CLUSTER_KEY) as node:
        _wait_leader(node.address)
        ghost = _unused_address()
        with dqlitepy.Client([node.address]) as stranger:
            with pytest.raises(dqlitepy.DatabaseError) as info:
                stranger.add(4247, ghost)
            _refused(info, "not authorized")
        assert len(_members([node.address])) == 1
        with dqlitepy.Client([node.address], cluster_key=KEY) as admin:
            admin.add(4247, ghost)
            admin.remove(4247)


def test_a_loopback_node_trusts_clients_on_its_host_by_default() -> None:
    with DqlitepyServer(cluster_key=CLUSTER_KEY) as node:
        _wait_leader(node.address)
        with dqlitepy.Client([node.address]) as local:
            local.add(4248, _unused_address())
            local.remove(4248)


# -- learner first ----------------------------------------------------------------------------


def test_unreachable_voters_cannot_take_the_quorum_away() -> None:
    ghosts = [(4250 + i, _unused_address()) for i in range(3)]
    with DqlitepyCluster.formed() as cluster:
        with dqlitepy.Client(cluster.addresses, cluster_key=KEY) as admin:
            for node_id, address in ghosts:
                admin.add(node_id, address)
                started = time.monotonic()
                with pytest.raises(dqlitepy.OperationalError) as info:
                    admin.assign(node_id, "voter")
                assert info.value.sqlite_errorcode == SQLITE_BUSY
                assert "has not caught up with the log" in str(info.value)
                print(f"assign voter {address}: refused after {time.monotonic() - started:.1f} s")

        def roles() -> dict[str, int]:
            return {a: r for _, a, r in _members(cluster.addresses)}

        expected = {a: NodeRole.VOTER for a in cluster.addresses}
        expected.update({a: NodeRole.STANDBY for _, a in ghosts})
        assert roles() == expected
        assert _insert(cluster.addresses, "quorum", 5) == 5

        # The configuration is in the log: every node restarted, it still has a leader.
        for node in cluster.nodes:
            node.stop(signal.SIGKILL)
        for node in cluster.nodes:
            node.start(timeout=60)
        cluster.leader(timeout=30)
        assert _insert(cluster.addresses, "quorum", 5) == 10
        assert roles() == expected


def test_an_embedding_applications_node_client_holds_the_key(tmp_path: Path) -> None:
    key = CLUSTER_KEY.encode()
    options = {"cluster_key": key, "trust_loopback_admin": False}
    with dqlitepy.Node(_unused_address(), tmp_path / "node", **options) as node:
        wait_until(lambda: node.is_leader, "the node to lead", timeout=30, interval=0.05)
        spare = _unused_address()
        with dqlitepy.Client([node.address]) as stranger, pytest.raises(dqlitepy.DatabaseError):
            stranger.add(4244, spare)
        with node.client() as client:
            client.add(4244, spare)
            assert (4244, spare, NodeRole.SPARE) in _members([node.address])
            client.remove(4244)
        assert all(address != spare for _, address, _ in _members([node.address]))
