"""TLS on a node's one address: clients, Raft links, joining, mutual TLS, the Go shell.

Certificates are made once per module with the ``openssl`` command (``tests/tls_certs.py``
lists them).  Who may change the cluster with a client certificate is tested in
``test_tls_admin.py``.

Every wait is bounded: a client that does not speak the node's TLS must fail at
once with a message that says so, never retry until its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dqlite_cluster import DQLITE_SHELL, require_go_shell
from dqlitepy_server import CLUSTER_KEY, DqlitepyCluster, DqlitepyServer
from raft_acceptor import ConnectAcceptor
from raft_counter import Counter
from tls_certs import Certs, make_certs
from waiting import wait_until

import dqlitepy
import dqlitepy.aio
from dqlitepy.client.tls import context_from_url
from dqlitepy.replication.transport import (
    SecureTransport,
    secure_transport_class,
)
from dqlitepy.replication.transport import adapter as adapter_module
from dqlitepy.server import NodeServer
from dqlitepy.server.tls import NodeTLS, is_loopback

WAIT = 15.0
# Counts to ten billion: minutes of work unless something stops it.
_LONG_QUERY = (
    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 10000000000) "
    "SELECT count(*) FROM c"
)


# ----------------------------------------------------------------------------- certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _fails_fast(call: Callable[[], object], match: str, within: float = 5.0) -> str:
    started = time.monotonic()
    with pytest.raises(dqlitepy.OperationalError, match=match) as info:
        call()
    assert time.monotonic() - started < within
    return str(info.value)


# ----------------------------------------------------------------------------- raft transport


class _RaftCluster:
    """PySyncObj nodes in this process, each behind a TLS ConnectAcceptor, all dialling TLS."""

    def __init__(self, tls: list[NodeTLS], **conf: Any) -> None:
        self.tls = tls
        self.conf = conf
        self.acceptors = [ConnectAcceptor("127.0.0.1:0", ssl_context=t.server) for t in tls]
        self.addresses = [a.address for a in self.acceptors]
        self.nodes: list[Counter | None] = [None] * len(tls)
        self.transports: list[SecureTransport | None] = [None] * len(tls)
        try:
            for i in range(len(tls)):
                self.start(i)
        except BaseException:
            self.close()
            raise

    def start(self, i: int) -> Counter:
        def created(transport: SecureTransport) -> None:
            self.transports[i] = transport
            self.acceptors[i].attach(transport)

        cls = secure_transport_class(
            CLUSTER_KEY.encode(), node_id=i + 1, on_created=created, ssl_context=self.tls[i].client
        )
        others = [a for a in self.addresses if a != self.addresses[i]]
        node = self.nodes[i] = Counter(self.addresses[i], others, cls, **self.conf)
        return node

    def stop(self, i: int) -> None:
        node = self.nodes[i]
        assert node is not None
        self.acceptors[i].attach(None)
        node.destroy_synchronous()
        self.nodes[i] = self.transports[i] = None

    def live(self) -> list[Counter]:
        return [n for n in self.nodes if n is not None]

    def leader(self) -> Counter:
        wait_until(lambda: sum(n._isLeader() for n in self.live()) == 1, "a leader", WAIT)
        return next(n for n in self.live() if n._isLeader())

    def close(self) -> None:
        for i, node in enumerate(self.nodes):
            if node is not None:
                self.stop(i)
        for acceptor in self.acceptors:
            acceptor.close()


def test_raft_links_run_over_tls_and_carry_a_4_mib_entry(certs: Certs) -> None:
    # The non-blocking TLS paths of the transport: dialled links (client handshake on
    # poller events), adopted TLS sockets, chunked writes retried after SSLWantWrite,
    # reads that drain OpenSSL's buffer.
    tls = NodeTLS.from_files(certs.crt("node"), certs.key("node"), certs.crt("ca"))
    cluster = _RaftCluster([tls] * 3)
    try:
        cluster.leader()
        nodes = cluster.live()
        for i in range(60):
            assert nodes[i % 3].incr(sync=True, timeout=WAIT) == i + 1
        blob = os.urandom(4 * 1024 * 1024)
        digest = cluster.leader().put_blob(blob, sync=True, timeout=WAIT)
        assert digest == hashlib.sha256(blob).hexdigest()
        wait_until(
            lambda: all(n.value == 60 and len(n.blobs) == 1 for n in nodes), "all applied", WAIT
        )
        transports = [t for t in cluster.transports if t is not None]
        links = [link for t in transports for link in t._open.values()]
        assert links and all(isinstance(link.sock, ssl.SSLSocket) for link in links)
        assert all(t.rejected_connections == 0 for t in transports)
    finally:
        cluster.close()


def test_a_snapshot_crosses_tls_links_to_a_restarted_node(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Snapshot chunks are "reliable" frames: past the high-water mark the sender waits for
    # the TLS socket to drain instead of dropping them.
    chunks: list[Any] = []
    decode = adapter_module.decode_raft_message

    def spy(body: bytes) -> dict[str, Any]:
        message = decode(body)
        if message.get("serialized") is not None:
            chunks.append(message["serialized"])
        return message

    monkeypatch.setattr(adapter_module, "decode_raft_message", spy)
    tls = NodeTLS.from_files(certs.crt("node"), certs.key("node"), certs.crt("ca"))
    cluster = _RaftCluster([tls] * 3, logCompactionMinEntries=20)
    try:
        for _ in range(60):
            cluster.leader().incr(sync=True, timeout=WAIT)
        victim = next(i for i, n in enumerate(cluster.nodes) if n and not n._isLeader())
        cluster.stop(victim)
        for _ in range(30):
            cluster.leader().incr(sync=True, timeout=WAIT)
        restarted = cluster.start(victim)
        wait_until(lambda: restarted.value == 90, "the restarted node installed the snapshot", WAIT)
        assert chunks and chunks[0][1] is True and chunks[-1][2] is True
    finally:
        cluster.close()


def test_raft_peer_with_a_certificate_from_another_ca_is_refused(certs: Certs) -> None:
    tls = NodeTLS.from_files(certs.crt("node"), certs.key("node"), certs.crt("ca"))
    rogue = NodeTLS.from_files(certs.crt("rogue"), certs.key("rogue"), certs.crt("otherca"))
    # Same cluster key: only TLS stands between them.
    cluster = _RaftCluster([tls, rogue])
    try:
        # The control, started with them: two nodes whose certificates match, watched by
        # the same probes, have open links and a leader before the window below begins.
        control = _RaftCluster([tls, tls])
        try:
            transports = [t for t in cluster.transports if t is not None]
            wait_until(
                lambda: any(t.rejected_connections for t in transports),
                "a refused handshake",
                WAIT,
            )
            control.leader()
            linked = [t for t in control.transports if t is not None]
            wait_until(lambda: all(t._open for t in linked), "the control's links", WAIT)
        finally:
            control.close()
        time.sleep(1.0)
        assert all(not t._open for t in transports)
        assert not any(n._isLeader() for n in cluster.live())  # two voters, never connected
    finally:
        cluster.close()


# ----------------------------------------------------------------------------- one node


@pytest.fixture(scope="module")
def tls_node(certs: Certs) -> Iterator[DqlitepyServer]:
    """A single TLS node (no client certificate required)."""
    with DqlitepyServer(options=certs.server_options("node")) as server:
        yield server


def test_driver_with_ssl_context_and_with_url_parameters(
    certs: Certs, tls_node: DqlitepyServer
) -> None:
    with dqlitepy.connect("tls_one", servers=[tls_node.address], ssl=certs.client()) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        conn.execute("INSERT INTO t VALUES (?)", (b"\0" * 300_000,))
        conn.commit()
        assert conn.execute("SELECT length(x) FROM t").fetchall() == [(300_000,)]
    url = f"dqlite://{tls_node.address}/tls_one?tls_ca={certs.crt('ca')}"
    with dqlitepy.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    # The host name is checked by default: the certificate names localhost.
    port = tls_node.address.rpartition(":")[2]
    with dqlitepy.connect(f"dqlite://localhost:{port}/tls_one?tls_ca={certs.crt('ca')}") as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    with dqlitepy.Client([tls_node.address], ssl=certs.client()) as client:
        leader = client.leader()
        assert leader is not None and leader.address == tls_node.address
        assert [n.address for n in client.cluster()] == [tls_node.address]


def test_a_plain_text_client_is_told_the_node_requires_tls(tls_node: DqlitepyServer) -> None:
    message = _fails_fast(
        lambda: dqlitepy.connect("tls_one", servers=[tls_node.address]), "requires TLS"
    )
    assert tls_node.address in message
    with dqlitepy.Client([tls_node.address]) as client:
        started = time.monotonic()
        with pytest.raises(dqlitepy.DatabaseError, match="requires TLS"):
            client.leader()
        assert time.monotonic() - started < 5


def test_a_server_certificate_from_another_ca_fails_fast(
    certs: Certs, tls_node: DqlitepyServer
) -> None:
    message = _fails_fast(
        lambda: dqlitepy.connect(
            "tls_one", servers=[tls_node.address], ssl=certs.client(ca="otherca")
        ),
        "CERTIFICATE_VERIFY_FAILED",
    )
    assert "TLS handshake failed" in message
    # tls=1 alone trusts the system's CAs, which did not sign this node.
    _fails_fast(
        lambda: dqlitepy.connect(f"dqlite://{tls_node.address}/tls_one?tls=1"),
        "CERTIFICATE_VERIFY_FAILED",
    )


def test_a_tls_client_against_a_plain_node_fails_within_timeout(certs: Certs) -> None:
    with DqlitepyServer() as plain:
        _fails_fast(
            lambda: dqlitepy.connect("x", servers=[plain.address], ssl=certs.client(), timeout=1),
            "during the TLS handshake: is TLS on there",
            within=8,
        )


def test_interrupt_over_tls(certs: Certs, tls_node: DqlitepyServer) -> None:
    # On TLS the interrupting thread does not touch the socket: the owner sends it.
    conn = dqlitepy.connect(
        "tls_interrupt", servers=[tls_node.address], ssl=certs.client(), check_same_thread=False
    )
    try:
        timer = threading.Timer(0.3, conn.interrupt)
        started = time.monotonic()
        timer.start()
        with pytest.raises(dqlitepy.OperationalError, match="interrupted"):
            conn.execute(_LONG_QUERY).fetchall()
        timer.join()
        assert time.monotonic() - started < 3
        assert conn.execute("SELECT 42").fetchone() == (42,)
    finally:
        conn.close()


def test_asyncio_driver_over_tls(certs: Certs, tls_node: DqlitepyServer) -> None:
    # dqlitepy.aio runs TLS through asyncio's ssl support: the same contexts and failures.
    async def main() -> None:
        servers = [tls_node.address]
        async with dqlitepy.aio.connect("tls_aio", servers=servers, ssl=certs.client()) as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            await conn.execute("INSERT INTO t VALUES (?)", (b"\0" * 300_000,))
            await conn.commit()
            assert await conn.execute_fetchall("SELECT length(x) FROM t") == [(300_000,)]
            # A timed-out query is interrupted and its response drained over TLS too.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.execute(_LONG_QUERY), 0.5)
            assert await conn.execute_fetchall("SELECT 42") == [(42,)]
        async with dqlitepy.aio.Client(servers, ssl=certs.client()) as client:
            leader = await client.leader()
            assert leader is not None and leader.address == tls_node.address
        started = time.monotonic()
        with pytest.raises(dqlitepy.OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
            await dqlitepy.aio.connect("tls_aio", servers=servers, ssl=certs.client(ca="otherca"))
        assert time.monotonic() - started < 5

    asyncio.run(asyncio.wait_for(main(), 60))


def test_sqlalchemy_url_takes_the_tls_parameters(certs: Certs, tls_node: DqlitepyServer) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    url = f"sqlite+dqlitepy://{tls_node.address}/tls_sa?tls_ca={certs.crt('ca')}"
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 7").scalar() == 7
    finally:
        engine.dispose()
    with pytest.raises(sqlalchemy.exc.ArgumentError, match="tls=maybe"):
        sqlalchemy.create_engine(f"sqlite+dqlitepy://{tls_node.address}/x?tls=maybe").connect()


def test_dqlitepy_shell_with_cert_key_and_ca(certs: Certs, tls_node: DqlitepyServer) -> None:
    def shell(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "dqlitepy", "shell", "-s", tls_node.address, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    tls = ["--cert", certs.crt("client"), "--key", certs.key("client"), "--ca", certs.crt("ca")]
    done = shell(*tls, "tls_shell", "CREATE TABLE IF NOT EXISTS t (x)")
    assert done.returncode == 0, done.stderr
    done = shell(*tls, "tls_shell", "SELECT count(*) FROM t")
    assert (done.returncode, done.stdout) == (0, "0\n"), done.stderr
    done = shell(*tls, "tls_shell", ".leader")
    assert (done.returncode, done.stdout) == (0, f"{tls_node.address}\n"), done.stderr
    done = shell("--cert", certs.crt("client"), "tls_shell", "SELECT 1")
    assert done.returncode == 2 and "both TLS certificate and key" in done.stderr


# ----------------------------------------------------------------------------- warnings, options


def test_a_plain_node_on_a_network_address_warns(
    tmp_path: Path, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    assert is_loopback("127.0.0.1:1") and is_loopback("[::1]:1") and is_loopback("@x")
    assert is_loopback("localhost:1") and not is_loopback("0.0.0.0:1")
    caplog.set_level(logging.WARNING, logger="dqlitepy.server")
    tls = NodeTLS.from_files(certs.crt("node"), certs.key("node"))
    for name, address, options in [
        ("loopback", "127.0.0.1:0", {}),
        ("network-tls", "0.0.0.0:0", {"tls": tls}),
        ("network", "0.0.0.0:0", {}),
    ]:
        caplog.clear()
        server = NodeServer(address, tmp_path / name, **options)
        try:
            server.start()
        finally:
            server.close()
        warned = [r for r in caplog.records if "plain text" in r.getMessage()]
        assert bool(warned) == (name == "network"), name


def test_url_tls_parameters() -> None:
    assert context_from_url({}) is None
    assert context_from_url({"tls": "0"}) is None
    context = context_from_url({"tls": "1"})
    assert context is not None and context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    context = context_from_url({"tls": "yes", "tls_check_hostname": "off"})
    assert context is not None and not context.check_hostname
    with pytest.raises(ValueError, match="contradicts"):
        context_from_url({"tls": "0", "tls_ca": "/x"})
    with pytest.raises(ValueError, match="not a boolean"):
        context_from_url({"tls": "maybe"})
    with pytest.raises(ValueError, match="cannot load"):
        context_from_url({"tls_ca": "/nonexistent/ca.pem"})
    with pytest.raises(dqlitepy.ProgrammingError, match="invalid dqlite URL"):
        dqlitepy.connect("dqlite://127.0.0.1:1/db?tls_ca=/nonexistent/ca.pem")


def test_server_refuses_half_a_tls_configuration(tmp_path: Path, certs: Certs) -> None:
    def server(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "dqlitepy", "server", "-d", str(tmp_path), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    done = server("--tls-cert", certs.crt("node"))
    assert done.returncode == 2 and "--tls-key" in done.stderr
    done = server("--tls-cert", certs.crt("node"), "--tls-key", certs.crt("node"))
    assert done.returncode == 2 and "cannot load the TLS files" in done.stderr
    done = server("--tls-admin-ca", certs.crt("adminca"))
    assert done.returncode == 2 and "--tls-key" in done.stderr
    tls = ["--tls-cert", certs.crt("node"), "--tls-key", certs.key("node")]
    done = server(*tls, "--tls-admin-ca", certs.key("adminca"))
    assert done.returncode == 2 and "cannot load the TLS files" in done.stderr
    assert certs.key("adminca") in done.stderr


# ----------------------------------------------------------------------------- a cluster


@pytest.mark.slow
def test_mutual_tls_cluster_forms_replicates_fails_over_and_refuses_strangers(
    certs: Certs,
) -> None:
    options = certs.server_options("node", ca="ca")
    client = certs.client("client")
    with DqlitepyCluster.formed(3, options=options, ssl=client) as cluster:
        servers = cluster.addresses
        conn = dqlitepy.connect("tls_cluster", servers=servers, ssl=client, timeout=10)
        try:
            conn.execute("CREATE TABLE t (i INTEGER, pad BLOB)")
            for i in range(20):
                conn.execute("INSERT INTO t VALUES (?, ?)", (i, os.urandom(100_000)))
                conn.commit()
            # A transaction big enough to need several TLS records and chunks per link.
            conn.execute("INSERT INTO t VALUES (?, ?)", (20, os.urandom(3 * 1024 * 1024)))
            conn.commit()

            leader = cluster.leader()
            assert cluster.node(leader).stop(signal.SIGKILL) == -signal.SIGKILL
            written = 0
            deadline = time.monotonic() + 30
            while written < 10:
                assert time.monotonic() < deadline, "writes did not resume after failover"
                try:
                    conn.execute("INSERT INTO t VALUES (?, NULL)", (100 + written,))
                    conn.commit()
                    written += 1
                except dqlitepy.OperationalError:
                    time.sleep(0.2)  # the leader's death, or its outcome unknown: look again
            assert cluster.leader() != leader
            count = conn.execute("SELECT count(*) FROM t WHERE i >= 100").fetchone()[0]
            assert 10 <= count <= 11  # one insert may have run before its reply was lost
            assert conn.execute("SELECT count(*) FROM t WHERE i < 100").fetchone() == (21,)
        finally:
            conn.close()

        live = [a for a in servers if cluster.node(a).process is not None]
        # A client certificate from another CA, and no client certificate at all.
        _fails_fast(
            lambda: dqlitepy.connect("tls_cluster", servers=live, ssl=certs.client("rogue")),
            "UNKNOWN_CA|unknown ca",
        )
        _fails_fast(
            lambda: dqlitepy.connect("tls_cluster", servers=live, ssl=certs.client()),
            "CERTIFICATE_REQUIRED|certificate required|alert",
        )
        _fails_fast(lambda: dqlitepy.connect("tls_cluster", servers=live), "requires TLS")

        # A node with the cluster key but a certificate from another CA cannot join,
        # nor can one without TLS; both say why and exit at once.
        for name, extra, reason in [
            ("rogue", certs.server_options("rogue", ca="otherca"), "CERTIFICATE_VERIFY_FAILED"),
            ("plain", [], "requires TLS"),
        ]:
            stranger = DqlitepyServer(
                cluster.root / name, cluster_key=CLUSTER_KEY, join=live, options=extra
            )
            try:
                with contextlib.suppress(RuntimeError):  # gone before it was seen listening
                    stranger.start()
                assert stranger.process is not None
                stranger.process.wait(timeout=20)
                assert stranger.process.returncode == 1, stranger.log()
                assert reason in stranger.log(), stranger.log()
            finally:
                stranger.close()
        with dqlitepy.Client(live, ssl=client) as admin:
            assert len(admin.cluster()) == 3


# ----------------------------------------------------------------------------- Go shell


def _go_shell(
    address: str, database: str, command: str, *tls: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    argv = [DQLITE_SHELL, "-s", address, *tls, database, command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.dqlite
@pytest.mark.parametrize("mutual", [False, True], ids=["server-tls", "mutual-tls"])
def test_go_shell_with_the_cluster_certificate(certs: Certs, mutual: bool) -> None:
    # go-dqlite's shell: SimpleDialTLSConfig(cert, pool of that same cert), server name
    # = the certificate's first DNS name.  With the cluster's shared self-signed
    # certificate as the node's certificate (and as its CA for mutual TLS) it works.
    require_go_shell()
    options = certs.server_options("cluster", ca="cluster" if mutual else None)
    tls = ["-c", certs.crt("cluster"), "-k", certs.key("cluster")]
    database = f"go_{uuid.uuid4().hex[:8]}"
    with DqlitepyServer(options=options) as node:
        done = _go_shell(
            node.address,
            database,
            "CREATE TABLE t (x); INSERT INTO t VALUES (7); SELECT x FROM t",
            *tls,
        )
        assert (done.returncode, done.stdout) == (0, "7\n"), done.stderr
        done = _go_shell(node.address, database, ".cluster", *tls)
        assert done.returncode == 0 and node.address in done.stdout, done.stderr
        # The dqlitepy shell with the same flags sees the same data.
        argv = [sys.executable, "-m", "dqlitepy", "shell", "-s", node.address, *tls, database]
        ours = subprocess.run(
            [*argv, "SELECT x FROM t"], capture_output=True, text=True, timeout=60, check=False
        )
        assert (ours.returncode, ours.stdout) == (0, "7\n"), ours.stderr


@pytest.mark.dqlite
def test_go_shell_cannot_use_a_separate_client_certificate(certs: Certs) -> None:
    # The 1.11 shell has no CA flag: it trusts only the certificate it presents, so a
    # client certificate other than the node's never verifies the node.  The shell
    # then looks for a leader for ever; bounded here.
    require_go_shell()
    with DqlitepyServer(options=certs.server_options("node", ca="ca")) as node:
        client_tls = ["-c", certs.crt("client"), "-k", certs.key("client")]
        with pytest.raises(subprocess.TimeoutExpired):
            _go_shell(node.address, "go", "SELECT 1", *client_tls, timeout=3)
        # The node's own certificate (same file on both sides) works.
        node_tls = ["-c", certs.crt("node"), "-k", certs.key("node")]
        # (Within the same 3 s: the control for the timeout above.)
        done = _go_shell(node.address, "go", "SELECT 1", *node_tls, timeout=3)
        assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
