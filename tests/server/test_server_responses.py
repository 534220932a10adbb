"""Responses a client does not take in (``docs/server.md``, Limits; ``server/limits.py``).

Real sockets against real ``dqlitepy server`` processes. The rule under test: for each
1 MiB of a response the node waits at most ``--request-timeout`` in all for its client,
and a stalled response holds about what an idle connection holds. Clients here stop
reading (their result stays in the kernel's buffers), trickle (a little now and then,
which a kernel send timeout restarted on forever), or read slowly but steadily (served
to the end). Every test is bounded in time and closes every socket it opens.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from dqlitepy_server import DqlitepyServer
from raw_client import Raw, open_sockets
from waiting import wait_until

import dqlitepy
from dqlitepy.server.limits import SendAllowance
from dqlitepy.wire import (
    NEED_DATA,
    PROTOCOL_VERSION,
    ClientConnection,
    DbResponse,
    ExecSqlRequest,
    FailureResponse,
    OpenRequest,
    QuerySqlRequest,
    ResultResponse,
    RowsResponse,
    encode_message,
)

_MIB = 1 << 20
_KIB = 1 << 10
#: What the node logs when it cuts a client that kept a response waiting.
_CUT = "kept a response waiting"
#: The documented bound (docs/server.md): a stalled response costs about what an idle
#: connection does; 1,000 of them stay within 256 MiB.
_PER_STALLED_CLIENT = 256 * _KIB


def test_allowance_counts_waits_per_window_of_the_response() -> None:
    allowance = SendAllowance(2.0, window=100)
    allowance.waited(1.5)
    allowance.sent(99)  # a trickle within the window: the waits still add up
    allowance.waited(0.4)
    assert allowance.left == pytest.approx(0.1)
    allowance.sent(1)  # the window is complete: the next gets the whole allowance
    assert allowance.left == 2.0
    allowance.sent(250)  # two more windows and a half
    allowance.waited(2.5)
    assert allowance.left < 0
    allowance.start()  # a new response
    assert allowance.left == 2.0


def _pid(server: DqlitepyServer) -> int:
    assert server.process is not None
    return server.process.pid


def _rss(pid: int) -> int:
    """VmRSS of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * _KIB
    raise AssertionError(f"no VmRSS for pid {pid}")


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _big_table(address: str, database: str, mib: int) -> None:
    """Table ``t`` of ``database``: ``mib`` MiB of 4 KiB random blobs."""
    conn = dqlitepy.connect(database, servers=[address], timeout=30)
    try:
        conn.execute("CREATE TABLE t (b BLOB)")
        conn.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
            "INSERT INTO t SELECT randomblob(4096) FROM c",
            (mib * 256,),
        )
        conn.commit()
    finally:
        conn.close()


def _query(address: str, database: str) -> float:
    """A well-behaved client: a write and a read; how long it took."""
    started = time.monotonic()
    conn = dqlitepy.connect(database, servers=[address], timeout=15)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS other (x)")
        conn.execute("INSERT INTO other VALUES (1)")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM t").fetchone() is not None
    finally:
        conn.close()
    return time.monotonic() - started


def _stall(address: str, database: str, rcvbuf: int) -> socket.socket:
    """Open ``database`` and query all of ``t`` in one go, and never read anything."""
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Before connecting, so that the window is this large from the start: the node
    # streams a few MiB before the client's buffers are full.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect((host, int(port)))
    sock.sendall(
        struct.pack("<Q", PROTOCOL_VERSION)
        + encode_message(OpenRequest(database))
        + encode_message(QuerySqlRequest(0, "SELECT b FROM t"))
    )
    return sock


def test_clients_that_stop_reading_are_cut_and_hold_little_memory() -> None:
    # 200 clients each query an 8 MiB table and never read. Each is cut once the node
    # waited --request-timeout for it, the node's memory grows by less than the documented
    # bound per client (it used to keep each stalled statement's page cache, up to 2 MB),
    # and a well-behaved client is served meanwhile.
    clients, timeout = 200, 6
    with DqlitepyServer(options=["--request-timeout", str(timeout), "-v"]) as server:
        pid = _pid(server)
        _big_table(server.address, "big", 8)
        _query(server.address, "big")
        before, base_threads = _rss(pid), _threads(pid)
        peak, served = before, []
        with open_sockets() as stalled:
            started = time.monotonic()
            for _ in range(clients):
                stalled.append(_stall(server.address, "big", 512 * _KIB))
                peak = max(peak, _rss(pid))
            sent = time.monotonic()
            while server.log().count(_CUT) < clients and time.monotonic() - sent < timeout + 40:
                peak = max(peak, _rss(pid))
                if len(served) < 5:
                    served.append(_query(server.address, "big"))
                time.sleep(0.1)
            cut_after = time.monotonic() - sent
            wait_until(lambda: _threads(pid) <= base_threads, "the connection threads to end", 15)
        growth = peak - before
        print(
            f"{clients} stalled clients: VmRSS {before / _MIB:.0f} MiB before, peak "
            f"+{growth / _MIB:.1f} MiB ({growth / clients / _KIB:.0f} KiB each); all cut "
            f"{cut_after:.1f} s after the last query was sent ({sent - started:.1f} s to send "
            f"them); a well-behaved client took at most {max(served):.2f} s"
        )
        assert server.log().count(_CUT) == clients, server.log()[-3000:]
        # Cut by the rule, not served: each stall begins only once the node has produced
        # enough rows to fill the socket buffers, CPU time that a loaded 2-core CI machine
        # stretches (40 s seen beside the SQLAlchemy suite).  The old code fails the memory
        # bound below, and the trickling client's test times the rule itself.
        assert cut_after < timeout + 90
        assert growth < clients * _PER_STALLED_CLIENT + 32 * _MIB
        assert served and max(served) < 60  # served: under load, not fast (200 queries run)
        assert "Traceback" not in server.log()


def _trickle(sock: socket.socket, stop: threading.Event, pause: float) -> tuple[int, bool]:
    """Read 64 KiB every ``pause`` seconds until the server closes; (bytes read, DONE seen)."""
    conn = ClientConnection()
    conn.handshake()
    conn.send(QuerySqlRequest(0, "SELECT b FROM t"))
    received, done = 0, False
    sock.settimeout(30)
    with contextlib.suppress(ConnectionResetError):
        while not stop.wait(pause):
            data = sock.recv(64 * _KIB)
            if not data:
                break
            received += len(data)
            conn.receive_data(data)
            while (event := conn.next_event()) is not NEED_DATA:
                assert isinstance(event, RowsResponse), event
                done = done or event.done
            if done:
                break
    return received, done


def _stop_when_cut(server: DqlitepyServer, stop: threading.Event, limit: float) -> None:
    """Set ``stop`` once the node logged a cut, or after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while _CUT not in server.log() and time.monotonic() < deadline and not stop.wait(0.05):
        pass
    stop.set()


def test_trickling_client_in_a_write_transaction_is_cut_and_rolled_back() -> None:
    # A client opens a write transaction, queries 8 MiB and takes in 64 KiB every half
    # second: far below 1 MiB per --request-timeout (2 s). A kernel send timeout restarted
    # with each trickle, so it kept the write lock for the minute its result takes; now it
    # is cut after 2 s of waiting, its insert is rolled back, and another writer succeeds.
    timeout = 2
    with DqlitepyServer(options=["--request-timeout", str(timeout), "-v"]) as server:
        _big_table(server.address, "tx", 8)
        raw = Raw(server.address, timeout=30)
        try:
            raw.open("tx")
            for sql in ("BEGIN", "INSERT INTO t VALUES (x'00')"):
                assert isinstance(raw.call(ExecSqlRequest(0, sql)), ResultResponse)
            started = time.monotonic()
            raw.sock.sendall(raw.conn.send(QuerySqlRequest(0, "SELECT b FROM t")))
            # The client may still read what the kernel held for it: the node's log says
            # when it cut the client. At most 40 s, on code that never cuts it.
            stop = threading.Event()
            watch = threading.Thread(target=_stop_when_cut, args=(server, stop, 40), daemon=True)
            watch.start()
            try:
                received, done = _trickle(raw.sock, stop, 0.5)
            finally:
                stop.set()
                watch.join(10)
            took = time.monotonic() - started
        finally:
            raw.close()
        print(f"the trickling client was cut after {took:.1f} s, having read {received} bytes")
        assert not done, "the trickling client was served its whole result"
        assert took < timeout + 15
        assert _CUT in server.log()
        conn = dqlitepy.connect("tx", servers=[server.address], timeout=10)
        try:
            conn.execute("INSERT INTO t VALUES (x'01')")
            conn.commit()
            rows = conn.execute("SELECT count(*) FROM t WHERE length(b) = 1").fetchall()
        finally:
            conn.close()
        assert rows == [(1,)]  # the stalled client's insert was rolled back


def test_slow_but_steady_reader_gets_its_whole_result() -> None:
    # About 1 MiB/s, for a 6 MiB result: longer than the request timeout in all, but
    # each MiB within it. The response rule bounds the waits per MiB, not the response.
    timeout = 3
    with DqlitepyServer(options=["--request-timeout", str(timeout)]) as server:
        _big_table(server.address, "slow", 6)
        raw = Raw(server.address, timeout=30)
        try:
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * _KIB)
            raw.open("slow")
            started = time.monotonic()
            raw.sock.sendall(raw.conn.send(QuerySqlRequest(0, "SELECT b FROM t")))
            received, done = _trickle(raw.sock, threading.Event(), 1 / 16)
            took = time.monotonic() - started
        finally:
            raw.close()
        print(f"the slow reader took {took:.1f} s for {received / _MIB:.1f} MiB")
        assert done, f"cut after {took:.1f} s and {received} bytes"
        assert took > timeout  # slower than the request timeout, as meant
        assert _query(server.address, "slow") < 10


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("responses-tls")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "node.key", "-out", "node.crt",
        ],
        cwd=root, check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return root / "node.crt", root / "node.key"


def test_tls_client_that_stops_reading_is_cut(certificate: tuple[Path, Path]) -> None:
    # Over TLS a write goes through OpenSSL, which a kernel send timeout never ended
    # (the ssl module retries a blocking write that timed out). The client never reads
    # its 8 MiB result: it is cut after the request timeout, and others are served.
    cert, key = certificate
    timeout = 2
    options = ["--tls-cert", str(cert), "--tls-key", str(key), "--request-timeout", str(timeout)]
    context = ssl.create_default_context(cafile=str(cert))
    with DqlitepyServer(options=[*options, "-v"], ssl=context) as server:
        pid = _pid(server)
        base_threads = _threads(pid)  # no client yet
        conn = dqlitepy.connect("tls", servers=[server.address], timeout=30, ssl=context)
        try:
            conn.execute("CREATE TABLE t (b BLOB)")
            conn.execute(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2048) "
                "INSERT INTO t SELECT randomblob(4096) FROM c"
            )
            conn.commit()
        finally:
            conn.close()
        host, _, port = server.address.rpartition(":")
        plain = socket.create_connection((host, int(port)), timeout=30)
        with contextlib.closing(context.wrap_socket(plain, server_hostname=host)) as sock:
            client = ClientConnection()
            sock.sendall(client.handshake() + client.send(OpenRequest("tls")))
            client.receive_data(sock.recv(4096))
            assert isinstance(client.next_event(), DbResponse)
            started = time.monotonic()
            sock.sendall(client.send(QuerySqlRequest(0, "SELECT b FROM t")))
            wait_until(lambda: _threads(pid) <= base_threads, "the TLS client to be cut", 30)
            took = time.monotonic() - started
        print(f"the stalled TLS client was cut after {took:.1f} s")
        assert took < timeout + 15
        assert _CUT in server.log()
        check = dqlitepy.connect("tls", servers=[server.address], timeout=10, ssl=context)
        try:
            assert check.execute("SELECT count(*) FROM t").fetchone() == (2048,)
        finally:
            check.close()
        assert "Traceback" not in server.log()


def test_tls_request_that_never_arrives_gets_a_failure(certificate: tuple[Path, Path]) -> None:
    # A kernel receive timeout does not end a TLS read either: a TLS client sending part
    # of a request was never cut, and neither was an idle one. Now both are, in time.
    cert, key = certificate
    timeout = 2
    options = ["--tls-cert", str(cert), "--tls-key", str(key), "--request-timeout", str(timeout)]
    context = ssl.create_default_context(cafile=str(cert))
    with DqlitepyServer(options=[*options, "--idle-timeout", "2", "-v"], ssl=context) as server:
        host, _, port = server.address.rpartition(":")
        plain = socket.create_connection((host, int(port)), timeout=20)
        with contextlib.closing(context.wrap_socket(plain, server_hostname=host)) as sock:
            client = ClientConnection()
            started = time.monotonic()
            sock.sendall(client.handshake() + encode_message(OpenRequest("tls"))[:10])
            client.send(OpenRequest("tls"))
            with contextlib.suppress(ConnectionResetError, ssl.SSLError):
                while data := sock.recv(4096):
                    client.receive_data(data)
            took = time.monotonic() - started
            failure = client.next_event()
        assert isinstance(failure, FailureResponse), failure
        assert failure.message == f"request not received within {timeout} s (--request-timeout)"
        assert took < timeout + 10
        # An idle TLS connection is closed by the idle timeout.
        plain = socket.create_connection((host, int(port)), timeout=20)
        with contextlib.closing(context.wrap_socket(plain, server_hostname=host)) as sock:
            client = ClientConnection()
            started = time.monotonic()
            sock.sendall(client.handshake() + client.send(OpenRequest("tls")))
            with contextlib.suppress(ConnectionResetError, ssl.SSLError):
                while sock.recv(4096):
                    pass
            took = time.monotonic() - started
        assert 1.5 < took < timeout + 10
        assert "Traceback" not in server.log()
