"""INTERRUPT stops a long query on a dqlitepy node, and the connection goes on."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from dqlitepy_server import DqlitepyServer
from raw_client import Raw
from waiting import busy_threads, wait_until

import dqlitepy
from dqlitepy.wire import (
    ClientConnection,
    EmptyResponse,
    ExecSqlRequest,
    FailureResponse,
    InterruptRequest,
    LeaderRequest,
    OpenRequest,
    QuerySqlRequest,
    RowsResponse,
    ServerResponse,
    encode_message,
)

# Counts to ten billion: minutes of work unless something stops it.
_LONG_QUERY = (
    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 10000000000) "
    "SELECT count(*) FROM c"
)


@pytest.fixture(scope="module")
def node() -> Iterator[DqlitepyServer]:
    with DqlitepyServer() as server:
        yield server


def _wait_running(node: DqlitepyServer) -> None:
    """Wait until a statement runs on ``node`` (one of its threads burns CPU)."""
    assert node.process is not None
    pid = node.process.pid
    wait_until(lambda: busy_threads(pid) >= 1, "the query to run")


def test_interrupt_stops_a_running_query(node: DqlitepyServer) -> None:
    raw = Raw(node.address)
    try:
        raw.open("interrupt_running")
        raw.sock.sendall(raw.conn.send(QuerySqlRequest(0, _LONG_QUERY)))
        _wait_running(node)
        start = time.monotonic()
        raw.sock.sendall(raw.conn.send(InterruptRequest(0)))
        # The client discards the query's FAILURE and gets the INTERRUPT's EMPTY.
        assert isinstance(raw.read(), EmptyResponse)
        assert time.monotonic() - start < 2
        assert isinstance(raw.call(LeaderRequest()), ServerResponse)
    finally:
        raw.close()


def _read_frames(
    sock: socket.socket, until_type: int, timeout: float = 10
) -> list[tuple[int, bytes]]:
    """Read whole frames until one of ``until_type`` arrives."""
    frames: list[tuple[int, bytes]] = []
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = sock.recv(1 << 16)
        if not data:
            break
        buf += data
        while len(buf) >= 8:
            words, type_, _, _ = struct.unpack_from("<IBBH", buf)
            if len(buf) < 8 + words * 8:
                break
            frames.append((type_, buf[8 : 8 + words * 8]))
            buf = buf[8 + words * 8 :]
            if type_ == until_type:
                return frames
    raise AssertionError(f"no frame of type {until_type} in {[t for t, _ in frames]}")


def _raw_session(address: str, database: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(ClientConnection().handshake())
    sock.sendall(encode_message(OpenRequest(database)))
    assert _read_frames(sock, 4)[-1][0] == 4  # DB
    return sock


def test_interrupt_stops_a_streaming_result(node: DqlitepyServer) -> None:
    total = 200_000
    sock = _raw_session(node.address, "interrupt_stream")
    try:
        sock.sendall(encode_message(ExecSqlRequest(0, "CREATE TABLE big (i INTEGER, pad TEXT)")))
        sock.sendall(
            encode_message(
                ExecSqlRequest(
                    0,
                    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c "
                    f"WHERE i < {total}) INSERT INTO big SELECT i, printf('%040d', i) FROM c",
                )
            )
        )
        _read_frames(sock, 6)
        _read_frames(sock, 6)
        sock.sendall(encode_message(QuerySqlRequest(0, "SELECT i, pad FROM big")))
        first = _read_frames(sock, 7)
        sock.sendall(encode_message(InterruptRequest(0)))
        frames = first + _read_frames(sock, 8)
        rows = sum(len(RowsResponse.decode_body(body).rows) for type_, body in frames if type_ == 7)
        # The stream ended (a FAILURE "interrupted") long before the table's end.
        assert rows < total // 2
        failures = [FailureResponse.decode_body(b) for t, b in frames if t == 0]
        assert failures == [FailureResponse(9, "interrupted")]
        assert frames[-1][0] == 8  # EMPTY answers the INTERRUPT
    finally:
        sock.close()


def test_interrupt_raw_failure_code(node: DqlitepyServer) -> None:
    # Seen without the client state machine: FAILURE 9 "interrupted", then EMPTY.
    sock = _raw_session(node.address, "interrupt_raw")
    try:
        sock.sendall(encode_message(QuerySqlRequest(0, _LONG_QUERY)))
        _wait_running(node)
        sock.sendall(encode_message(InterruptRequest(0)))
        frames = _read_frames(sock, 8, timeout=5)
        assert [t for t, _ in frames] == [0, 8]
        assert FailureResponse.decode_body(frames[0][1]) == FailureResponse(9, "interrupted")
    finally:
        sock.close()


def test_connection_interrupt_from_another_thread(node: DqlitepyServer) -> None:
    conn = dqlitepy.connect("interrupt_driver", servers=[node.address], check_same_thread=False)
    try:

        def interrupt_once_running() -> None:
            try:
                _wait_running(node)
            finally:
                conn.interrupt()  # even if the wait failed: the query would run for minutes

        timer = threading.Thread(target=interrupt_once_running)
        start = time.monotonic()
        timer.start()
        with pytest.raises(dqlitepy.OperationalError, match="interrupted") as info:
            conn.execute(_LONG_QUERY).fetchall()
        timer.join()
        assert info.value.sqlite_errorcode == 9
        assert time.monotonic() - start < 3
        # The connection is still in step.
        assert conn.execute("SELECT 42").fetchone() == (42,)
        # Interrupting when nothing runs does nothing.
        conn.interrupt()
        assert conn.execute("SELECT 43").fetchone() == (43,)
    finally:
        conn.close()
