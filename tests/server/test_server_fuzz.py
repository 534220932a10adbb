"""Hostile clients against a live ``dqlitepy server`` process.

The fuzz test sends random bytes and mutated copies of real request streams (bits flipped,
streams cut short, frames duplicated, dropped or swapped, word counts, types and schemas
changed) over thousands of short connections for a bounded time, seeded (the seed is printed;
set ``DQLITEPY_FUZZ_SEED`` to replay one, ``DQLITEPY_FUZZ_SECONDS`` to run longer). Afterwards
the process must be alive and serving, the rows committed before the run intact, and its
threads, file descriptors and memory back where they were.

The targeted tests each play one kind of hostile client: a header announcing a huge body,
slow-loris clients, silent clients, a burst of connections, 200 concurrent clients, clients
that hang up in the middle of a large result, a client streaming requests while a long
statement runs, connections past descriptor 1024, a process out of descriptors, and CONNECT
requests (refused by closing, as replication is not built yet).
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from dqlitepy_server import DqlitepyServer
from raw_client import Raw
from waiting import busy_threads, wait_until

import dqlitepy
from dqlitepy.wire import (
    DEFAULT_MAX_MESSAGE_SIZE,
    PROTOCOL_VERSION,
    PROTOCOL_VERSION_LEGACY,
    RESPONSES,
    AddRequest,
    AssignRequest,
    ClientConnection,
    ClientRequest,
    ClusterRequest,
    ConnectRequest,
    DbResponse,
    DescribeRequest,
    DumpRequest,
    ExecRequest,
    ExecSqlRequest,
    FailureResponse,
    FinalizeRequest,
    InterruptRequest,
    LeaderRequest,
    OpenRequest,
    PrepareRequest,
    ProtocolError,
    QueryRequest,
    QuerySqlRequest,
    RemoveRequest,
    Request,
    Response,
    ResultResponse,
    RowsResponse,
    ServerResponse,
    TransferRequest,
    ValueTuple,
    ValueType,
    WeightRequest,
    encode_message,
)

_HEADER = struct.Struct("<IBBH")
_VERSION = struct.Struct("<Q")
_MAX_WORDS = DEFAULT_MAX_MESSAGE_SIZE // 8

#: How long the random phase runs, and how long a fuzz connection may stay open after the
#: client stopped sending before it counts as a hang (a lock wait is at most 5 s).
FUZZ_SECONDS = float(os.environ.get("DQLITEPY_FUZZ_SECONDS", "20"))
_HANG_TIMEOUT = 30.0
_WORKERS = 4
#: Growth of the server's resident memory allowed over a test.
_RSS_SLACK_KIB = 32 * 1024


# -- the server process and what /proc says about it ---------------------------------------------


@pytest.fixture(scope="module")
def node() -> Iterator[DqlitepyServer]:
    with DqlitepyServer() as server:
        yield server


def _pid(node: DqlitepyServer) -> int:
    assert node.process is not None
    return node.process.pid


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _settle(measure: Callable[[], int], target: int, timeout: float = 10.0) -> int:
    """Poll ``measure`` until it is at most ``target`` or ``timeout`` passed; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = measure()
        if value <= target or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def _rise(measure: Callable[[], int], target: int, timeout: float = 10.0) -> int:
    """Poll ``measure`` until it is at least ``target`` or ``timeout`` passed; return it."""
    return -_settle(lambda: -measure(), -target, timeout)


class Baseline:
    """Threads, descriptors and memory of the server when a test starts."""

    def __init__(self, node: DqlitepyServer) -> None:
        self.node = node
        self.pid = _pid(node)
        # An idle server runs its main and accept threads; connections of an earlier test
        # may still be winding down.
        _settle(lambda: _threads(self.pid), 2)
        self.threads = _threads(self.pid)
        self.fds = _fds(self.pid)
        self.rss = _rss_kib(self.pid)
        self.log_start = len(node.log())

    def check(self, context: str = "") -> None:
        """The server is alive, and its threads and descriptors are back, its memory sane."""
        node = self.node
        assert node.process is not None and node.process.poll() is None, (
            f"{context}: the server died:\n{node.log()[-3000:]}"
        )
        threads = _settle(lambda: _threads(self.pid), self.threads)
        assert threads <= self.threads, f"{context}: {threads} threads, {self.threads} before"
        fds = _settle(lambda: _fds(self.pid), self.fds)
        assert fds <= self.fds, f"{context}: {fds} open descriptors, {self.fds} before"
        rss = _rss_kib(self.pid)
        assert rss - self.rss < _RSS_SLACK_KIB, f"{context}: VmRSS {self.rss} -> {rss} KiB"
        log = node.log()[self.log_start :]
        assert "Traceback" not in log, f"{context}: the server logged an exception:\n{log}"
        _works(node.address)


@pytest.fixture
def baseline(node: DqlitepyServer) -> Iterator[Baseline]:
    # Not checked at teardown on its own: each test calls check() where it means it.
    yield Baseline(node)


def _works(address: str) -> None:
    """A proper client can create, insert and select on a fresh database."""
    name = f"works_{time.monotonic_ns()}"
    conn = dqlitepy.connect(name, servers=[address], timeout=10)
    try:
        conn.execute("CREATE TABLE t (i INTEGER, s TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "one"), (2, "two")])
        conn.commit()
        assert conn.execute("SELECT i, s FROM t ORDER BY i").fetchall() == [(1, "one"), (2, "two")]
    finally:
        conn.close()


# -- raw connections ---------------------------------------------------------------------------


def _connect(address: str, timeout: float = 10.0) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True if the server closes the connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def _server_end(node: DqlitepyServer, sock: socket.socket) -> tuple[int, int]:
    """(unsent, unread): bytes queued at the server's end of ``sock``'s connection.

    Read from the kernel's table (``/proc/net/tcp``: tx_queue, rx_queue), as the test
    cannot ask the server what it took in.
    """
    server_port = int(node.address.rpartition(":")[2])
    client_port = sock.getsockname()[1]
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            ports = (int(local.rpartition(":")[2], 16), int(remote.rpartition(":")[2], 16))
            if state == "01" and ports == (server_port, client_port):  # 01: established
                unsent, unread = queues.split(":")
                return int(unsent, 16), int(unread, 16)
    raise AssertionError(f"no established connection from port {client_port} to the server")


def _abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a crashed client would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- the corpus: real request sequences ---------------------------------------------------------


def _frame(request: Request, *, legacy: bool = False) -> bytes:
    return encode_message(request, legacy=legacy)


def _typed(*pairs: tuple[int, object]) -> ValueTuple:
    return ValueTuple(tuple(t for t, _ in pairs), tuple(v for _, v in pairs))


def _corpus() -> list[list[bytes]]:
    """Request streams a real client sends; each starts with the protocol version."""
    hello = _VERSION.pack(PROTOCOL_VERSION)
    params = ValueTuple.of([7, -(2**63), 1.5, "héllo", b"\x00\xff", None])
    typed = _typed(
        (ValueType.UNIXTIME, 1_700_000_000),
        (ValueType.ISO8601, "2024-01-02 03:04:05"),
        (ValueType.BOOLEAN, True),
        (ValueType.INTEGER, 2**63 - 1),
    )
    create = (
        "CREATE TABLE IF NOT EXISTS f (i INTEGER, r REAL, t TEXT, b BLOB, n, d DATE, e DATETIME,"
        " ok BOOLEAN)"
    )
    select_many = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000)"
        " SELECT x, 'row ' || x, x * 0.5, zeroblob(x % 7) FROM c"
    )
    return [
        [
            hello,
            _frame(LeaderRequest()),
            _frame(ClientRequest(1)),
            _frame(OpenRequest("fuzz_a")),
            _frame(ExecSqlRequest(0, create)),
            _frame(
                ExecSqlRequest(
                    0, "INSERT INTO f (i, n, r, t, b, d) VALUES (?, ?, ?, ?, ?, ?)", params
                )
            ),
            _frame(QuerySqlRequest(0, "SELECT * FROM f WHERE i = ? LIMIT 5", ValueTuple.of([7]))),
            _frame(PrepareRequest(0, "INSERT INTO f (d, e, ok, i) VALUES (?, ?, ?, ?)")),
            _frame(ExecRequest(0, 0, typed)),
            _frame(PrepareRequest(0, "SELECT i, t, d, ok FROM f ORDER BY rowid DESC LIMIT ?")),
            _frame(QueryRequest(0, 1, ValueTuple.of([3]))),
            _frame(FinalizeRequest(0, 0)),
            _frame(FinalizeRequest(0, 1)),
            _frame(InterruptRequest(0)),
        ],
        [
            hello,
            _frame(OpenRequest("fuzz_b")),
            _frame(QuerySqlRequest(0, select_many)),
            _frame(PrepareRequest(0, "SELECT ?; SELECT 2", with_offset=True)),
            _frame(
                ExecSqlRequest(
                    0,
                    f"{create}; INSERT INTO f (i) VALUES (?); DELETE FROM f WHERE i = ?",
                    ValueTuple.of([1, 1]),
                )
            ),
            _frame(ExecSqlRequest(0, "BEGIN; UPDATE f SET t = 'x' WHERE i = 7; ROLLBACK")),
            _frame(QuerySqlRequest(0, "SELECT count(*), sum(i), group_concat(t) FROM f")),
            _frame(InterruptRequest(0)),
        ],
        [
            hello,
            _frame(ClusterRequest(1)),
            _frame(ClusterRequest(0)),
            _frame(DescribeRequest(0)),
            _frame(WeightRequest(3)),
            _frame(DumpRequest("fuzz_b")),
            _frame(AddRequest(5, "127.0.0.1:1")),
            _frame(AssignRequest(5, 1)),
            _frame(RemoveRequest(5)),
            _frame(TransferRequest(5)),
            _frame(LeaderRequest()),
        ],
        [
            _VERSION.pack(PROTOCOL_VERSION_LEGACY),
            _frame(LeaderRequest(), legacy=True),
            _frame(OpenRequest("fuzz_a"), legacy=True),
            _frame(QuerySqlRequest(0, "SELECT 1, 'a', x'00', NULL, 2.5"), legacy=True),
        ],
    ]


def _set_header(frame: bytes, rng: random.Random) -> bytes:
    if len(frame) < 8:
        return frame
    words, type_, schema, extra = _HEADER.unpack_from(frame)
    field = rng.randrange(4)
    if field == 0:
        words = rng.choice(
            [
                0,
                1,
                max(0, words - 1),
                words + 1,
                rng.getrandbits(32),
                0xFFFFFFFF,
                _MAX_WORDS,
                _MAX_WORDS + 1,
                rng.randrange(64),
            ]
        )
    elif field == 1:
        type_ = rng.choice([rng.randrange(256), rng.randrange(24)])
    elif field == 2:
        schema = rng.randrange(256) if rng.random() < 0.5 else rng.randrange(3)
    else:
        extra = rng.getrandbits(16)
    return _HEADER.pack(words & 0xFFFFFFFF, type_, schema, extra) + frame[8:]


def _flip(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _mutate(streams: list[list[bytes]], rng: random.Random) -> bytes:
    """One mutated request stream (or plain random bytes)."""
    if rng.random() < 0.1:
        return rng.randbytes(rng.randint(1, 4096))
    if rng.random() < 0.05:
        return _VERSION.pack(PROTOCOL_VERSION) + rng.randbytes(rng.randint(1, 4096))
    frames = list(rng.choice(streams))
    for _ in range(rng.randint(1, 5)):
        op = rng.randrange(10)
        i = rng.randrange(len(frames))
        if op == 0:
            frames[i] = _flip(frames[i], rng)
        elif op == 1:
            frames.insert(rng.randrange(len(frames) + 1), frames[i])
        elif op == 2 and len(frames) > 1:
            del frames[i]
        elif op == 3:
            j = rng.randrange(len(frames))
            frames[i], frames[j] = frames[j], frames[i]
        elif op == 4:
            frames[i] = _set_header(frames[i], rng)
        elif op == 5:
            frames[i] = frames[i][: rng.randrange(len(frames[i]) + 1)]
        elif op == 6:
            at = rng.randrange(len(frames[i]) + 1)
            frames[i] = frames[i][:at] + rng.randbytes(rng.randint(1, 64)) + frames[i][at:]
        elif op == 7 and len(frames[i]) > 8:
            frames[i] = frames[i][:8] + rng.randbytes(len(frames[i]) - 8)
        elif op == 8:
            frames.insert(i, rng.choice(rng.choice(streams)[1:]))
        else:
            frames[0] = rng.choice(
                [rng.randbytes(8), _VERSION.pack(PROTOCOL_VERSION_LEGACY), b"", frames[0][:4]]
            )
    data = b"".join(frames)
    if rng.random() < 0.2:
        data = data[: rng.randrange(len(data) + 1)]
    return data


def _check_responses(data: bytes | bytearray) -> list[int]:
    """What the server sent is whole frames of known response types; return the types."""
    types = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 8, f"a partial header at the end: {data[pos:]!r}"
        words, type_, _, _ = _HEADER.unpack_from(data, pos)
        assert type_ in RESPONSES, f"unknown response type {type_}"
        end = pos + 8 + words * 8
        assert words > 0 and end <= len(data), f"a cut frame of type {type_}"
        if type_ == 0:
            FailureResponse.decode_body(data[pos + 8 : end])
        types.append(type_)
        pos = end
    return types


class _Outcome:
    def __init__(self) -> None:
        self.connections = 0
        self.responses: Counter[str] = Counter()
        self.hangs: list[bytes] = []
        self.bad_responses: list[tuple[bytes, str]] = []


def _fuzz_one(address: str, payload: bytes, rng: random.Random, outcome: _Outcome) -> None:
    sock = _connect(address)
    try:
        mode = rng.randrange(4)
        if mode == 0:
            # Send and hang up at once, with a reset half of the time.
            sock.sendall(payload)
            if rng.random() < 0.5:
                _abort(sock)
            return
        if mode == 1:
            pos = 0
            while pos < len(payload):
                step = rng.randint(1, 64)
                sock.sendall(payload[pos : pos + step])
                pos += step
        else:
            sock.sendall(payload)
        # Done sending: the server must answer what it can and close. (It may have closed
        # already, on a broken stream: then there is nothing to shut down.)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        sock.settimeout(_HANG_TIMEOUT)
        received = bytearray()
        try:
            while chunk := sock.recv(1 << 20):
                received += chunk
        except ConnectionResetError:
            return
        except TimeoutError:
            outcome.hangs.append(payload)
            return
        try:
            outcome.responses.update(RESPONSES[t].__name__ for t in _check_responses(received))
        except (AssertionError, ProtocolError) as exc:
            outcome.bad_responses.append((payload, str(exc)))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed on a broken stream while we were still sending
    finally:
        sock.close()
        outcome.connections += 1


_KNOWN = [
    (1, 0, 0.0, "", b""),
    (2, 2**63 - 1, 1.5e300, "héllo wörld 🎉", b"\x00\x01\xff"),
    (3, -(2**63), -2.5e-7, "x" * 5000, bytes(range(256)) * 40),
    *[(i, i * i, i / 3, f"row {i}", i.to_bytes(4, "big")) for i in range(4, 500)],
]


def test_fuzz(node: DqlitepyServer, baseline: Baseline) -> None:
    seed = int(os.environ.get("DQLITEPY_FUZZ_SEED") or random.randrange(2**32))
    print(f"fuzz seed {seed} (DQLITEPY_FUZZ_SEED={seed} replays it)")
    # Committed before the fuzzing, through our driver.
    conn = dqlitepy.connect("known", servers=[node.address])
    with conn:
        conn.execute("CREATE TABLE k (id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB)")
        conn.executemany("INSERT INTO k VALUES (?, ?, ?, ?, ?)", _KNOWN)
    conn.close()
    baseline.rss = _rss_kib(baseline.pid)  # the writes above grow the caches a little

    streams = _corpus()
    outcome = _Outcome()
    deadline = time.monotonic() + FUZZ_SECONDS

    def worker(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        while time.monotonic() < deadline:
            _fuzz_one(node.address, _mutate(streams, rng), rng, outcome)

    with ThreadPoolExecutor(_WORKERS) as pool:
        for future in [pool.submit(worker, i) for i in range(_WORKERS)]:
            future.result()

    context = f"seed {seed}, {outcome.connections} connections"
    assert outcome.connections > 500, context
    assert not outcome.hangs, f"{context}: the server never closed after {outcome.hangs[0]!r}"
    assert not outcome.bad_responses, f"{context}: bad response {outcome.bad_responses[0]!r}"
    # The mutated streams reach the gateway, not only the framing checks.
    for kind in ("RowsResponse", "ResultResponse", "StmtResponse", "FilesResponse"):
        assert outcome.responses[kind] > 100, f"{context}: {outcome.responses}"
    baseline.check(context)
    conn = dqlitepy.connect("known", servers=[node.address])
    try:
        rows = conn.execute("SELECT id, i, r, s, b FROM k ORDER BY id").fetchall()
    finally:
        conn.close()
    assert rows == _KNOWN, context


# -- targeted hostile clients --------------------------------------------------------------------


@pytest.mark.parametrize(
    "words", [0xFFFFFFFF, _MAX_WORDS + 1], ids=["4-billion-words", "just-over-the-limit"]
)
def test_header_announcing_a_huge_body_closes(
    node: DqlitepyServer, baseline: Baseline, words: int
) -> None:
    for _ in range(20):
        sock = _connect(node.address)
        try:
            sock.sendall(_VERSION.pack(PROTOCOL_VERSION) + _HEADER.pack(words, 7, 0, 0))
            assert _closed_by_server(sock)
        finally:
            sock.close()
    baseline.check("huge header")


def test_body_up_to_the_limit_is_not_allocated_ahead(
    node: DqlitepyServer, baseline: Baseline
) -> None:
    # A header announcing 64 MiB is legal; the server buffers what arrives, not what is
    # announced: ten such half-sent messages must not cost 640 MiB.
    socks = []
    sent = _VERSION.size + _HEADER.size + 64 * 1024
    try:
        for _ in range(10):
            sock = _connect(node.address)
            socks.append(sock)
            sock.sendall(_VERSION.pack(PROTOCOL_VERSION) + _HEADER.pack(_MAX_WORDS, 9, 0, 0))
            sock.sendall(bytes(64 * 1024))
        # The control: memory is measured once the server has read from every connection,
        # so it has seen every header (and an allocation of what they announce would show).
        wait_until(
            lambda: all(_server_end(node, sock)[1] < sent for sock in socks),
            "the server to read every header",
        )
        assert _rss_kib(baseline.pid) - baseline.rss < _RSS_SLACK_KIB
        _works(node.address)
    finally:
        for sock in socks:
            sock.close()
    baseline.check("announced bodies")


def test_slow_loris_does_not_block_others(node: DqlitepyServer, baseline: Baseline) -> None:
    message = encode_message(ExecSqlRequest(0, "SELECT 1"))
    stalled = []
    stop = threading.Event()
    try:
        # Clients that send half a message and wait.
        for _ in range(20):
            sock = _connect(node.address)
            stalled.append(sock)
            sock.sendall(_VERSION.pack(PROTOCOL_VERSION) + message[: len(message) // 2])
        # And one that trickles its requests a byte at a time.
        slow = Raw(node.address)
        stalled.append(slow.sock)
        responses: list[Response] = []

        def trickle() -> None:
            for request in (OpenRequest("loris"), QuerySqlRequest(0, "SELECT 'slow but served'")):
                for byte in slow.conn.send(request):
                    if stop.wait(0.01):
                        return
                    slow.sock.sendall(bytes([byte]))
                responses.append(slow.read())

        thread = threading.Thread(target=trickle)
        thread.start()
        started = time.monotonic()
        _works(node.address)
        assert time.monotonic() - started < 5
        thread.join(30)
        assert responses == [
            DbResponse(0),
            RowsResponse(("'slow but served'",), (("slow but served",),), ((ValueType.TEXT,),)),
        ]
    finally:
        stop.set()
        for sock in stalled:
            sock.close()
    baseline.check("slow loris")


def test_silent_clients(node: DqlitepyServer, baseline: Baseline) -> None:
    socks = []
    try:
        for _ in range(50):
            socks.append(_connect(node.address))  # connects, says nothing
        half = _connect(node.address)
        socks.append(half)
        half.sendall(_VERSION.pack(PROTOCOL_VERSION)[:4])  # half a protocol version
        assert _rise(lambda: _threads(baseline.pid), baseline.threads + 51) >= baseline.threads + 51
        _works(node.address)
    finally:
        for sock in socks:
            sock.close()
    baseline.check("silent clients")


def test_burst_of_connections_is_not_dropped(node: DqlitepyServer, baseline: Baseline) -> None:
    # Connections arriving faster than they are accepted wait in the listen backlog; past
    # it their SYNs are dropped and retried a second later.
    socks = []
    try:
        started = time.monotonic()
        for _ in range(600):
            socks.append(_connect(node.address))
        assert time.monotonic() - started < 0.9
        target = baseline.threads + 600
        assert _rise(lambda: _threads(baseline.pid), target) >= target
        _works(node.address)
    finally:
        for sock in socks:
            sock.close()
    baseline.check("burst")


def test_200_concurrent_connections(node: DqlitepyServer, baseline: Baseline) -> None:
    count = 200
    setup = Raw(node.address)
    try:
        setup.call(OpenRequest("concurrent"))
        assert isinstance(
            setup.call(ExecSqlRequest(0, "CREATE TABLE c (who INTEGER)")), ResultResponse
        )
    finally:
        setup.close()
    all_connected = threading.Barrier(count + 1, timeout=60)
    done = threading.Barrier(count + 1, timeout=60)

    def client(who: int) -> tuple[object, ...]:
        raw = Raw(node.address)
        try:
            all_connected.wait()
            assert isinstance(raw.call(LeaderRequest()), ServerResponse)
            assert isinstance(raw.call(OpenRequest("concurrent")), DbResponse)
            result = raw.call(ExecSqlRequest(0, "INSERT INTO c VALUES (?)", ValueTuple.of([who])))
            assert isinstance(result, ResultResponse), result
            (row,) = raw.rows(
                QuerySqlRequest(0, "SELECT count(*) >= 1, ? FROM c", ValueTuple.of([who]))
            )
            done.wait()  # stay connected until every client got its answer
            return row
        finally:
            raw.close()

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(client, who) for who in range(count)]
        try:
            all_connected.wait()
            target = baseline.threads + count
            assert _rise(lambda: _threads(baseline.pid), target) >= target
            done.wait()
        except BaseException:
            all_connected.abort()
            done.abort()
            raise
        rows = [future.result() for future in futures]
    assert sorted(rows) == [(1, who) for who in range(count)]
    check = Raw(node.address)
    try:
        check.call(OpenRequest("concurrent"))
        assert check.rows(QuerySqlRequest(0, "SELECT count(DISTINCT who) FROM c")) == [(count,)]
    finally:
        check.close()
    baseline.check("200 connections")


@pytest.fixture(scope="module")
def big_table(node: DqlitepyServer) -> str:
    """A database with a result of ~30 MiB (thousands of ROWS batches)."""
    conn = dqlitepy.connect("big", servers=[node.address])
    with conn:
        conn.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, s TEXT)")
        conn.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200000)"
            " INSERT INTO big SELECT i, printf('%0150d', i) FROM c"
        )
    conn.close()
    return "big"


@pytest.mark.parametrize("read_first", [0, 64 * 1024, 4 * 1024 * 1024])
def test_disconnect_in_the_middle_of_a_large_result(
    node: DqlitepyServer, baseline: Baseline, big_table: str, read_first: int
) -> None:
    for attempt in range(10):
        raw = Raw(node.address)
        raw.call(OpenRequest(big_table))
        raw.sock.sendall(raw.conn.send(QuerySqlRequest(0, "SELECT id, s FROM big")))
        received = 0
        while received < read_first:
            received += len(raw.sock.recv(65536))
        if attempt % 2:
            _abort(raw.sock)
        else:
            raw.close()
    # Every server thread that was streaming ends, and nothing leaks.
    baseline.check(f"hang-ups after {read_first} bytes")


def test_client_that_stops_reading_holds_only_its_own_thread(
    node: DqlitepyServer, baseline: Baseline, big_table: str
) -> None:
    raw = Raw(node.address)
    try:
        raw.call(OpenRequest(big_table))
        raw.sock.sendall(raw.conn.send(QuerySqlRequest(0, "SELECT id, s FROM big")))
        raw.sock.recv(65536)
        unsent = [-1]

        def blocked() -> bool:  # the server's send buffer is full and stays full
            before, unsent[0] = unsent[0], _server_end(node, raw.sock)[0]
            return unsent[0] > 0 and unsent[0] == before

        wait_until(blocked, "the server to be blocked sending to us", interval=0.1)
        _works(node.address)
    finally:
        raw.close()
    baseline.check("stalled reader")


def test_requests_streamed_during_a_long_statement(
    node: DqlitepyServer, baseline: Baseline
) -> None:
    # The server looks at what a client sends while a statement runs (for INTERRUPT); it must
    # not take in more than a little of it, or a client that streams fills its memory.
    sock = _connect(node.address, timeout=0.5)
    try:
        sock.sendall(_VERSION.pack(PROTOCOL_VERSION) + encode_message(OpenRequest("stream")))
        long_query = (
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000000000)"
            " SELECT count(*) FROM c"
        )
        sock.sendall(encode_message(QuerySqlRequest(0, long_query)))
        # The stream must meet the statement running (when the server reads ahead).
        wait_until(lambda: busy_threads(baseline.pid) >= 1, "the statement to run")
        junk = encode_message(ExecSqlRequest(0, "--" + "x" * (1 << 20)))
        sent = 0
        deadline = time.monotonic() + 3
        with contextlib.suppress(TimeoutError):
            while time.monotonic() < deadline:
                sock.sendall(junk)
                sent += len(junk)
        assert _rss_kib(baseline.pid) - baseline.rss < _RSS_SLACK_KIB, f"{sent} bytes sent"
        # The control: the statement still ran, so the whole stream met it.
        assert busy_threads(baseline.pid) >= 1, "the statement ended before the stream did"
    finally:
        _abort(sock)  # the statement notices the hang-up and stops
    baseline.check("streaming during a statement")


def test_connections_past_descriptor_1024(node: DqlitepyServer, baseline: Baseline) -> None:
    # A connection on a descriptor past FD_SETSIZE, where select() fails, running a statement
    # long enough to be checked for INTERRUPT.
    idle = []
    try:
        # Descriptors are handed out lowest first: the next connection gets one past 1024,
        # and with the driver's two connections the server stays under its 1024 clients.
        for _ in range(1025 - baseline.fds):
            idle.append(_connect(node.address))
        assert _rise(lambda: _fds(baseline.pid), 1025) == 1025
        conn = dqlitepy.connect("many_fds", servers=[node.address], timeout=10)
        try:
            conn.execute("CREATE TABLE t (x)")
            conn.execute(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 50000)"
                " INSERT INTO t SELECT i FROM c"
            )
            conn.commit()
            assert conn.execute("SELECT count(*), sum(x) FROM t").fetchone() == (
                50000,
                50000 * 50001 // 2,
            )
        finally:
            conn.close()
    finally:
        for sock in idle:
            sock.close()
    baseline.check("past descriptor 1024")


def test_out_of_file_descriptors_then_serving_again() -> None:
    # accept() fails with EMFILE while the process has no descriptor left; the listener must
    # go on, not stop accepting for good (leaving a live process nobody can reach): it closes
    # the connection silent the longest to take the next one, as at --max-connections.
    with DqlitepyServer() as server:
        pid = _pid(server)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (64, 64))
        socks = [_connect(server.address) for _ in range(100)]  # within the listen backlog
        try:
            assert _rise(lambda: _fds(pid), 63) >= 63
            wait_until(
                lambda: "Too many open files" in server.log(),
                lambda: f"accept() to fail with EMFILE:\n{server.log()}",
                interval=0.05,
            )
            # Reachable while the silent connections are still open (opening a database
            # would need more descriptors than the process has left).
            raw = Raw(server.address)
            try:
                assert isinstance(raw.call(LeaderRequest()), ServerResponse)
            finally:
                raw.close()
        finally:
            for sock in socks:
                sock.close()
        _works(server.address)
        assert _settle(lambda: _threads(pid), 2) == 2
        assert server.log().count("cannot accept connections") == 1  # not once per retry
        assert "Traceback" not in server.log()


@pytest.mark.parametrize(
    "before", [b"", encode_message(LeaderRequest())], ids=["first", "after-a-request"]
)
@pytest.mark.parametrize("after", [b"", b"raft bytes follow" * 8], ids=["alone", "with-data"])
def test_connect_request_is_refused_by_closing(
    node: DqlitepyServer, baseline: Baseline, before: bytes, after: bytes
) -> None:
    sock = _connect(node.address)
    try:
        connect = encode_message(ConnectRequest(0x1234, "127.0.0.1:1"))
        sock.sendall(_VERSION.pack(PROTOCOL_VERSION) + before + connect + after)
        sock.settimeout(5)
        received = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        # Only the request before CONNECT is answered, then the server hangs up.
        if before:
            response = ClientConnection()
            response.handshake()
            response.send(LeaderRequest())
            response.receive_data(bytes(received))
            assert isinstance(response.next_event(), ServerResponse)
        else:
            assert received == b""
    finally:
        sock.close()
    baseline.check("CONNECT")
