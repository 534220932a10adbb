"""The server's fast read path, end to end on a real ``dqlitepy server``: the requests it
decodes straight from their bytes and the ROWS it builds with compiled encoders give the
same bytes whether the requests come one by one, pipelined in one send, or a byte at a
time, and the ROWS are those of the reference encoding (``wire_types`` then ``add_row``).
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dqlitepy_server import DqlitepyServer

from dqlitepy.wire import (
    NEED_DATA,
    ClientConnection,
    ExecSqlRequest,
    OpenRequest,
    QuerySqlRequest,
    Request,
    ValueTuple,
    encode_message,
)
from dqlitepy.wire.rows import RowsBatchEncoder, wire_types

_SQL = "SELECT k, v, n, f FROM t WHERE k >= ? AND k < ? ORDER BY k"


@pytest.fixture(scope="module")
def server() -> Iterator[DqlitepyServer]:
    with DqlitepyServer() as node:
        yield node


def _connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(ClientConnection().handshake())
    return sock


def _read_responses(sock: socket.socket, requests: list[Request]) -> list[bytes]:
    """The raw bytes of every response message to ``requests`` (sent already), in order."""
    conn = ClientConnection()
    conn.handshake()
    buffer = b""
    out: list[bytes] = []
    for request in requests:
        conn.send(request)
        while True:
            while (event := conn.next_event()) is NEED_DATA:
                data = sock.recv(65536)
                assert data, "the server closed the connection"
                conn.receive_data(data)
                buffer += data
            size = 8 + 8 * int.from_bytes(buffer[:4], "little")
            out.append(buffer[:size])
            buffer = buffer[size:]
            if getattr(event, "done", True) is not False:
                break  # not a PART batch: this request is answered
    return out


_names = itertools.count()


def _requests() -> list[Request]:
    """The same requests, on a database of their own each time (same answers)."""
    return [
        OpenRequest(f"fastpath{next(_names)}"),
        ExecSqlRequest(0, "CREATE TABLE t (k INTEGER, v TEXT, n, f BOOLEAN)"),
        ExecSqlRequest(
            0,
            "INSERT INTO t VALUES (?, ?, ?, ?), (?, ?, ?, ?), (?, ?, ?, ?)",
            ValueTuple.of([1, "one", None, 1, 2, "x" * 40, 2.5, 0, 3, "é\x01", b"\x00\xff", 7]),
        ),
        ExecSqlRequest(
            0,
            "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < 399)"
            " INSERT INTO t SELECT i + 10, printf('row %d', i), i * 1.5, NULL FROM s",
        ),
        QuerySqlRequest(0, _SQL, ValueTuple.of([0, 1000])),
        QuerySqlRequest(0, _SQL, ValueTuple.of([2, 3])),
        QuerySqlRequest(0, _SQL, ValueTuple.of([5000, 6000])),
    ]


def _exchange(address: str, chunks: Any) -> list[bytes]:
    sock = _connect(address)
    try:
        requests = _requests()
        for chunk in chunks(b"".join(encode_message(r) for r in requests)):
            sock.sendall(chunk)
        return _read_responses(sock, requests)
    finally:
        sock.close()


def _one_by_one(address: str) -> list[bytes]:
    sock = _connect(address)
    try:
        out: list[bytes] = []
        for request in _requests():
            sock.sendall(encode_message(request))
            out += _read_responses(sock, [request])
        return out
    finally:
        sock.close()


def _byte_at_a_time(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]
        if i % 64 == 0:
            time.sleep(0.001)  # let the server see many partial receives


def test_pipelined_and_trickled_requests_get_the_same_bytes(server: DqlitepyServer) -> None:
    expected = _one_by_one(server.address)
    assert _exchange(server.address, lambda data: [data]) == expected
    assert _exchange(server.address, _byte_at_a_time) == expected


def test_rows_are_the_reference_encoding(server: DqlitepyServer) -> None:
    responses = _one_by_one(server.address)
    rows: list[tuple[Any, ...]] = [
        (1, "one", None, 1),
        (2, "x" * 40, 2.5, 0),
        (3, "é\x01", b"\x00\xff", 7),
        *((i + 10, f"row {i}", i * 1.5, None) for i in range(400)),
    ]
    decltypes = ["INTEGER", "TEXT", None, "BOOLEAN"]
    encoder = RowsBatchEncoder(["k", "v", "n", "f"])
    reference: list[bytes] = []
    for row in rows:
        if encoder.full and encoder.rows:
            reference.append(encoder.finish(done=False))
        encoder.add_row(*wire_types(row, decltypes))
    reference.append(encoder.finish(done=True))
    queried = responses[4 : 4 + len(reference)]
    assert len(reference) > 3  # several batches, each cut where dqlite cuts it
    assert queried == reference
    # One row; none at all (the DONE batch alone, with the column names).
    single = RowsBatchEncoder(["k", "v", "n", "f"])
    single.add_row(*wire_types(rows[1], decltypes))
    assert responses[4 + len(reference)] == single.finish(done=True)
    assert responses[5 + len(reference)] == RowsBatchEncoder(["k", "v", "n", "f"]).finish(done=True)
