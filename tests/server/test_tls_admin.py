"""Who may change the cluster with a TLS client certificate: real nodes, real clients.

A node serves ADD, ASSIGN, REMOVE and TRANSFER to a connection whose client certificate
chains to its admin CA (``--tls-admin-ca``, by default the ``--tls-ca`` of mutual TLS),
without the cluster key (``dqlitepy/server/auth.py``, ``server/tls.py``).  The clusters
here run on 127.0.0.1 with ``--no-trust-loopback-admin``: a client is trusted for its
certificate or not at all, as from another host.

The three-node cluster serves TLS without mutual TLS: its nodes share ``node`` (with the
CA that signed it in the file, which is what they verify each other against) and trust
the admin CA for administrators.  Clients without a certificate use it for SQL;
certificates of the admin CA change it; a certificate the cluster's CA signed connects
but changes nothing; one of another CA, a self-signed one or an expired one is refused at
the handshake.  DQLITEPY_CLUSTER_KEY is removed from the environment: no client here holds
the key unless given it.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dqlite_cluster import DQLITE_SHELL, require_go_shell
from dqlitepy_server import CLUSTER_KEY, DqlitepyCluster, DqlitepyServer, free_port
from tls_certs import Certs, make_certs
from waiting import wait_until

import dqlitepy
import dqlitepy.aio
from dqlitepy import NodeRole
from dqlitepy.server.auth import ClientCertificate
from dqlitepy.server.tls import NodeTLS

SQLITE_AUTH = 23
_REPO = Path(__file__).resolve().parents[2]
_GUARDED = ["--no-trust-loopback-admin"]


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DQLITEPY_CLUSTER_KEY", raising=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _ghost() -> str:
    return f"127.0.0.1:{free_port()}"


def _members(servers: list[str], context: ssl.SSLContext) -> list[tuple[int, str, int]]:
    with dqlitepy.Client(servers, ssl=context) as client:
        return sorted((n.id, n.address, int(n.role)) for n in client.cluster())


def _refused(call: Callable[[], object], message: str = "not authorized") -> None:
    with pytest.raises(dqlitepy.DatabaseError) as info:
        call()
    assert info.value.sqlite_errorcode == SQLITE_AUTH, info.value
    assert str(info.value) == message


def _shell(servers: list[str], command: str, *tls: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "dqlitepy", "shell", "-s", ",".join(servers), *tls, "db"]
    return subprocess.run(
        [*argv, command], capture_output=True, text=True, timeout=60, check=False, cwd=_REPO
    )


def _go_shell(
    servers: list[str], command: str, cert: str, key: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    # The 1.11 shell trusts the certificates of its --cert file: the CA that signed the
    # nodes' certificate follows the client's own there.
    argv = [DQLITE_SHELL, "-s", ",".join(servers), "-c", cert, "-k", key, "db", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


# ----------------------------------------------------------------------------- the contexts


def _handshake(tls: NodeTLS, client: ssl.SSLContext) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """A node's side and a client's side of one TLS connection, handshake done."""
    a, b = socket.socketpair()
    server = tls.server.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            server.do_handshake()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        ours = client.wrap_socket(b, server_hostname="localhost")
    finally:
        thread.join(10)
    assert not failed, failed
    ours.sendall(b"x")
    assert server.recv(1) == b"x"
    return server, ours


def test_which_certificate_authorizes(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = NodeTLS.from_files(
        certs.chain("node", "ca"), certs.key("node"), admin_ca=certs.crt("adminca")
    )
    assert tls.server.verify_mode == ssl.CERT_OPTIONAL and not tls.mutual
    cases: list[tuple[str | None, ClientCertificate | None]] = [
        (None, None),
        ("admin", ClientCertificate("CN=admin", True)),
        (
            "client",
            ClientCertificate(
                "CN=client", False, "this client certificate is not signed by the admin CA"
            ),
        ),
    ]
    for name, expected in cases:
        server, client = _handshake(tls, certs.client(name))
        with server, client:
            assert tls.client_certificate(server) == expected, name
    # Judged at each request: past its notAfter, the same connection is refused.
    server, client = _handshake(tls, certs.client("admin"))
    with server, client:
        monkeypatch.setattr(time, "time", lambda: 4e9)  # the year 2096
        seen = tls.client_certificate(server)
        assert seen is not None and not seen.trusted and "expired" in seen.why_not


def test_the_admin_ca_is_the_mutual_tls_ca_unless_given(certs: Certs) -> None:
    def admin_cas(*files: str) -> set[bytes]:
        return {ssl.PEM_cert_to_DER_cert(Path(f).read_text()) for f in files}

    node = (certs.crt("node"), certs.key("node"))
    assert NodeTLS.from_files(*node).admin_cas == set()
    assert NodeTLS.from_files(*node).server.verify_mode == ssl.CERT_NONE
    mutual = NodeTLS.from_files(*node, certs.crt("ca"))
    assert mutual.admin_cas == admin_cas(certs.crt("ca"))
    both = NodeTLS.from_files(*node, certs.crt("ca"), certs.crt("adminca"))
    assert both.admin_cas == admin_cas(certs.crt("adminca"))
    assert both.server.verify_mode == ssl.CERT_REQUIRED
    # A client of either CA connects to mutual TLS; only the admin CA's changes the cluster.
    for name, trusted in [("client", False), ("admin", True)]:
        server, client = _handshake(both, certs.client(name))
        with server, client:
            seen = both.client_certificate(server)
            assert seen is not None and seen.trusted is trusted
    # No session tickets: a resumed session has no verified chain to judge.
    assert mutual.server.num_tickets == 0 and both.server.num_tickets == 0
    with pytest.raises(ValueError, match="cannot load the TLS files"):
        NodeTLS.from_files(*node, admin_ca=certs.key("adminca"))


# ----------------------------------------------------------------------------- a cluster


@pytest.fixture(scope="module")
def cluster(certs: Certs) -> Iterator[DqlitepyCluster]:
    options = [
        "--tls-cert", certs.chain("node", "ca"), "--tls-key", certs.key("node"),
        "--tls-admin-ca", certs.crt("adminca"), *_GUARDED,
    ]  # fmt: skip
    with DqlitepyCluster.formed(3, options=options, ssl=certs.client()) as formed:
        yield formed


def test_a_client_without_an_admin_certificate_changes_nothing(
    certs: Certs, cluster: DqlitepyCluster
) -> None:
    plain = certs.client()
    before = _members(cluster.addresses, plain)
    leader = cluster.leader()
    follower = next(i for i, a, _ in before if a != leader)
    attempts: dict[str, Callable[[dqlitepy.Client], object]] = {
        "add": lambda c: c.add(4242, _ghost()),
        "assign": lambda c: c.assign(follower, "spare"),
        "remove": lambda c: c.remove(follower),
        "transfer": lambda c: c.transfer(follower),
    }
    not_admin = "not authorized: this client certificate is not signed by the admin CA"
    for name, message in [(None, "not authorized"), ("client", not_admin)]:
        with dqlitepy.Client(cluster.addresses, ssl=certs.client(name)) as client:
            # Plain SQL is served all the same.
            assert client.leader() is not None
            for attempt in attempts.values():
                _refused(lambda: attempt(client), message)  # noqa: B023 - called at once
    conn = dqlitepy.connect("certauth", servers=cluster.addresses, ssl=plain)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()
    tls = ["--cert", certs.crt("client"), "--key", certs.key("client"), "--ca", certs.crt("ca")]
    done = _shell(
        cluster.addresses, f".remove {next(a for i, a, _ in before if i == follower)}", *tls
    )
    assert (done.returncode, done.stderr) == (1, f"Error: {not_admin}\n")
    assert _members(cluster.addresses, plain) == before
    assert cluster.leader() == leader
    logs = "".join(n.log() for n in cluster.nodes)
    assert "(client certificate CN=client): not authorized" in logs


@pytest.mark.parametrize(
    ("name", "alert"),
    [
        ("rogue", "UNKNOWN_CA|unknown ca"),
        ("selfie", "UNKNOWN_CA|unknown ca"),
        ("expired", "CERTIFICATE_EXPIRED|certificate expired"),
    ],
)
def test_a_certificate_the_cluster_does_not_trust_is_refused_at_the_handshake(
    certs: Certs, cluster: DqlitepyCluster, name: str, alert: str
) -> None:
    before = _members(cluster.addresses, certs.client())
    # Repeated: with TLS 1.3 the alert races the client's first request, whose write
    # may fail first; the client must still say what the node said.
    for _ in range(10):
        started = time.monotonic()
        with (
            pytest.raises(dqlitepy.OperationalError, match=alert),
            dqlitepy.Client(cluster.addresses, ssl=certs.client(name), timeout=5) as client,
        ):
            client.add(4243, _ghost())
        assert time.monotonic() - started < 10
    assert _members(cluster.addresses, certs.client()) == before
    logs = "".join(n.log() for n in cluster.nodes)
    assert "refused the TLS client certificate of 127.0.0.1:" in logs


def test_an_admin_certificate_changes_the_cluster(certs: Certs, cluster: DqlitepyCluster) -> None:
    plain = certs.client()
    before = _members(cluster.addresses, plain)
    ghost = _ghost()
    with dqlitepy.Client(cluster.addresses, ssl=certs.client("admin")) as admin:
        admin.add(4244, ghost)
        assert (4244, ghost, NodeRole.SPARE) in _members(cluster.addresses, plain)
        admin.assign(4244, "standby")
        assert (4244, ghost, NodeRole.STANDBY) in _members(cluster.addresses, plain)
        admin.remove(4244)
    assert _members(cluster.addresses, plain) == before

    async def aio(first: str) -> None:
        servers = [first, *(a for a in cluster.addresses if a != first)]
        async with dqlitepy.aio.Client(servers, ssl=certs.client("admin")) as admin:
            await admin.add(4245, ghost)
            await admin.remove(4245)

    # Each loop ends right after the Client closed, having asked a follower first or
    # not: its TLS sockets must be closed by then, not left to the garbage collector
    # (they once waited for the node's close_notify).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for first in cluster.addresses:
            asyncio.run(asyncio.wait_for(aio(first), 60))
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], caught
    tls = ["--cert", certs.crt("admin"), "--key", certs.key("admin"), "--ca", certs.crt("ca")]
    for command in (f".add 4246 {ghost}", f".remove {ghost}"):
        done = _shell(cluster.addresses, command, *tls)
        assert done.returncode == 0, done.stderr
    assert _members(cluster.addresses, plain) == before
    logs = "".join(n.log() for n in cluster.nodes)
    assert "ADD from 127.0.0.1:" in logs and "authorized by its client certificate CN=admin" in logs

    # TRANSFER, which moves the leader.
    leader = cluster.leader()
    target = next((i, a) for i, a, _ in before if a != leader)
    with dqlitepy.Client(cluster.addresses, ssl=certs.client("admin")) as admin:
        admin.transfer(target[0])
    wait_until(lambda: cluster.leader() == target[1], "leadership to move", interval=0.1)


@pytest.mark.dqlite
def test_the_go_shell_removes_a_node_with_an_admin_certificate(
    certs: Certs, cluster: DqlitepyCluster
) -> None:
    require_go_shell()
    plain = certs.client()
    before = _members(cluster.addresses, plain)
    leader = cluster.leader()
    victim = next(a for _, a, _ in before if a != leader)
    # The cluster's own certificate connects; it does not make its holder an administrator.
    refused = _go_shell(
        cluster.addresses, f".remove {victim}", certs.crt("node"), certs.key("node")
    )
    assert refused.returncode == 1 and "not authorized" in refused.stderr, refused
    # Another CA's certificate: the node refuses the handshake, so the shell keeps
    # looking for a leader (bounded here); the control below answers within the bound.
    with pytest.raises(subprocess.TimeoutExpired):
        _go_shell(cluster.addresses, ".cluster", certs.chain("rogue", "ca"), certs.key("rogue"), 5)
    assert _members(cluster.addresses, plain) == before

    admin = (certs.chain("admin", "ca"), certs.key("admin"))
    done = _go_shell(cluster.addresses, f".remove {victim}", *admin, timeout=5)
    assert done.returncode == 0, done.stderr
    after = [m for m in before if m[1] != victim]
    assert _members(cluster.addresses, plain) == after
    done = _go_shell(cluster.addresses, ".cluster", *admin)
    assert done.returncode == 0 and victim not in done.stdout, done


# ----------------------------------------------------------------------------- mutual TLS


@pytest.mark.dqlite
def test_with_mutual_tls_the_clusters_ca_authorizes_by_default(certs: Certs) -> None:
    require_go_shell()
    options = [*certs.server_options("node", ca="ca"), *_GUARDED]
    with DqlitepyServer(cluster_key=CLUSTER_KEY, options=options) as node:
        servers = [node.address]
        client = certs.client("client")
        wait_until(lambda: _members(servers, client), "the node to lead", timeout=30)
        ghost = _ghost()
        with dqlitepy.Client(servers, ssl=client) as admin:
            admin.add(4247, ghost)
        assert (4247, ghost, NodeRole.SPARE) in _members(servers, client)
        done = _go_shell(
            servers, f".remove {ghost}", certs.chain("client", "ca"), certs.key("client")
        )
        assert done.returncode == 0, done.stderr
        assert [a for _, a, _ in _members(servers, client)] == servers


def test_with_mutual_tls_and_an_admin_ca_only_that_ca_authorizes(certs: Certs) -> None:
    options = [
        *certs.server_options("node", ca="ca"),
        "--tls-admin-ca",
        certs.crt("adminca"),
        *_GUARDED,
    ]
    with DqlitepyServer(cluster_key=CLUSTER_KEY, options=options) as node:
        servers = [node.address]
        client = certs.client("client")
        wait_until(lambda: _members(servers, client), "the node to lead", timeout=30)
        ghost = _ghost()
        with dqlitepy.Client(servers, ssl=client) as member:
            _refused(
                lambda: member.add(4248, ghost),
                "not authorized: this client certificate is not signed by the admin CA",
            )
        with dqlitepy.Client(servers, ssl=certs.client("admin")) as admin:
            admin.add(4248, ghost)
            admin.remove(4248)
        # The key still works beside a certificate that does not authorize.
        with dqlitepy.Client(servers, ssl=client, cluster_key=CLUSTER_KEY.encode()) as keyed:
            keyed.add(4249, ghost)
            keyed.remove(4249)
        assert [a for _, a, _ in _members(servers, client)] == servers
        # Neither CA: no connection at all, and the client says why (the alert races
        # its first request here too, see above).
        for _ in range(10):
            with (
                pytest.raises(dqlitepy.OperationalError, match=r"UNKNOWN_CA|unknown ca"),
                dqlitepy.Client(servers, ssl=certs.client("rogue"), timeout=5) as rogue,
            ):
                rogue.leader()
        assert "membership requests need the cluster key or a client certificate" in node.log()
