"""Golden vectors: the real captures of ``protocol.md`` Appendix A (G1..G21).

The hex dumps were extracted once by ``tests/data/extract_golden.py`` into
``tests/data/golden_transcripts.json``; these tests read only that file.

For every transcript the expected message objects are written out below, by
hand, from the dump's annotations.  Each transcript is then driven through a
:class:`ClientConnection` / :class:`ServerConnection` pair:

* a request is sent with ``client.send`` (its bytes must equal the capture) and
  the captured bytes are fed to the server, which must produce the expected
  request;
* a response is sent with ``server.send`` (bytes equal to the capture) and the
  captured bytes are fed to the client, which must produce the expected response.

Bytes are compared exactly, except for the padding bytes that the capture shows
as non-zero garbage (§1.4), listed in :data:`PADDING_GARBAGE`.  Messages whose
dump elides words are rebuilt from the visible structure (with placeholder
content where the dump hides it) and checked against the visible prefix, suffix
and the header's word count.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dqlitepy.wire import (
    NEED_DATA,
    PROTOCOL_VERSION,
    PROTOCOL_VERSION_LEGACY,
    REQUESTS,
    RESPONSES,
    AddRequest,
    AssignRequest,
    ClientConnection,
    ClientRequest,
    ClientState,
    ClusterRequest,
    ConnectRequest,
    DbResponse,
    DescribeRequest,
    DumpRequest,
    EmptyResponse,
    ExecRequest,
    ExecSqlRequest,
    FailureResponse,
    FilesResponse,
    FinalizeRequest,
    Handshake,
    InterruptRequest,
    LeaderRequest,
    LocalProtocolError,
    MetadataResponse,
    NodeInfo,
    OpenRequest,
    PrepareRequest,
    QueryRequest,
    QuerySqlRequest,
    RemoteProtocolError,
    RemoveRequest,
    Request,
    Response,
    ResultResponse,
    RowsResponse,
    ServerConnection,
    ServerResponse,
    ServersResponse,
    ServerState,
    StmtResponse,
    TransferRequest,
    ValueTuple,
    WeightRequest,
    WelcomeResponse,
    encode_message,
)
from dqlitepy.wire.codec import Reader, Value
from dqlitepy.wire.rows import RowsBatchEncoder

DATA = Path(__file__).parent.parent / "data" / "golden_transcripts.json"
TRANSCRIPTS: dict[str, dict[str, Any]] = {
    t["id"]: t for t in json.loads(DATA.read_text(encoding="utf-8"))["transcripts"]
}

NODE1 = 0x2DC171858C3155BE
NODE2 = 0xF5CADF32BD01F988
NODE3 = 0xD5D5AB9F1E14E02E
ADDR1, ADDR2, ADDR3 = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"

INTEGER, FLOAT, TEXT, BLOB, NULL, UNIXTIME, ISO8601, BOOLEAN = 1, 2, 3, 4, 5, 9, 10, 11


@dataclass(frozen=True)
class Raw:
    """A stretch of bytes that is not dqlite client framing (or nothing at all)."""

    data: bytes


@dataclass(frozen=True)
class Rebuilt:
    """An elided message, rebuilt as ``message`` (placeholder content where hidden)."""

    message: Response


def _servers(roles: tuple[int, int, int], fmt: int = 1) -> ServersResponse:
    return ServersResponse(
        (
            NodeInfo(NODE1, ADDR1, roles[0]),
            NodeInfo(NODE2, ADDR2, roles[1]),
            NodeInfo(NODE3, ADDR3, roles[2]),
        ),
        format=fmt,
    )


def _g5_batch(first: int, last: int, done: bool) -> RowsResponse:
    ids = range(first, last + 1)
    return RowsResponse(
        ("id", "v"),
        tuple((i, f"row-{i}") for i in ids),
        tuple((INTEGER, TEXT) for _ in ids),
        done,
    )


def _g11b_files() -> FilesResponse:
    """G11b with the hidden file content replaced by zeros around the visible bytes."""
    shown = TRANSCRIPTS["G11b"]["messages"][2]
    prefix = bytes.fromhex(shown["hex"])[8 + 8 + 8 + 8 :]  # after header, n, name, size
    tail = bytes.fromhex(shown["tail_hex"])
    db = prefix + bytes(4096 - len(prefix))
    wal = bytes(28872 - len(tail)) + tail
    return FilesResponse((("demo", db), ("demo-wal", wal)))


G1_ROW0 = (42, 3.5, "hello", b"\xde\xad\xbe\xef\x01", None, 1, "2023-01-02 03:04:05", 1700000000)
G1_ROW1 = (-7, -0.25, "wörld", b"", None, 0, "", "")
G3_VALUES = (-2, 1.5, "héllo", b"\x01\x02\x03", None, 1, "2024-02-29 12:34:56.789+00:00")
G3_TYPES = (INTEGER, FLOAT, TEXT, BLOB, NULL, BOOLEAN, ISO8601)

#: The expected message of every dump entry, in order.
EXPECTED: dict[str, list[object]] = {
    "G1": [
        Handshake(PROTOCOL_VERSION),
        LeaderRequest(),
        ServerResponse(NODE1, ADDR1),
        ClientRequest(0),
        WelcomeResponse(15000),
        OpenRequest("demo", 0, "volatile"),
        DbResponse(0),
        ExecSqlRequest(0, "BEGIN"),
        ResultResponse(0, 0),
        QuerySqlRequest(0, "SELECT * FROM t"),
        RowsResponse(
            ("i", "f", "s", "b", "n", "flag", "ts", "d"),
            (G1_ROW0, G1_ROW1),
            (
                (INTEGER, FLOAT, TEXT, BLOB, NULL, BOOLEAN, ISO8601, UNIXTIME),
                (INTEGER, FLOAT, TEXT, BLOB, NULL, BOOLEAN, ISO8601, ISO8601),
            ),
            done=True,
        ),
        ExecSqlRequest(0, "COMMIT"),
        ResultResponse(0, 0),
    ],
    "G2": [
        ExecSqlRequest(
            0,
            "INSERT OR REPLACE INTO model(key, value) VALUES(?, ?)",
            ValueTuple((TEXT, TEXT), ("foo", "bar")),
        ),
        ResultResponse(1, 1),
        QuerySqlRequest(0, "SELECT value FROM model WHERE key = ?", ValueTuple((TEXT,), ("foo",))),
        RowsResponse(("value",), (("bar",),), ((TEXT,),), done=True),
    ],
    "G3": [
        PrepareRequest(0, "INSERT INTO p (i, f, s, b, n, flag, ts) VALUES (?, ?, ?, ?, ?, ?, ?)"),
        StmtResponse(0, 0, 7),
        ExecRequest(0, 0, ValueTuple(G3_TYPES, G3_VALUES)),
        ResultResponse(1, 1),
        FinalizeRequest(0, 0),
        EmptyResponse(),
        PrepareRequest(0, "SELECT i, f, s, b, n, flag, ts FROM p WHERE i = ? AND flag = ?"),
        StmtResponse(0, 0, 2),
        QueryRequest(0, 0, ValueTuple((INTEGER, BOOLEAN), (-2, 1))),
        RowsResponse(("i", "f", "s", "b", "n", "flag", "ts"), (G3_VALUES,), (G3_TYPES,), done=True),
        FinalizeRequest(0, 0),
        EmptyResponse(),
    ],
    "G4": [
        QuerySqlRequest(
            0,
            "SELECT 'x' WHERE 1 IN (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ValueTuple((INTEGER,) * 9, tuple(range(9))),
        ),
        RowsResponse(("'x'",), (("x",),), ((TEXT,),), done=True),
    ],
    "G5": [
        QuerySqlRequest(0, "SELECT id, v FROM big"),
        # 300 rows: 170 in the PART batch (514 words), 130 in the DONE batch (394).
        Rebuilt(_g5_batch(1, 170, done=False)),
        Rebuilt(_g5_batch(171, 300, done=True)),
    ],
    "G6": [InterruptRequest(0), EmptyResponse()],
    "G7a": [
        QuerySqlRequest(0, "SELECT * FROM nosuch"),
        FailureResponse(1, "no such table: nosuch"),
        ExecSqlRequest(0, "ROLLBACK"),
        ResultResponse(0, 0),
    ],
    "G7b": [
        ExecSqlRequest(0, "INSERT INTO u VALUES (1)"),
        FailureResponse(2067, "UNIQUE constraint failed: u.x"),
    ],
    "G7c": [PrepareRequest(0, ""), FailureResponse(0, "empty statement")],
    "G7d": [
        Handshake(PROTOCOL_VERSION),
        LeaderRequest(),
        ServerResponse(NODE2, ADDR2),
        ClientRequest(123),
        WelcomeResponse(15000),
        OpenRequest("probe", 0, "volatile"),
        DbResponse(0),
        ExecSqlRequest(0, "CREATE TABLE IF NOT EXISTS f (x)"),
        FailureResponse(10250, "not leader"),
    ],
    "G7e": [
        OpenRequest("probe", 0, "volatile"),
        FailureResponse(5, "a database for this connection is already open"),
    ],
    "G8": [
        Handshake(PROTOCOL_VERSION),
        ClusterRequest(0),
        _servers((0, 0, 0), fmt=0),
        ClusterRequest(1),
        _servers((0, 0, 0), fmt=1),
    ],
    "G9": [Handshake(PROTOCOL_VERSION), LeaderRequest(), ServerResponse(NODE1, ADDR1)],
    "G10a": [Handshake(PROTOCOL_VERSION), WeightRequest(7), EmptyResponse()],
    "G10b": [Handshake(PROTOCOL_VERSION), DescribeRequest(0), MetadataResponse(0, 7)],
    "G11a": [
        Handshake(PROTOCOL_VERSION),
        DumpRequest("nosuchdb"),
        FilesResponse((("nosuchdb", b""), ("nosuchdb-wal", b""))),
    ],
    "G11b": [Handshake(PROTOCOL_VERSION), DumpRequest("demo"), Rebuilt(_g11b_files())],
    "G12": [
        AddRequest(NODE3, ADDR3),
        EmptyResponse(),
        ClusterRequest(1),
        _servers((0, 2, 2)),
        AssignRequest(NODE3, 0),
        EmptyResponse(),
        AssignRequest(NODE2, 0),
        EmptyResponse(),
    ],
    "G13": [
        Handshake(PROTOCOL_VERSION),
        AssignRequest(NODE3, 1),
        EmptyResponse(),
        ClusterRequest(1),
        _servers((0, 0, 1)),
        AssignRequest(NODE3, None),  # the old one-word PROMOTE form
        FailureResponse(1, "server role is not valid"),
        TransferRequest(NODE1),
        EmptyResponse(),
    ],
    "G14": [
        ClusterRequest(1),
        _servers((0, 0, 0)),
        RemoveRequest(NODE3),
        EmptyResponse(),
    ],
    "G15": [
        Handshake(PROTOCOL_VERSION),
        ConnectRequest(NODE3, ADDR3),
        Raw(bytes.fromhex("02000000000000001800000000000000")),
    ],
    "G16": [Handshake(PROTOCOL_VERSION_LEGACY), LeaderRequest(), ServerResponse(0, ADDR1)],
    "G17": [
        Raw(bytes.fromhex("020000000000000001000000000000000000000000000000")),
        Raw(b""),
    ],
    "G18": [
        ExecSqlRequest(
            0, "INSERT INTO e (v) VALUES (?)", ValueTuple((INTEGER,), (77,)), wide_params=True
        ),
        FailureResponse(1005, "not an error"),
    ],
    "G19": [
        ExecSqlRequest(0, "INSERT INTO e (v) VALUES (1); INSERT INTO e (v) VALUES (2), (3)"),
        ResultResponse(3, 2),
        ExecSqlRequest(0, "SELECT 1"),
        FailureResponse(100, "another row available"),
        ExecSqlRequest(
            0,
            "INSERT INTO e (v) VALUES (?); INSERT INTO e (v) VALUES (?)",
            ValueTuple((INTEGER,), (10,)),
        ),
        ResultResponse(5, 1),
        ExecSqlRequest(0, "INSERT INTO e (v) VALUES (1); INSERT INTO nosuch VALUES (2)"),
        FailureResponse(1, "no such table: nosuch"),
    ],
    "G20": [
        QuerySqlRequest(0, "SELECT 1 WHERE 0"),
        RowsResponse(("1",), (), (), done=True),
    ],
    "G21": [
        QuerySqlRequest(0, "SELECT b, length(b) FROM bigb"),
        # The 1 MiB blob's content is hidden; zeros stand in for it.
        Rebuilt(
            RowsResponse(
                ("b", "length(b)"),
                ((bytes(1 << 20), 1 << 20),),
                ((BLOB, INTEGER),),
                done=False,
            )
        ),
        RowsResponse(("b", "length(b)"), (), (), done=True),
    ],
}

#: Byte ranges (from the start of the header) that the capture fills with garbage
#: padding and that we write as zeros (§1.4), by (transcript, message index).
PADDING_GARBAGE: dict[tuple[str, int], tuple[tuple[int, int], ...]] = {
    # EXEC_SQL params header `02 03 03 51 55 45 28 6b` after 56 bytes of SQL.
    ("G2", 0): ((75, 80),),
    # QUERY_SQL params header `01 03 41 4c 55 45 53 28` after 40 bytes of SQL.
    ("G2", 2): ((58, 64),),
    # QUERY params header `02 01 0b 45 43 54 20 69` right after db_id/stmt_id.
    ("G3", 8): ((19, 24),),
    # ROWS: the server's 3-byte blob `01 02 03 20 cb 7f 00 00`.
    ("G3", 9): ((115, 120),),
}

ALL_IDS = sorted(TRANSCRIPTS, key=lambda s: (int(s[1:].rstrip("abcde")), s))
DRIVABLE = [tid for tid in ALL_IDS if tid != "G17"]


def _mask(data: bytes, spans: tuple[tuple[int, int], ...]) -> bytes:
    out = bytearray(data)
    for start, end in spans:
        out[start:end] = bytes(end - start)
    return bytes(out)


def _assert_same_bytes(tid: str, index: int, ours: bytes, captured: bytes) -> None:
    spans = PADDING_GARBAGE.get((tid, index), ())
    for start, end in spans:
        # The mask must cover real garbage, and we must write zeros there.
        assert any(captured[start:end]), f"{tid}[{index}]: stale mask {start}:{end}"
        assert ours[start:end] == bytes(end - start)
    assert _mask(ours, spans) == _mask(captured, spans)
    if not spans:
        assert ours == captured


def _captured(tid: str, index: int) -> bytes:
    msg = TRANSCRIPTS[tid]["messages"][index]
    assert not msg["elided"]
    return bytes.fromhex(msg["hex"])


def _rebuild(tid: str, index: int, message: Response) -> bytes:
    """Encode ``message`` and check it against what the elided dump shows."""
    msg = TRANSCRIPTS[tid]["messages"][index]
    assert msg["elided"]
    prefix = bytes.fromhex(msg["hex"])
    tail = bytes.fromhex(msg["tail_hex"])
    data = encode_message(message)
    (words,) = struct.unpack_from("<I", prefix)
    shown_words = (len(prefix) + len(tail)) // 8 - 1
    assert shown_words + msg["elided_words"] == words
    assert len(data) == 8 + 8 * words
    assert data.startswith(prefix)
    assert data.endswith(tail)
    return data


# ----------------------------------------------------------------------------- data


def test_every_transcript_is_extracted() -> None:
    expected_ids = {f"G{i}" for i in range(1, 22)} - {"G7", "G10", "G11"}
    expected_ids |= {"G7a", "G7b", "G7c", "G7d", "G7e", "G10a", "G10b", "G11a", "G11b"}
    assert set(TRANSCRIPTS) == expected_ids
    assert set(EXPECTED) == expected_ids
    for tid, transcript in TRANSCRIPTS.items():
        assert transcript["title"]
        assert len(transcript["messages"]) == len(EXPECTED[tid]), tid


@pytest.mark.parametrize("tid", ALL_IDS)
def test_dump_headers_match_annotations(tid: str) -> None:
    """The stored bytes agree with the dump's own header annotations."""
    for msg in TRANSCRIPTS[tid]["messages"]:
        data = bytes.fromhex(msg["hex"])
        if msg["kind"] == "handshake":
            (version,) = struct.unpack("<Q", data)
            assert msg["annotation"] == [f"version={version:#x}"]
        elif msg["kind"] == "message":
            words, type_, schema, extra = struct.unpack_from("<IBBH", data)
            assert msg["annotation"][0] == (
                f"header: words={words} type={type_} schema={schema} extra={extra}"
            )
            shown = (len(data) + len(bytes.fromhex(msg["tail_hex"]))) // 8 - 1
            assert shown + msg["elided_words"] == words
            assert msg["elided"] == (msg["elided_words"] > 0)
            assert len(msg["annotation"]) == shown + 1
            kind = "request" if msg["direction"] == "C->S" else "response"
            assert msg["label"].endswith(kind)
            table = REQUESTS if kind == "request" else RESPONSES
            assert msg["label"] == f"{table[type_].TYPE.name} {kind}"
        else:
            assert msg["kind"] == "raw"


# ------------------------------------------------------------------ direct decoding


def _complete_messages() -> list[tuple[str, int]]:
    out = []
    for tid in ALL_IDS:
        for i, msg in enumerate(TRANSCRIPTS[tid]["messages"]):
            if msg["kind"] == "message" and not msg["elided"]:
                out.append((tid, i))
    return out


@pytest.mark.parametrize(("tid", "index"), _complete_messages())
def test_message_decodes_with_class_tables(tid: str, index: int) -> None:
    """Decode each whole message straight from REQUESTS / RESPONSES."""
    msg = TRANSCRIPTS[tid]["messages"][index]
    data = bytes.fromhex(msg["hex"])
    words, type_, schema, _extra = struct.unpack_from("<IBBH", data)
    body = data[8:]
    assert len(body) == 8 * words
    expected = EXPECTED[tid][index]
    legacy = tid == "G16"
    if msg["direction"] == "C->S":
        decoded: object = REQUESTS[type_].decode_body(body, schema, legacy=legacy)
    elif type_ == ServersResponse.TYPE:
        assert isinstance(expected, ServersResponse)
        decoded = ServersResponse.decode_body(body, schema, format=expected.format)
    else:
        decoded = RESPONSES[type_].decode_body(body, schema, legacy=legacy)
    assert decoded == expected
    assert type_ == type(decoded).TYPE  # type: ignore[attr-defined]


# -------------------------------------------------------------- connection drive


def _drive(tid: str) -> tuple[ClientConnection, ServerConnection]:
    transcript = TRANSCRIPTS[tid]
    client = ClientConnection()
    server = ServerConnection()
    messages = transcript["messages"]
    if messages[0]["kind"] != "handshake":
        # The capture starts mid-connection: open it with the usual version 1.
        server.receive_data(client.handshake())
        assert server.next_event() == Handshake(PROTOCOL_VERSION)
    for index, (msg, expected) in enumerate(zip(messages, EXPECTED[tid], strict=True)):
        if msg["kind"] == "handshake":
            assert isinstance(expected, Handshake)
            captured = _captured(tid, index)
            assert client.handshake(expected.version) == captured
            server.receive_data(captured)
            assert server.next_event() == expected
            assert server.legacy == client.legacy == expected.legacy
        elif msg["kind"] == "raw":
            assert isinstance(expected, Raw)
            assert bytes.fromhex(msg["hex"]) == expected.data
            # Only G15 has raw bytes inside a drivable transcript: raft's stream.
            assert server.state is ServerState.HANDED_OVER
            server.receive_data(expected.data)
            assert server.next_event() is NEED_DATA
            assert server.trailing_data() == expected.data
        elif msg["direction"] == "C->S":
            assert isinstance(expected, Request)
            captured = _captured(tid, index)
            if isinstance(expected, ConnectRequest):
                with pytest.raises(LocalProtocolError):
                    client.send(expected)
                sent = encode_message(expected)
            else:
                sent = client.send(expected)
                assert client.state is ClientState.AWAITING
            _assert_same_bytes(tid, index, sent, captured)
            server.receive_data(captured)
            assert server.next_event() == expected
            assert server.next_event() is NEED_DATA
        else:
            if isinstance(expected, Rebuilt):
                response = expected.message
                captured = _rebuild(tid, index, response)
            else:
                assert isinstance(expected, Response)
                response = expected
                captured = _captured(tid, index)
            assert server.state is ServerState.RESPONDING
            _assert_same_bytes(tid, index, server.send(response), captured)
            client.receive_data(captured)
            assert client.next_event() == response
            assert client.next_event() is NEED_DATA
            streaming = isinstance(response, RowsResponse) and not response.done
            assert client.state is (ClientState.STREAMING if streaming else ClientState.IDLE)
            assert server.state is (ServerState.RESPONDING if streaming else ServerState.IDLE)
    return client, server


@pytest.mark.parametrize("tid", DRIVABLE)
def test_transcript_through_connections(tid: str) -> None:
    client, server = _drive(tid)
    if tid == "G15":
        assert server.state is ServerState.HANDED_OVER
    else:
        assert client.state is ClientState.IDLE
        assert server.state is ServerState.IDLE


@pytest.mark.parametrize("tid", DRIVABLE)
def test_transcript_coalesced(tid: str) -> None:
    """The server gets every captured request of a transcript in one chunk."""
    messages = TRANSCRIPTS[tid]["messages"]
    assert not any(m["elided"] for m in messages if m["direction"] == "C->S")
    to_server = b"".join(bytes.fromhex(m["hex"]) for m in messages if m["direction"] == "C->S")
    if messages[0]["kind"] != "handshake":
        to_server = struct.pack("<Q", PROTOCOL_VERSION) + to_server
    expected_requests = [
        e for m, e in zip(messages, EXPECTED[tid], strict=True) if m["direction"] == "C->S"
    ]
    server = ServerConnection()
    server.receive_data(to_server)
    events: list[object] = []
    while (event := server.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectRequest):
            events.append(Raw(server.trailing_data()))
            break
        if isinstance(event, Request):
            # Any answer will do: it lets the server read the next request.
            server.send(FailureResponse(0, "x"))
    if messages[0]["kind"] != "handshake":
        assert events[0] == Handshake(PROTOCOL_VERSION)
        events = events[1:]
    assert events == expected_requests


def test_g5_visible_prefix_decodes() -> None:
    """The rows shown before each elision decode as the dump says."""
    batch1, batch2 = TRANSCRIPTS["G5"]["messages"][1:3]
    for msg, first in ((batch1, 1), (batch2, 171)):
        prefix = bytes.fromhex(msg["hex"])
        words, type_, _schema, _extra = struct.unpack_from("<IBBH", prefix)
        assert type_ == RowsResponse.TYPE
        r = Reader(prefix[8:])
        assert r.u64() == 2
        assert (r.text(), r.text()) == ("id", "v")
        for i in range(first, first + 3):
            assert r.raw(8) == bytes([INTEGER | TEXT << 4]) + bytes(7)
            assert r.value(INTEGER) == i
            assert r.value(TEXT) == f"row-{i}"
        # Row 4 is cut after its integer.
        assert r.raw(8) == bytes([0x31]) + bytes(7)
        assert r.value(INTEGER) == first + 3
        assert r.at_end()
        # 24 bytes per row, 24 bytes of column header, one marker word.
        n_rows = (words * 8 - 24 - 8) // 24
        assert n_rows == (170 if first == 1 else 130)
    assert bytes.fromhex(batch1["tail_hex"]) == b"\xee" * 8
    assert bytes.fromhex(batch2["tail_hex"]) == b"\xff" * 8


def test_g21_visible_prefix_decodes() -> None:
    msg = TRANSCRIPTS["G21"]["messages"][1]
    prefix = bytes.fromhex(msg["hex"])
    words, type_, _schema, _extra = struct.unpack_from("<IBBH", prefix)
    assert (words, type_) == (131080, RowsResponse.TYPE)
    r = Reader(prefix[8:])
    assert r.u64() == 2
    assert (r.text(), r.text()) == ("b", "length(b)")
    assert r.raw(8) == bytes([BLOB | INTEGER << 4]) + bytes(7)
    assert r.u64() == 1 << 20  # the blob's length; its bytes are elided
    assert r.at_end()
    # blob words + the length(b) integer + the marker end the message.
    assert words == r.pos // 8 + (1 << 20) // 8 + 1 + 1


def test_g11b_visible_prefix_decodes() -> None:
    msg = TRANSCRIPTS["G11b"]["messages"][2]
    prefix = bytes.fromhex(msg["hex"])
    words, type_, _schema, _extra = struct.unpack_from("<IBBH", prefix)
    assert (words, type_) == (4127, FilesResponse.TYPE)
    r = Reader(prefix[8:])
    assert r.u64() == 2
    assert r.text() == "demo"
    assert r.u64() == 4096
    assert r.raw(16) == b"SQLite format 3\x00"
    # n + name + size + db + "demo-wal" + size + WAL (28872 bytes, §3.10).
    assert words == 1 + 1 + 1 + 4096 // 8 + 2 + 1 + 28872 // 8


def _batches(
    columns: tuple[str, ...], rows: list[tuple[tuple[int, ...], tuple[Value, ...]]]
) -> list[bytes]:
    """Cut rows into ROWS messages as dqlite does: the size check precedes each step."""
    encoder = RowsBatchEncoder(columns)
    out: list[bytes] = []
    pending = iter(rows)
    while True:
        if encoder.full:
            out.append(encoder.finish(done=False))
            continue
        row = next(pending, None)
        if row is None:
            out.append(encoder.finish(done=True))
            return out
        encoder.add_row(*row)


def test_g5_batching_matches_capture() -> None:
    """300 (INTEGER, TEXT) rows: PART after 170 rows (4112 bytes >= 4096), then DONE."""
    rows = [((INTEGER, TEXT), (i, f"row-{i}")) for i in range(1, 301)]
    batch1, batch2 = _batches(("id", "v"), rows)
    assert batch1 == _rebuild("G5", 1, _g5_batch(1, 170, done=False))
    assert batch2 == _rebuild("G5", 2, _g5_batch(171, 300, done=True))


def test_g21_batching_matches_capture() -> None:
    """One oversize row closes a PART batch; the DONE batch after it has no rows."""
    row = ((BLOB, INTEGER), (bytes(1 << 20), 1 << 20))
    part, done = _batches(("b", "length(b)"), [row])
    expected = EXPECTED["G21"][1]
    assert isinstance(expected, Rebuilt)
    assert part == _rebuild("G21", 1, expected.message)
    assert done == _captured("G21", 2)


def test_g6_interrupt_mid_stream() -> None:
    """G6 in full: INTERRUPT after a PART batch is read only after the DONE batch."""
    client, server = ClientConnection(), ServerConnection()
    server.receive_data(client.handshake())
    assert isinstance(server.next_event(), Handshake)
    query = QuerySqlRequest(0, "SELECT n FROM t")
    server.receive_data(client.send(query))
    assert server.next_event() == query
    batches = [RowsResponse(("n",), ((i,),), ((INTEGER,),), done=i == 27) for i in range(28)]
    client.receive_data(server.send(batches[0]))
    assert client.next_event() == batches[0]
    assert client.state is ClientState.STREAMING

    interrupt = client.send(InterruptRequest(0))
    assert interrupt == _captured("G6", 0)
    assert client.state is ClientState.INTERRUPTING
    server.receive_data(interrupt)
    # The server is still streaming: the INTERRUPT waits in its buffer.
    for batch in batches[1:-1]:
        assert server.next_event() is NEED_DATA
        client.receive_data(server.send(batch))
    assert server.state is ServerState.RESPONDING
    client.receive_data(server.send(batches[-1]))
    assert server.state is ServerState.IDLE
    assert server.next_event() == InterruptRequest(0)
    empty = server.send(EmptyResponse())
    assert empty == _captured("G6", 1)

    assert client.next_event() is NEED_DATA  # every ROWS batch was discarded
    client.receive_data(empty)
    assert client.next_event() == EmptyResponse()
    assert client.state is ClientState.IDLE


def test_g17_bad_version_breaks_server() -> None:
    captured = _captured("G17", 0)
    assert EXPECTED["G17"][0] == Raw(captured)
    assert TRANSCRIPTS["G17"]["messages"][1]["hex"] == ""  # the server said nothing
    server = ServerConnection()
    server.receive_data(captured)
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    assert server.state is ServerState.BROKEN
    with pytest.raises(LocalProtocolError):
        server.send(EmptyResponse())  # nothing may be sent back
    with pytest.raises(LocalProtocolError):
        server.next_event()


def test_g17_version_is_checked_before_anything_else() -> None:
    """Even the version word alone is enough to refuse the connection."""
    server = ServerConnection()
    server.receive_data(_captured("G17", 0)[:7])
    assert server.next_event() is NEED_DATA
    server.receive_data(b"\x00")
    with pytest.raises(RemoteProtocolError):
        server.next_event()


def test_g16_legacy_refused_when_disabled() -> None:
    server = ServerConnection(accept_legacy=False)
    server.receive_data(_captured("G16", 0))
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    assert server.state is ServerState.BROKEN


def test_g16_legacy_server_body_is_address_only() -> None:
    body = _captured("G16", 2)[8:]
    assert ServerResponse.decode_body(body, legacy=True) == ServerResponse(0, ADDR1)
    assert ServerResponse(NODE1, ADDR1).encode_body(legacy=True) == body
    # Read as protocol v1 the same bytes are garbage: the legacy flag matters.
    assert ServerResponse.decode_body(body) != ServerResponse(0, ADDR1)


def test_g18_schema1_params() -> None:
    request = EXPECTED["G18"][0]
    assert isinstance(request, ExecSqlRequest)
    assert request.schema == 1
    # The same request without wide_params goes as schema 0 and is one byte shorter
    # in the count, but the same number of words.
    narrow = ExecSqlRequest(request.db_id, request.sql, request.params)
    data = encode_message(narrow)
    assert data[5] == 0
    assert data[:4] == _captured("G18", 0)[:4]
    assert data != _captured("G18", 0)


def _filled(
    columns: tuple[str, ...], rows: list[tuple[Value, ...]], decltypes: tuple[str | None, ...]
) -> list[bytes]:
    """The same cut, by the server's fast path (plain values, types picked by §4.2)."""
    encoder = RowsBatchEncoder(columns, decltypes=decltypes)
    pending = iter(rows)
    out: list[bytes] = []
    while not encoder.fill(pending):
        out.append(encoder.finish(done=False))
    out.append(encoder.finish(done=True))
    return out


def test_g5_and_g21_batching_of_the_fast_path_match_captures() -> None:
    rows: list[tuple[Value, ...]] = [(i, f"row-{i}") for i in range(1, 301)]
    batch1, batch2 = _filled(("id", "v"), rows, ("INTEGER", "TEXT"))
    assert batch1 == _rebuild("G5", 1, _g5_batch(1, 170, done=False))
    assert batch2 == _rebuild("G5", 2, _g5_batch(171, 300, done=True))
    big = (bytes(1 << 20), 1 << 20)
    assert _filled(("b", "length(b)"), [big], (None, None)) == _batches(
        ("b", "length(b)"), [((BLOB, INTEGER), big)]
    )
