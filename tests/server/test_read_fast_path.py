"""The read fast path (``docs/server.md``, "The read fast path"): a plain QUERY or
QUERY_SQL between transactions is served by ``Gateway.read_fast`` in one go; everything
else goes the general way.  Both give the same bytes, and the node's request counters
say which way each read went (``ConnectionStats.fast_reads``).

Nodes run in this process on loopback, local and replicated (one voter: reads are
confirmed by Raft's read path); requests are raw wire messages.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import wait_until

import dqlitepy
from dqlitepy.wire import (
    NEED_DATA,
    ClientConnection,
    ExecSqlRequest,
    FailureResponse,
    OpenRequest,
    PrepareRequest,
    QueryRequest,
    QuerySqlRequest,
    Request,
    ValueTuple,
    encode_message,
)

KEY = b"a cluster key for the read fast path tests"


@pytest.fixture(params=["local", "replicated"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dqlitepy.Node]:
    key = KEY if request.param == "replicated" else None
    with dqlitepy.Node("127.0.0.1:0", tmp_path / "data", cluster_key=key) as node:
        wait_until(lambda: node.is_leader, "the node leads", timeout=30)
        yield node


class _Client:
    """Raw requests on one connection; each answer as the bytes of its messages."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.conn = ClientConnection()
        self.sock.sendall(self.conn.handshake())
        self.buffer = b""

    def ask(self, request: Request) -> list[bytes]:
        self.sock.sendall(encode_message(request))
        self.conn.send(request)
        messages: list[bytes] = []
        while True:
            while (event := self.conn.next_event()) is NEED_DATA:
                data = self.sock.recv(1 << 20)
                assert data, "the server closed the connection"
                self.conn.receive_data(data)
                self.buffer += data
            size = 8 + 8 * int.from_bytes(self.buffer[:4], "little")
            messages.append(self.buffer[:size])
            self.buffer = self.buffer[size:]
            if isinstance(event, FailureResponse) or getattr(event, "done", True):
                return messages

    def close(self) -> None:
        self.sock.close()


def _fast_reads(node: dqlitepy.Node) -> int:
    return node._server._requests.total().fast_reads


@pytest.fixture
def client(node: dqlitepy.Node) -> Iterator[_Client]:
    client = _Client(node.address)
    assert len(client.ask(OpenRequest("app"))[0]) == 16  # DB, not FAILURE
    client.ask(ExecSqlRequest(0, "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT, f BOOLEAN)"))
    rows = [value for k in range(3) for value in (k, f"v{k}", k % 2)]
    client.ask(
        ExecSqlRequest(0, "INSERT INTO t VALUES (?,?,?), (?,?,?), (?,?,?)", ValueTuple.of(rows))
    )
    yield client
    client.close()


def test_point_reads_take_the_fast_path_with_the_same_bytes(
    node: dqlitepy.Node, client: _Client
) -> None:
    sql = "SELECT k, v, f FROM t WHERE k = ?"
    before = _fast_reads(node)
    # The first QUERY_SQL of a text compiles it: the general path, which caches it.
    general = client.ask(QuerySqlRequest(0, sql, ValueTuple.of([1])))
    assert _fast_reads(node) == before
    fast = client.ask(QuerySqlRequest(0, sql, ValueTuple.of([1])))
    assert _fast_reads(node) == before + 1
    assert fast == general and len(fast) == 1
    (stmt,) = client.ask(PrepareRequest(0, sql))
    stmt_id = int.from_bytes(stmt[12:16], "little")
    assert client.ask(QueryRequest(0, stmt_id, ValueTuple.of([1]))) == general
    assert _fast_reads(node) == before + 2
    # No row, and a statement without parameters, the same way.
    empty = client.ask(QuerySqlRequest(0, sql, ValueTuple.of([99])))
    assert _fast_reads(node) == before + 3
    whole = "SELECT * FROM t ORDER BY k"
    assert client.ask(QuerySqlRequest(0, whole)) == client.ask(QuerySqlRequest(0, whole))
    assert _fast_reads(node) == before + 4
    assert empty != general

    # Counted as any query_sql / query, by outcome (once sent: the count follows).
    def counted() -> bool:
        counts = node.metrics()["requests"]
        return counts["query_sql"]["ok"] == 5 and counts["query"]["ok"] == 1

    wait_until(counted, "the reads counted by type and outcome")


def test_reads_the_fast_path_leaves_to_the_general_one(
    node: dqlitepy.Node, client: _Client
) -> None:
    sql = "SELECT v FROM t WHERE k = ?"
    expected = client.ask(QuerySqlRequest(0, sql, ValueTuple.of([2])))
    before = _fast_reads(node)
    # Inside a transaction (its write lock held or not).
    client.ask(ExecSqlRequest(0, "BEGIN"))
    assert client.ask(QuerySqlRequest(0, sql, ValueTuple.of([2]))) == expected
    client.ask(ExecSqlRequest(0, "UPDATE t SET v = 'w' WHERE k = 0"))
    assert client.ask(QuerySqlRequest(0, sql, ValueTuple.of([2]))) == expected
    client.ask(ExecSqlRequest(0, "COMMIT"))
    # Parameters missing (bound NULL) or too many.
    assert client.ask(QuerySqlRequest(0, sql)) == client.ask(
        QuerySqlRequest(0, sql, ValueTuple.of([None]))
    )
    too_many = client.ask(QuerySqlRequest(0, sql, ValueTuple.of([1, 2])))
    assert b"column index out of range" in too_many[0]
    # A statement that returns no rows: dqlite 1.11's refusal.
    client.ask(QuerySqlRequest(0, "UPDATE t SET v = v WHERE k = 5"))
    refused = client.ask(QuerySqlRequest(0, "UPDATE t SET v = v WHERE k = 5"))
    assert b"not an error" in refused[0]
    # A statement that writes and returns rows.
    returning = "UPDATE t SET v = 'r' WHERE k = 1 RETURNING k"
    client.ask(QuerySqlRequest(0, returning))
    client.ask(QuerySqlRequest(0, returning))
    assert _fast_reads(node) == before + 1  # only the query with NULL bound is fast


def test_a_result_of_several_batches_and_a_failing_read(
    node: dqlitepy.Node, client: _Client
) -> None:
    client.ask(ExecSqlRequest(0, "CREATE TABLE big (x TEXT)"))
    fill = (
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2000) "
        "INSERT INTO big SELECT hex(zeroblob(500)) FROM c"
    )
    assert len(client.ask(ExecSqlRequest(0, fill))[0]) == 24  # RESULT, not FAILURE
    sql = "SELECT rowid, x FROM big ORDER BY rowid"
    general = client.ask(QuerySqlRequest(0, sql))
    before = _fast_reads(node)
    fast = client.ask(QuerySqlRequest(0, sql))
    assert len(general) > 2 and fast == general
    assert _fast_reads(node) == before  # streamed: not served whole
    # A step that fails: the same FAILURE either way, and the connection goes on.
    overflow = "SELECT abs(?) FROM t"
    minimum = ValueTuple.of([-(2**63)])
    failure = client.ask(QuerySqlRequest(0, overflow, minimum))
    assert client.ask(QuerySqlRequest(0, overflow, minimum)) == failure
    assert b"integer overflow" in failure[0]
    wait_until(
        lambda: node.metrics()["requests"]["query_sql"]["error"] == 2, "the failures counted"
    )
    assert client.ask(QuerySqlRequest(0, sql)) == general
