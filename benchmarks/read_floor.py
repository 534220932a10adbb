"""The least CPU a Python server can spend on one point read, next to dqlite and dqlitepy.

A point read over the dqlite protocol costs C dqlite 40-140 µs of server CPU. This script
asks how close any CPython server could come, by measuring a *floor server*: the smallest
Python program that serves the same request correctly enough for a real client. It has
one thread per connection, a blocking ``recv``, ``struct`` to parse QUERY_SQL's header and
text parameters, one APSW cursor ``execute``, a ROWS response packed with ``struct`` and
one ``send`` — no limits, no metrics, no leadership check, no statement cache beyond
SQLite's own, no error handling. Everything dqlitepy does on top of that (request bounds,
timeouts, stats, the read lease, transactions, interrupts) can only add to the floor.

The three servers are driven in turn (A B C, for ``--rounds``) by the same raw client
(``tests/raw_client.py``: the dqlitepy wire codec on a blocking socket, in this process)
with the benchmark suite's ``read`` workload: ``SELECT value FROM model WHERE key = ?``
in a 1,000-row table of 1 KiB text values, which the workload's own setup fills on every
server (on the floor's file through APSW). It prints each server's ops/s and CPU µs per
read, from ``/proc``; the floor's figure is what no Python server beats, so the ratio of
dqlite's CPU to it bounds what the suite's ``read`` ratio can reach on a CPU-bound
machine.

Run: ``python benchmarks/read_floor.py --reads 5000 --rounds 3``. Every server process is
stopped by its PID, every directory removed.

The same floor server is a system of the suite, ``python -m benchmarks --nodes 1
--workloads read,scan --systems dqlite,python-floor,dqlitepy``, driven there by the suite's
own client processes (the blocking driver, as for the other systems). It then answers
what the driver sends besides the point read (LEADER, CLIENT, OPEN, EXEC_SQL, PREPARE...)
through dqlitepy's codec, and the ``scan`` workload's query by replaying the ROWS messages
it encoded at the first scan (4 KiB batches, dropped at any write to the database): for
the scan it is the bound of any server, whose only work is the send.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_HEADER = struct.Struct("<IBBH")
_U64 = struct.Struct("<Q")
_OPEN, _QUERY_SQL = 3, 9
_DB, _ROWS = 4, 7
_TEXT = 3
_DONE = 0xFFFFFFFFFFFFFFFF
_DB_BODY = struct.pack("<II", 0, 0)
_FLOOR_PROCESS_TIMEOUT = 10.0


def _padded_text(data: bytes) -> bytes:
    data += b"\0"
    return data + b"\0" * (-len(data) % 8)


def _read_text(body: bytes, at: int) -> tuple[str, int]:
    end = body.index(b"\0", at)
    return body[at:end].decode(), at + ((end - at) // 8 + 1) * 8


def _query(body: bytes) -> tuple[str, list[str]]:
    """QUERY_SQL's SQL and text parameters (the floor serves text parameters only)."""
    sql, at = _read_text(body, 8)
    params: list[str] = []
    if at < len(body):
        count = body[at]
        at += (1 + count + 7) // 8 * 8
        for _ in range(count):
            value, at = _read_text(body, at)
            params.append(value)
    return sql, params


def _rows(names: list[str], rows: list[tuple[object, ...]]) -> bytes:
    """One ROWS message of text columns, ending with DONE."""
    parts = [_U64.pack(len(names))]
    parts.extend(_padded_text(n.encode()) for n in names)
    header = bytes([_TEXT | _TEXT << 4]) * (len(names) // 2) + bytes([_TEXT]) * (len(names) % 2)
    header += b"\0" * (-len(header) % 8)
    for row in rows:
        parts.append(header)
        parts.extend(_padded_text(str(v).encode()) for v in row)
    parts.append(_U64.pack(_DONE))
    body = b"".join(parts)
    return _HEADER.pack(len(body) // 8, _ROWS, 0, 0) + body


def _general(
    db: Any, statements: dict[int, str], kind: int, schema: int, body: bytes, address: str
) -> bytes:
    """Any other request the driver sends, through dqlitepy's codec: only at connect time
    and in the workloads' setup, so it does not weigh on the floor of a read."""
    from dqlitepy.wire import REQUESTS, encode_message
    from dqlitepy.wire import responses as r

    request: Any = REQUESTS[kind].decode_body(body, schema)
    name = type(request).__name__
    try:
        response = _answer(db, statements, request, name, address)
    except Exception as exc:  # apsw's errors, a statement id the client never prepared
        response = r.FailureResponse(getattr(exc, "extendedresult", 1), str(exc))
    return response if isinstance(response, bytes) else encode_message(response)


# Encoded results by (database file, SQL, parameters), dropped at any write to the file:
# the scan's table is written once, so every scan after the first replays its bytes.
_results: dict[tuple[str, str, tuple[object, ...]], bytes] = {}
_results_lock = threading.Lock()


def _replayed(db: Any, sql: str, params: tuple[object, ...]) -> bytes:
    """A query's ROWS messages (4 KiB batches, as dqlite's), encoded once per content."""
    from dqlitepy.wire.rows import RowsBatchEncoder

    key = (db.filename, sql, params)
    with _results_lock:
        cached = _results.get(key)
    if cached is not None:
        return cached
    cursor = db.cursor().execute(sql, params)
    try:
        names = [d[0] for d in cursor.getdescription()]
    except Exception:  # a statement without result columns
        names = []
    encoder = RowsBatchEncoder(names)
    rows = iter(cursor)
    batches = []
    while True:
        done = encoder.fill(rows)
        batches.append(encoder.finish(done=done))
        if done:
            break
    encoded = b"".join(batches)
    with _results_lock:
        _results[key] = encoded
    return encoded


def _answer(db: Any, statements: dict[int, str], request: Any, name: str, address: str) -> Any:
    from dqlitepy.wire import responses as r

    response: Any
    if name == "LeaderRequest":
        response = r.ServerResponse(1, address)
    elif name == "ClientRequest":
        response = r.WelcomeResponse()
    elif name == "PrepareRequest":
        stmt_id = len(statements)
        statements[stmt_id] = request.sql
        # The workloads' statements use "?" placeholders only.
        response = r.StmtResponse(0, stmt_id, request.sql.count("?"))
    elif name == "FinalizeRequest":
        statements.pop(request.stmt_id, None)
        response = r.EmptyResponse()
    elif name in ("ExecSqlRequest", "ExecRequest"):
        sql = request.sql if name == "ExecSqlRequest" else statements[request.stmt_id]
        db.cursor().execute(sql, request.params.values)
        with _results_lock:
            for key in [k for k in _results if k[0] == db.filename]:
                del _results[key]
        response = r.ResultResponse(db.last_insert_rowid(), db.changes())
    elif name in ("QuerySqlRequest", "QueryRequest"):
        sql = request.sql if name == "QuerySqlRequest" else statements[request.stmt_id]
        return _replayed(db, sql, request.params.values)
    else:
        response = r.FailureResponse(1, f"the floor server does not serve {name}")
    return response


def _text_only(body: bytes) -> bool:
    """Whether QUERY_SQL has parameters and all are text: the floor's own case."""
    end = body.find(b"\0", 8)
    at = 8 + ((end - 8) // 8 + 1) * 8
    if at >= len(body):
        return False
    count = body[at]
    return all(t == _TEXT for t in body[at + 1 : at + 1 + count])


def _serve_connection(sock: socket.socket, root: str, address: str) -> None:
    import apsw

    db: Any = None
    statements: dict[int, str] = {}
    buffer = b""

    def need(size: int) -> bool:
        nonlocal buffer
        while len(buffer) < size:
            data = sock.recv(65536)
            if not data:
                return False
            buffer += data
        return True

    with sock:
        if not need(8):
            return
        buffer = buffer[8:]  # the protocol version
        while need(8):
            words, kind, schema, _extra = _HEADER.unpack_from(buffer)
            if not need(8 + words * 8):
                return
            body, buffer = buffer[8 : 8 + words * 8], buffer[8 + words * 8 :]
            if kind == _OPEN:
                db = apsw.Connection(str(Path(root) / _read_text(body, 0)[0]))
                db.setbusytimeout(5000)
                sock.sendall(_HEADER.pack(1, _DB, 0, 0) + _DB_BODY)
                continue
            if kind != _QUERY_SQL or schema != 0 or not _text_only(body):
                sock.sendall(_general(db, statements, kind, schema, body, address))
                continue
            sql, params = _query(body)
            cursor = db.cursor().execute(sql, params)
            names = [d[0] for d in cursor.getdescription()]
            rows = cursor.fetchall()
            sock.sendall(_rows(names, rows))


def serve(port: int, root: str) -> None:
    """The floor server: accept on 127.0.0.1:``port``, one thread per connection; the
    database a client opens is the file of that name in the directory ``root``."""
    listener = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(
            target=_serve_connection, args=(sock, root, f"127.0.0.1:{port}"), daemon=True
        ).start()


@contextlib.contextmanager
def floor_server(*, filled: bool = True) -> Iterator[tuple[str, int]]:
    """The floor server in a process of its own; ``filled``: on the ``read`` workload's
    table already (else the client's own setup fills it, as the suite's does)."""
    import apsw

    from benchmarks.systems import free_port
    from benchmarks.workloads import WORKLOADS

    with tempfile.TemporaryDirectory(prefix="dqlitepy-floor-") as root:
        if filled:
            db = apsw.Connection(str(Path(root) / "read"))
            db.execute("PRAGMA journal_mode=WAL")
            # The suite's own setup (its statements run on APSW as on the driver).
            WORKLOADS["read"].setup(db)  # type: ignore[arg-type]
            db.close()
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), root],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("the floor server did not start")
            yield f"127.0.0.1:{port}", process.pid
        finally:
            process.kill()
            process.wait(timeout=_FLOOR_PROCESS_TIMEOUT)


def measure(address: str, pids: list[int], reads: int) -> tuple[float, float]:
    """``reads`` point reads by one raw client: (reads per second, server CPU µs per read)."""
    from raw_client import Raw

    from benchmarks.systems import cpu_seconds
    from benchmarks.workloads import _KV_READ, READ_ROWS, _read_key
    from dqlitepy.wire import QuerySqlRequest, RowsResponse, ValueTuple

    rng = random.Random(1)
    requests = [
        QuerySqlRequest(0, _KV_READ, ValueTuple.of([_read_key(rng.randrange(READ_ROWS))]))
        for _ in range(reads)
    ]
    raw = Raw(address)
    try:
        raw.open("read")
        raw.call(requests[0])  # warm SQLite's cache
        cpu, start = cpu_seconds(pids), time.perf_counter()
        for request in requests:
            response = raw.call(request)
            if not isinstance(response, RowsResponse) or len(response.rows) != 1:
                raise RuntimeError(f"{address} answered {response!r}")
        elapsed = time.perf_counter() - start
        return reads / elapsed, (cpu_seconds(pids) - cpu) / reads * 1e6
    finally:
        raw.close()


def _load(address: str) -> None:
    import dqlitepy
    from benchmarks.workloads import WORKLOADS

    conn = dqlitepy.connect("read", servers=[address], isolation_level=None)
    try:
        WORKLOADS["read"].setup(conn)
    finally:
        conn.close()


def run(reads: int, rounds: int) -> None:
    from benchmarks.systems import SYSTEMS

    results: dict[str, list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for system in ("dqlite", "dqlitepy"):
            with SYSTEMS[system](1) as cluster:
                _load(cluster.addresses[0])
                results.setdefault(system, []).append(
                    measure(cluster.addresses[0], cluster.pids, reads)
                )
        with floor_server() as (address, pid):
            results.setdefault("python floor", []).append(measure(address, [pid], reads))
    print(f"point reads, 1 node, 1 raw client, {reads} reads x {rounds} rounds (medians)")
    print(f"{'server':<14} {'reads/s':>9} {'CPU us/read':>12}")
    for system, figures in results.items():
        rate = sorted(f[0] for f in figures)[len(figures) // 2]
        cpu = sorted(f[1] for f in figures)[len(figures) // 2]
        print(f"{system:<14} {rate:>9,.0f} {cpu:>12,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return
    sys.path.insert(0, str(REPO / "tests"))
    run(args.reads, args.rounds)


if __name__ == "__main__":
    main()
