"""Client connection limits of a ``dqlitepy server`` process (``docs/server.md``, Limits).

Real sockets against real server processes: thousands of idle connections, large request
bodies that never finish, slow-loris senders, idle and busy connections at the connection
limit. Every test is bounded in time and closes every socket it opens. The first tests drive
the pure bookkeeping of :mod:`dqlitepy.server.limits` directly.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from dqlitepy_server import CLUSTER_KEY, DqlitepyServer
from raw_client import Raw, open_sockets
from waiting import busy_threads, wait_until

import dqlitepy
from dqlitepy.server.limits import ConnectionTable, Limits, MemoryBudget, Phase
from dqlitepy.wire import (
    PROTOCOL_VERSION,
    ClientConnection,
    DbResponse,
    ExecSqlRequest,
    FailureResponse,
    LeaderRequest,
    OpenRequest,
    QuerySqlRequest,
    RequestType,
    ResultResponse,
    ServerResponse,
    encode_message,
)

_HEADER = struct.Struct("<IBBH")
_VERSION = struct.Struct("<Q")
_MIB = 1 << 20

# -- the bookkeeping, without sockets ------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_table_evicts_the_connection_without_progress_the_longest() -> None:
    clock = _Clock()
    table: ConnectionTable[str] = ConnectionTable(3, clock)
    slots = {}
    for name in ("busy", "pooled", "in-tx"):
        slots[name], evicted = table.admit(name)
        assert evicted is None
        clock.now += 1
    assert table.enter(slots["busy"], Phase.HANDLING)
    assert table.enter(slots["pooled"], Phase.IDLE)  # idle since t=3
    assert table.enter(slots["in-tx"], Phase.IDLE, in_transaction=True)
    clock.now += 1
    new, evicted = table.admit("new")  # arrives at t=4
    assert new is not None and evicted is slots["pooled"]
    assert not table.enter(slots["pooled"], Phase.RECEIVING)  # it must stop
    clock.now += 1
    # The newcomer has held its slot without progress since t=4: it goes before a
    # transaction, and a connection serving a request is never chosen.
    newer, evicted = table.admit("newer")
    assert newer is not None and evicted is new
    # A transaction goes last, when no other connection can.
    assert table.enter(newer, Phase.HANDLING)
    newest, evicted = table.admit("newest")
    assert newest is not None and evicted is slots["in-tx"]
    assert table.enter(newest, Phase.HANDLING)
    assert table.admit("one more") == (None, None)
    assert len(table) == 3


def test_table_refuses_only_when_every_connection_is_handling() -> None:
    table: ConnectionTable[int] = ConnectionTable(2)
    first, _ = table.admit(1)
    second, _ = table.admit(2)
    assert first is not None and second is not None
    table.enter(first, Phase.HANDLING)
    table.enter(second, Phase.HANDLING)
    assert table.admit(3) == (None, None)
    table.enter(second, Phase.IDLE)
    third, evicted = table.admit(3)
    assert third is not None and evicted is second
    table.remove(second)  # the evicted connection's thread cleans up: harmless
    table.remove(first)
    assert len(table) == 1


def test_budget_waits_a_bounded_time_and_wakes_on_release() -> None:
    budget = MemoryBudget(100)
    assert budget.acquire(60, 0)
    started = time.monotonic()
    assert not budget.acquire(50, 0.2)
    assert 0.15 < time.monotonic() - started < 2
    threading.Timer(0.1, budget.release, (60,)).start()
    assert budget.acquire(50, 5)
    assert budget.in_use == 50
    with pytest.raises(ValueError, match="exceed the request memory"):
        budget.acquire(101, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_connections": 0}, "max_connections"),
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"request_timeout": -1}, "request_timeout"),
        ({"request_memory": _MIB, "max_message_size": 2 * _MIB}, "request_memory"),
    ],
)
def test_limits_are_checked(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Limits(**kwargs)  # type: ignore[arg-type]


# -- helpers for the live tests ------------------------------------------------------------------


def _pid(server: DqlitepyServer) -> int:
    assert server.process is not None
    return server.process.pid


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _connect(address: str, timeout: float = 10.0) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _query(address: str, database: str = "limits") -> float:
    """Connect with the driver, write and read; return how long it took."""
    started = time.monotonic()
    conn = dqlitepy.connect(database, servers=[address], timeout=10)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        assert conn.execute("SELECT count(*) >= 1 FROM t").fetchone() == (1,)
    finally:
        conn.close()
    return time.monotonic() - started


_CLIENT = """
import sys, time, dqlitepy
started = time.monotonic()
conn = dqlitepy.connect("limits", servers=[sys.argv[1]], timeout=10)
conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
conn.execute("INSERT INTO t VALUES (1)")
conn.commit()
assert conn.execute("SELECT count(*) >= 1 FROM t").fetchone() == (1,)
conn.close()
print(time.monotonic() - started)
"""


def _query_elsewhere(address: str) -> float:
    """:func:`_query` from a process of its own (this one may hold thousands of sockets)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-c", _CLIENT, address],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return float(result.stdout)


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and when it closed (monotonic)."""
    sock.settimeout(timeout)
    received = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received), time.monotonic()


def _failure_in(data: bytes) -> FailureResponse:
    """The FAILURE a server sent outside the request/response order."""
    conn = ClientConnection()
    conn.handshake()
    conn.send(LeaderRequest())  # any request: a FAILURE may answer it
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, FailureResponse), event
    return event


#: A statement that runs until its client hangs up (or for hours).
_LONG_QUERY = (
    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000000000)"
    " SELECT count(*) FROM c"
)


def _hung_up(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` by now (reads what it sent; never waits)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(timeout)


def _wait_running(server: DqlitepyServer, statements: int) -> None:
    """Wait until ``statements`` statements run on ``server`` (as many threads burn CPU)."""
    pid = _pid(server)
    wait_until(lambda: busy_threads(pid) >= statements, f"{statements} statements to run")


def _abort(sock: socket.socket) -> None:
    """Close with a reset, as a killed client would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- idle connections ----------------------------------------------------------------------------


def test_2000_idle_sockets_do_not_lock_a_client_out() -> None:
    # 1,024 idle connections used to lock every client out for good. Now a newcomer takes
    # the slot of the connection silent the longest: 2,000 idle sockets, half of them
    # silent since they connected, half "pooled" (a request answered, then idle), and a
    # normal client is still served at once. Default limits.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    with DqlitepyServer() as server, open_sockets() as idle:
        pid = _pid(server)
        started = time.monotonic()
        pooled = encode_message(LeaderRequest())
        for i in range(2000):
            sock = _connect(server.address)
            idle.append(sock)
            if i % 2:
                sock.sendall(_VERSION.pack(PROTOCOL_VERSION) + pooled)
        opened = time.monotonic() - started
        # The driver's connection check uses select(), which fails on descriptors past
        # 1024 as this process's are now: the normal client runs in a process of its own.
        # The first one waits behind the idle sockets still in the listen backlog.
        first = _query_elsewhere(server.address)
        taken = time.monotonic() - started
        # Then the node holds 1,024 idle connections, and a client arriving now...
        took = [_query_elsewhere(server.address) for _ in range(3)]
        # The server never ran more than its 1,024 connection threads (+ main and accept).
        assert _threads(pid) <= 1024 + 2 + 4
        print(
            f"2000 idle sockets connected in {opened:.2f} s; a query right after took "
            f"{first:.2f} s (all accepted after {taken:.2f} s); queries then took "
            + ", ".join(f"{t:.3f}" for t in took)
            + " s"
        )
        assert first < 10
        assert max(took) < 1.0, took
        log = server.log()
        assert log.count("the limit (--max-connections)") == 1, log[-2000:]
        assert "Traceback" not in log
    assert time.monotonic() - started < 60


def _open_files(pid: int) -> tuple[int, int]:
    """The soft and hard RLIMIT_NOFILE of process ``pid``, from /proc/PID/limits."""
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no open-file limit for pid {pid}")


@pytest.mark.parametrize(
    ("hard", "key"),
    [(2048, None), (256, CLUSTER_KEY)],
    ids=["raised-standalone", "unraisable-replicated"],
)
def test_idle_sockets_past_the_open_file_limit_leave_the_node_its_files(
    hard: int, key: str | None
) -> None:
    # Started with the usual service soft limit (here 256): the node raises it to the hard
    # limit, and caps its connections so that clients never take the descriptors it needs
    # for its databases, WAL and Raft journal. With soft = hard = 1,024, 2,000 idle sockets
    # used to lock every client out and fail a leader's WAL writes with EMFILE.
    server = DqlitepyServer(cluster_key=key, prefix=["prlimit", f"--nofile=256:{hard}", "--"])
    with server, open_sockets() as idle:
        pid = _pid(server)
        assert _open_files(pid) == (hard, hard)  # raised to the hard limit
        expected = max(1, (hard - max(128, hard // 8)) // 4)
        wait_until(
            lambda: f"serving at most {expected}" in server.log(),
            "the capped connection limit to be logged",
            timeout=5,
            interval=0.05,
        )
        _query_elsewhere(server.address)
        for _ in range(hard + 200):
            idle.append(_connect(server.address))
        # The node's own files still open: a well-behaved client is served, and writes.
        # Served, not fast: a locked-out client fails (above), while the first one may wait
        # for the node to accept the backlog of idle sockets ahead of it (5.8 s once in CI).
        took = [_query_elsewhere(server.address) for _ in range(3)]
        assert max(took) < 30, took
        log = server.log()
        assert "Too many open files" not in log and "Traceback" not in log, log[-2000:]
        assert server.process is not None and server.process.poll() is None


def test_pooled_idle_connections_are_kept_by_default() -> None:
    # go-dqlite keeps pooled connections idle indefinitely and sends no heartbeat: with
    # no --idle-timeout, an idle connection outlives the request timeout.
    with DqlitepyServer(options=["--request-timeout", "1"]) as server, open_sockets() as opened:
        raw = Raw(server.address)
        opened.append(raw.sock)
        # The control: a connection silent since it connected is cut by the request timeout
        # within the same window, and the same probe sees that.
        silent = _connect(server.address)
        opened.append(silent)
        assert isinstance(raw.call(LeaderRequest()), ServerResponse)
        time.sleep(2.5)
        assert _hung_up(silent), "the control: the request timeout did not cut a silent socket"
        assert not _hung_up(raw.sock)
        assert isinstance(raw.call(LeaderRequest()), ServerResponse)


def test_idle_timeout_closes_idle_connections() -> None:
    with DqlitepyServer(options=["--idle-timeout", "1"]) as server:
        raw = Raw(server.address)
        try:
            started = time.monotonic()
            assert isinstance(raw.call(LeaderRequest()), ServerResponse)
            data, closed = _read_until_closed(raw.sock, timeout=10)
            assert data == b""  # closed quietly: no request was waiting for an answer
            assert 0.9 < closed - started < 5
        finally:
            raw.close()
        assert _query(server.address) < 2


def test_in_transaction_connection_outlives_idle_ones_at_the_limit() -> None:
    with DqlitepyServer(options=["--max-connections", "3"]) as server, open_sockets() as opened:
        tx = Raw(server.address)
        opened.append(tx.sock)
        assert isinstance(tx.call(OpenRequest("tx")), DbResponse)
        assert isinstance(tx.call(ExecSqlRequest(0, "CREATE TABLE t (x)")), ResultResponse)
        assert isinstance(tx.call(ExecSqlRequest(0, "BEGIN")), ResultResponse)
        assert isinstance(tx.call(ExecSqlRequest(0, "INSERT INTO t VALUES (1)")), ResultResponse)
        # Five newcomers, each taking the slot of the oldest connection not in a transaction
        # (each is answered before the next comes: the server took it in).
        newcomers = []
        for _ in range(5):
            newcomer = Raw(server.address)
            opened.append(newcomer.sock)
            newcomers.append(newcomer.sock)
            assert isinstance(newcomer.call(LeaderRequest()), ServerResponse)
        # The control: the three oldest newcomers lost their slots meanwhile.
        for sock in newcomers[:3]:
            _read_until_closed(sock, timeout=5)
        assert isinstance(tx.call(ExecSqlRequest(0, "COMMIT")), ResultResponse)
        assert tx.rows(QuerySqlRequest(0, "SELECT x FROM t")) == [(1,)]


def test_connection_refused_with_a_failure_while_all_are_serving() -> None:
    with DqlitepyServer(options=["--max-connections", "2"]) as server, open_sockets() as opened:
        for _ in range(2):
            raw = Raw(server.address)
            opened.append(raw.sock)
            assert isinstance(raw.call(OpenRequest("busy")), DbResponse)
            raw.sock.sendall(raw.conn.send(QuerySqlRequest(0, _LONG_QUERY)))
        _wait_running(server, 2)
        refused = _connect(server.address)
        opened.append(refused)
        data, _ = _read_until_closed(refused, timeout=5)
        failure = _failure_in(data)
        assert failure.message == (
            "too many connections: all 2 are serving requests; try again later"
        )
        for sock in opened[:2]:  # the statements notice the hang-ups and stop
            _abort(sock)

        def served() -> bool:  # (raw: the driver leaks its socket when LEADER gets a FAILURE)
            raw = Raw(server.address)
            try:
                return isinstance(raw.call(LeaderRequest()), ServerResponse)
            except OSError:
                return False  # still refused and closed: the statements have not stopped yet
            finally:
                raw.close()

        wait_until(served, "a newcomer to be served again", interval=0.1)
        assert _query(server.address) < 2


# -- slow senders --------------------------------------------------------------------------------


def test_slow_loris_is_cut_after_the_request_timeout() -> None:
    with DqlitepyServer(options=["--request-timeout", "2"]) as server, open_sockets() as opened:
        message = encode_message(ExecSqlRequest(0, "SELECT 1"))
        loris = _connect(server.address)
        opened.append(loris)
        started = time.monotonic()
        loris.sendall(_VERSION.pack(PROTOCOL_VERSION))
        stop = threading.Event()

        def trickle() -> None:  # one byte a second, for longer than the deadline
            for byte in message[:10]:
                if stop.wait(1.0):
                    return
                with contextlib.suppress(OSError):
                    loris.sendall(bytes([byte]))

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            # A connection that never says anything is cut by the same deadline.
            silent = _connect(server.address)
            opened.append(silent)
            assert _query(server.address) < 2  # others are served meanwhile
            data, closed = _read_until_closed(loris, timeout=10)
            assert 1.9 < closed - started < 4.5, closed - started
            assert (
                _failure_in(data).message == "request not received within 2 s (--request-timeout)"
            )
            data, closed = _read_until_closed(silent, timeout=10)
            assert closed - started < 5
        finally:
            stop.set()
            sender.join(10)


def test_oversized_message_gets_a_failure() -> None:
    with DqlitepyServer(options=["--max-message-size", "1M", "--request-memory", "4M"]) as server:
        sock = _connect(server.address)
        try:
            sock.sendall(_VERSION.pack(PROTOCOL_VERSION) + _HEADER.pack(2 * _MIB // 8, 8, 0, 0))
            data, _ = _read_until_closed(sock, timeout=5)
            assert _failure_in(data).message == (
                "message of 2097152 bytes exceeds the limit of 1048576 bytes (--max-message-size)"
            )
        finally:
            sock.close()


# -- request memory ------------------------------------------------------------------------------


def test_32_unfinished_64_mib_bodies_stay_within_the_request_memory() -> None:
    # 32 clients each announce a 64 MiB body and send 60 MiB of it. Only what fits in the
    # node's request memory (default 256 MiB: 4 of them) is read; the others wait without
    # being read until their request timeout, and get a FAILURE. Memory stays bounded, and
    # others are served all along.
    timeout = 8
    body_size = 64 * _MIB
    sent_size = 60 * _MIB
    payload = memoryview(bytes(sent_size))
    header = _VERSION.pack(PROTOCOL_VERSION) + _HEADER.pack(
        body_size // 8, int(RequestType.EXEC_SQL), 0, 0
    )
    with DqlitepyServer(options=["--request-timeout", str(timeout), "-v"]) as server:
        pid = _pid(server)
        _query(server.address)
        before = _status(pid, "VmRSS")
        sent = [0] * 32
        with open_sockets() as opened:
            for _ in range(32):
                sock = _connect(server.address, timeout=timeout + 20)
                opened.append(sock)
                sock.sendall(header)

            def upload(index: int) -> None:
                sock = opened[index]
                with contextlib.suppress(OSError):
                    for pos in range(0, sent_size, _MIB):
                        sock.sendall(payload[pos : pos + _MIB])
                        sent[index] += _MIB

            senders = [threading.Thread(target=upload, args=(i,)) for i in range(32)]
            started = time.monotonic()
            for thread in senders:
                thread.start()
            peak = before
            served = []
            while time.monotonic() - started < timeout - 1:
                peak = max(peak, _status(pid, "VmRSS"))
                served.append(_query(server.address))
                time.sleep(0.2)
            for thread in senders:
                thread.join(timeout + 20)
            # The bodies held whole are cut by their request timeout, and their memory freed.
            for sock in opened:
                with contextlib.suppress(OSError):
                    _read_until_closed(sock, timeout=timeout + 5)
            # (Each connection's thread frees its buffer as it ends, just after the close.)
            settle = time.monotonic() + 5
            while (after := _status(pid, "VmRSS")) - before > 64 * 1024:
                if time.monotonic() > settle:
                    break
                time.sleep(0.05)
        growth_mib = (peak - before) / 1024
        fully_sent = sum(1 for n in sent if n == sent_size)
        print(
            f"VmRSS {before // 1024} MiB before, peak {peak // 1024} MiB (+{growth_mib:.0f} MiB), "
            f"{after // 1024} MiB after; {fully_sent} of 32 sent their 60 MiB; "
            f"queries meanwhile took at most {max(served):.3f} s ({len(served)} of them)"
        )
        assert growth_mib <= 256 + 48, growth_mib
        assert (after - before) / 1024 < 64  # given back, not kept by the allocator
        assert max(served) < 2.0
        log = server.log()
        # Each upload was cut: refused memory while waiting for it, or, holding it (or
        # getting it in the last moments of its wait), cut by its request timeout.
        refused = log.count("--request-memory) stayed in use")
        cut = log.count("request not received within")
        print(f"{refused} refused request memory, {cut} cut by the request timeout")
        assert refused + cut == 32, log[-3000:]
        assert refused >= 1 and cut >= 4
        assert _query(server.address) < 2  # and the memory is free again
        assert time.monotonic() - started < 60


def test_request_waiting_for_memory_gets_a_failure() -> None:
    # A body that must wait for request memory and never gets it: a clear FAILURE once
    # its request timeout ran out (nothing of it was read, so the client reads it cleanly).
    options = ["--max-message-size", "1M", "--request-memory", "1M", "--request-timeout", "2"]
    with DqlitepyServer(options=options) as server, open_sockets() as opened:
        # A request of 600 KiB keeps its memory while it is served: a statement that runs
        # until its client hangs up.
        hog = Raw(server.address)
        opened.append(hog.sock)
        assert isinstance(hog.call(OpenRequest("hog")), DbResponse)
        padding = "-- " + "x" * (600 * 1024) + "\n"
        hog.sock.sendall(hog.conn.send(ExecSqlRequest(0, padding + _LONG_QUERY)))
        _wait_running(server, 1)
        waiter = _connect(server.address)
        opened.append(waiter)
        started = time.monotonic()
        waiter.sendall(_VERSION.pack(PROTOCOL_VERSION) + _HEADER.pack(512 * 1024 // 8, 8, 0, 0))
        data, closed = _read_until_closed(waiter, timeout=10)
        assert 1.5 < closed - started < 4
        assert _failure_in(data).message == (
            "request of 524288 bytes refused: the node's request memory (1048576 bytes, "
            "--request-memory) stayed in use by other requests; try again later"
        )
        assert _query(server.address) < 2  # small requests never wait
        _abort(hog.sock)  # the statement notices and stops
