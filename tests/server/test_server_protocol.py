"""The dqlitepy server at the wire level: dqlite's semantics, failure codes and safety rules."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dqlitepy_server import DqlitepyServer
from raw_client import Raw

import dqlitepy
from dqlitepy.wire import (
    ClusterRequest,
    DescribeRequest,
    EmptyResponse,
    ExecRequest,
    ExecSqlRequest,
    FailureResponse,
    FinalizeRequest,
    HeartbeatRequest,
    InterruptRequest,
    LeaderRequest,
    MetadataResponse,
    OpenRequest,
    PrepareRequest,
    QueryRequest,
    QuerySqlRequest,
    Response,
    ResultResponse,
    RowsResponse,
    ServerResponse,
    ServersResponse,
    StmtResponse,
    ValueTuple,
    ValueType,
)


@pytest.fixture(scope="module")
def server() -> Iterator[DqlitepyServer]:
    with DqlitepyServer() as node:
        yield node


@pytest.fixture
def raw(server: DqlitepyServer, request: pytest.FixtureRequest) -> Iterator[Raw]:
    client = Raw(server.address)
    client.open(f"proto_{request.node.name}"[:60])
    yield client
    client.close()


def failure(response: Response) -> tuple[int, str]:
    assert isinstance(response, FailureResponse), response
    return response.code, response.message


def test_leader_cluster_describe(server: DqlitepyServer) -> None:
    client = Raw(server.address)
    try:
        leader = client.call(LeaderRequest())
        assert isinstance(leader, ServerResponse)
        assert leader.address == server.address and leader.id != 0
        cluster = client.call(ClusterRequest(1))
        assert isinstance(cluster, ServersResponse)
        assert [(n.id, n.address, n.role) for n in cluster.servers] == [
            (leader.id, server.address, 0)
        ]
        assert failure(client.call(ClusterRequest(2))) == (1005, "unrecognized cluster format")
        assert client.call(DescribeRequest(0)) == MetadataResponse(0, 0)
        # The connection is still usable after the failures.
        assert isinstance(client.call(HeartbeatRequest(0)), ServersResponse)
    finally:
        client.close()


def _frame(sock: socket.socket, type_: int, body: bytes) -> tuple[int, bytes]:
    """Send one hand-made frame and read one response frame."""
    sock.sendall(struct.pack("<IBBH", len(body) // 8, type_, 0, 0) + body)
    header = b""
    while len(header) < 8:
        header += sock.recv(8 - len(header))
    words, response_type, _, _ = struct.unpack("<IBBH", header)
    data = b""
    while len(data) < words * 8:
        data += sock.recv(words * 8 - len(data))
    return response_type, data


def test_describe_with_a_bad_format_gets_one_failure(server: DqlitepyServer) -> None:
    # dqlite 1.11 answers twice (and aborts); we answer FAILURE 15 once.
    sock = _raw_socket(server.address)
    try:
        sock.sendall(struct.pack("<Q", 1))
        type_, body = _frame(sock, 18, struct.pack("<Q", 1))
        assert type_ == 0 and struct.unpack_from("<Q", body)[0] == 15
        assert body[8:].rstrip(b"\0") == b"bad format version"
        type_, _ = _frame(sock, 0, bytes(8))  # still in step: LEADER answered
        assert type_ == 1
    finally:
        sock.close()


def test_statement_lifecycle(raw: Raw) -> None:
    raw.call(ExecSqlRequest(0, "CREATE TABLE t (x INTEGER, s TEXT)"))
    ids = []
    for _ in range(3):
        stmt = raw.call(PrepareRequest(0, "INSERT INTO t VALUES (?, ?)"))
        assert isinstance(stmt, StmtResponse) and stmt.param_count == 2
        ids.append(stmt.stmt_id)
    assert ids == [0, 1, 2]
    assert isinstance(raw.call(FinalizeRequest(0, 0)), EmptyResponse)
    again = raw.call(PrepareRequest(0, "SELECT x, s FROM t ORDER BY x"))
    assert isinstance(again, StmtResponse) and again.stmt_id == 0  # lowest free id, as dqlite
    result = raw.call(ExecRequest(0, 1, ValueTuple.of([7, "seven"])))
    assert result == ResultResponse(1, 1)
    batches = raw.batches(QueryRequest(0, 0))
    assert batches == [RowsResponse(("x", "s"), ((7, "seven"),), ((1, 3),), True)]
    assert failure(raw.call(ExecRequest(0, 9))) == (12, "no statement with the given id")
    assert failure(raw.call(FinalizeRequest(0, 9))) == (12, "no statement with the given id")


def test_failures_match_dqlite(raw: Raw) -> None:
    assert failure(raw.call(PrepareRequest(0, ""))) == (0, "empty statement")
    assert failure(raw.call(PrepareRequest(0, "  -- nothing"))) == (0, "empty statement")
    assert failure(raw.call(PrepareRequest(0, "SELEC 1"))) == (1, 'near "SELEC": syntax error')
    assert failure(raw.call(PrepareRequest(1, "SELECT 1"))) == (12, "no database opened")
    assert failure(raw.call(ExecSqlRequest(0, "SELECT 1"))) == (100, "another row available")
    assert failure(raw.batches(QuerySqlRequest(0, "CREATE TABLE q (x)"))[0]) == (1, "not an error")
    # ...and QUERY of a statement without columns did not run it.
    assert isinstance(raw.call(ExecSqlRequest(0, "CREATE TABLE q (x UNIQUE)")), ResultResponse)
    assert failure(raw.batches(QuerySqlRequest(0, "SELECT 1; SELECT 2"))[0]) == (
        1,
        "nonempty statement tail",
    )
    raw.call(ExecSqlRequest(0, "INSERT INTO q VALUES (1)"))
    assert failure(raw.call(ExecSqlRequest(0, "INSERT INTO q VALUES (1)"))) == (
        2067,
        "UNIQUE constraint failed: q.x",
    )
    assert failure(raw.call(ExecSqlRequest(0, "SELECT ?", ValueTuple.of([1, 2])))) == (
        25,
        "column index out of range",
    )
    assert failure(raw.call(OpenRequest("other"))) == (
        5,
        "a database for this connection is already open",
    )


def test_exec_sql_runs_every_statement(raw: Raw) -> None:
    result = raw.call(
        ExecSqlRequest(
            0, "CREATE TABLE e (v); INSERT INTO e VALUES (1); INSERT INTO e VALUES (2), (3)"
        )
    )
    assert result == ResultResponse(3, 2)
    # Parameters are used up in order across the statements (dqlite >= 1.18.2).
    raw.call(
        ExecSqlRequest(
            0, "INSERT INTO e VALUES (?); INSERT INTO e VALUES (?)", ValueTuple.of([10, 11])
        )
    )
    # A failure in a later statement keeps the earlier ones (autocommit each).
    response = raw.call(
        ExecSqlRequest(0, "INSERT INTO e VALUES (12); INSERT INTO nosuch VALUES (1)")
    )
    assert failure(response) == (1, "no such table: nosuch")
    batches = raw.batches(QuerySqlRequest(0, "SELECT v FROM e ORDER BY v"))
    assert isinstance(batches[0], RowsResponse)
    assert [r[0] for r in batches[0].rows] == [1, 2, 3, 10, 11, 12]
    assert raw.call(ExecSqlRequest(0, "  -- only a comment")) == ResultResponse(0, 0)


def test_declared_type_mapping(raw: Raw) -> None:
    raw.call(ExecSqlRequest(0, "CREATE TABLE d (a DATE, b DATETIME, c TIMESTAMP, f BOOLEAN, g)"))
    raw.call(
        ExecSqlRequest(0, "INSERT INTO d VALUES (1700000000, '2024-01-02 03:04:05', NULL, 5, 1)")
    )
    # Values of the "wrong" type crash dqlite 1.11; we send their storage type.
    raw.call(ExecSqlRequest(0, "INSERT INTO d VALUES (1.5, x'01', 'x', 'yes', 2)"))
    batches = raw.batches(
        QuerySqlRequest(0, "SELECT a, b, c, f, g, a AS alias, a || '' FROM d ORDER BY g")
    )
    (rows,) = batches
    assert isinstance(rows, RowsResponse)
    assert rows.row_types[0] == (
        ValueType.UNIXTIME,
        ValueType.ISO8601,
        ValueType.NULL,
        ValueType.BOOLEAN,
        ValueType.INTEGER,
        ValueType.UNIXTIME,
        ValueType.TEXT,
    )
    assert rows.rows[0] == (1700000000, "2024-01-02 03:04:05", None, 5, 1, 1700000000, "1700000000")
    assert rows.row_types[1][:4] == (
        ValueType.FLOAT,
        ValueType.BLOB,
        ValueType.ISO8601,
        ValueType.TEXT,
    )


def test_multi_batch_results(raw: Raw) -> None:
    raw.call(ExecSqlRequest(0, "CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT)"))
    raw.call(
        ExecSqlRequest(
            0,
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 3000) "
            "INSERT INTO big SELECT i, 'row-' || i FROM c",
        )
    )
    batches = raw.batches(QuerySqlRequest(0, "SELECT id, v FROM big"))
    assert len(batches) > 10
    assert all(isinstance(b, RowsResponse) and not b.done for b in batches[:-1])
    rows = [r for b in batches if isinstance(b, RowsResponse) for r in b.rows]
    assert rows == [(i, f"row-{i}") for i in range(1, 3001)]
    # A row larger than a batch travels alone, followed by an empty DONE batch.
    raw.call(ExecSqlRequest(0, "CREATE TABLE blob1 (b BLOB)"))
    raw.call(ExecSqlRequest(0, "INSERT INTO blob1 VALUES (?)", ValueTuple.of([bytes(1 << 20)])))
    batches = raw.batches(QuerySqlRequest(0, "SELECT b, length(b) FROM blob1"))
    assert isinstance(batches[0], RowsResponse) and batches[0].rows == ((bytes(1 << 20), 1 << 20),)


def test_interrupt_is_answered(raw: Raw) -> None:
    assert isinstance(raw.call(InterruptRequest(0)), EmptyResponse)


def _raw_socket(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=5)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(struct.pack("<Q", 2), id="unknown-version"),
        pytest.param(struct.pack("<Q", 1) + struct.pack("<IBBH", 0, 0, 0, 0), id="zero-words"),
        pytest.param(
            struct.pack("<Q", 1) + struct.pack("<IBBH", 0xFFFFFFFF, 9, 0, 0), id="oversized"
        ),
    ],
)
def test_framing_violations_close_the_connection(server: DqlitepyServer, payload: bytes) -> None:
    sock = _raw_socket(server.address)
    try:
        sock.sendall(payload)
        received = bytearray()
        while chunk := sock.recv(4096):
            received += chunk
        # An oversized message is told why first (a FAILURE: code 1, then the text).
        if len(received):
            words, type_ = struct.unpack_from("<IB", received)
            assert type_ == 0 and len(received) == 8 + 8 * words
            assert b"(--max-message-size)" in received
    finally:
        sock.close()


def test_unknown_request_type_gets_failure_and_connection_survives(server: DqlitepyServer) -> None:
    sock = _raw_socket(server.address)
    try:
        sock.sendall(struct.pack("<Q", 1))
        type_, body = _frame(sock, 42, bytes(8))
        assert type_ == 0 and struct.unpack_from("<Q", body)[0] == 1005
        type_, _ = _frame(sock, 0, bytes(8))
        assert type_ == 1
    finally:
        sock.close()


def test_interactive_transaction_isolated_until_commit(server: DqlitepyServer) -> None:
    a = dqlitepy.connect("txn_iso", servers=[server.address], isolation_level=None)
    b = dqlitepy.connect("txn_iso", servers=[server.address], isolation_level=None)
    try:
        a.execute("CREATE TABLE t (x)")
        a.execute("BEGIN")
        a.execute("INSERT INTO t VALUES (1)")
        assert b.execute("SELECT count(*) FROM t").fetchone() == (0,)
        a.execute("COMMIT")
        assert b.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        a.close()
        b.close()


def test_second_writer_waits_instead_of_failing(server: DqlitepyServer) -> None:
    a = dqlitepy.connect(
        "txn_wait", servers=[server.address], isolation_level=None, check_same_thread=False
    )
    # A client that says nothing about timeouts (OPEN flags 0, as go-dqlite sends)
    # gets the server's default wait instead of an immediate "database is locked".
    b = Raw(server.address)
    try:
        a.execute("CREATE TABLE t (x)")
        b.open("txn_wait")
        a.execute("BEGIN IMMEDIATE")
        a.execute("INSERT INTO t VALUES (1)")
        timer = threading.Timer(0.5, lambda: a.execute("COMMIT"))
        start = time.monotonic()
        timer.start()
        assert isinstance(b.call(ExecSqlRequest(0, "INSERT INTO t VALUES (2)")), ResultResponse)
        elapsed = time.monotonic() - start
        timer.join()
        assert 0.3 < elapsed < 5
        assert a.execute("SELECT count(*) FROM t").fetchone() == (2,)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("sql", "allowed"),
    [
        ("ATTACH DATABASE '/tmp/dqlitepy-attach.db' AS other", False),
        ("VACUUM INTO '/tmp/dqlitepy-vacuum-into.db'", False),
        ("SELECT load_extension('/tmp/x')", False),
        ("PRAGMA journal_mode=DELETE", False),
        ("PRAGMA synchronous=OFF", False),
        ("PRAGMA writable_schema=ON", False),
        ("PRAGMA wal_checkpoint(TRUNCATE)", False),
        ("PRAGMA journal_mode", True),
        ("PRAGMA foreign_keys=ON", True),
        ("VACUUM", True),
        ("ATTACH DATABASE '' AS scratch", True),
    ],
)
def test_clients_stay_inside_their_database(
    server: DqlitepyServer, sql: str, allowed: bool
) -> None:
    conn = dqlitepy.connect("safety", servers=[server.address], isolation_level=None)
    try:
        if allowed:
            conn.execute(sql).fetchall()
        else:
            with pytest.raises(dqlitepy.DatabaseError) as info:
                conn.execute(sql).fetchall()
            # SQLITE_AUTH at run time, or SQLITE_ERROR when refused while compiling.
            assert info.value.sqlite_errorcode in (1, 23)
            assert "not authorized" in str(info.value) or "authorization denied" in str(info.value)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
    assert not Path("/tmp/dqlitepy-attach.db").exists()
    assert not Path("/tmp/dqlitepy-vacuum-into.db").exists()


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd-x", "a/b", "..", ".", "x\\y", "é€"])
def test_database_names_stay_inside_the_data_dir(server: DqlitepyServer, name: str) -> None:
    conn = dqlitepy.connect(name, servers=[server.address])
    try:
        with conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            conn.execute("INSERT INTO t VALUES (1)")
    finally:
        conn.close()
    databases = server.data_dir / "databases"
    created = [p for p in databases.iterdir() if p.name.endswith(".sqlite")]
    assert all(p.parent == databases for p in created)
    assert not Path("/etc/passwd-x").exists()
    assert not (server.data_dir / "escape").exists()
    dumped = dqlitepy.Client([server.address]).dump(name)
    assert dumped[name].startswith(b"SQLite format 3\x00")
