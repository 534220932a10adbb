"""Garbage in, protocol errors out: fuzzing both ends of the wire layer.

Random bytes and mutated valid messages (bit flips, truncation, changed word
counts, types and schemas) are fed to :class:`ServerConnection` and to
:class:`ClientConnection` (with each kind of request pending).  Nothing but a
:class:`~dqlitepy.wire.ProtocolError` may come out, and every request or
response that does decode must survive a re-encode/decode unchanged.  Targeted
tests cover the limits: oversized headers, 0-word messages, unknown request
types and malformed bodies that the server must answer with FAILURE 1005
(``BadRequest``) while the stream stays usable.

Coverage-guided fuzzing with atheris (not a dependency of this project)::

    pip install atheris
    python - <<'EOF'
    import sys
    import atheris
    sys.path[:0] = ["tests", "tests/wire"]
    with atheris.instrument_imports():
        from test_wire_fuzz import fuzz_server
    atheris.Setup(sys.argv, fuzz_server)
    atheris.Fuzz()
    EOF

``fuzz_server(data)`` and ``fuzz_client(data)`` take arbitrary bytes; the first
byte picks the handshake (server) or the pending request (client), the rest is
fed as received data.  They return normally for every input the wire layer
handles correctly and raise (an ``AssertionError`` or an unexpected exception)
otherwise.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dqlitepy.wire import (
    NEED_DATA,
    PROTOCOL_VERSION,
    PROTOCOL_VERSION_LEGACY,
    REQUESTS,
    RESPONSES,
    AddRequest,
    AssignRequest,
    AuthChallengeRequest,
    AuthProofRequest,
    BadRequest,
    ChallengeResponse,
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
    HeartbeatRequest,
    InterruptRequest,
    LeaderRequest,
    LocalProtocolError,
    MessageTooLarge,
    MetadataResponse,
    NodeInfo,
    OpenRequest,
    PrepareRequest,
    ProtocolError,
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
from dqlitepy.wire.record import fields as record_fields
from dqlitepy.wire.record import is_record

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

FUZZ_MAX_MESSAGE = 1 << 16
_V1 = struct.pack("<Q", PROTOCOL_VERSION)
_LEGACY = struct.pack("<Q", PROTOCOL_VERSION_LEGACY)
_HEADER = struct.Struct("<IBBH")


def _canon(obj: object) -> object:
    """A comparable form: floats by bit pattern so that nan equals itself."""
    if isinstance(obj, float):
        return struct.pack("<d", obj)
    if is_record(obj):
        fields = (_canon(getattr(obj, name)) for name in record_fields(obj))
        return (type(obj).__name__, *fields)
    if isinstance(obj, (tuple, list)):
        return tuple(_canon(x) for x in obj)
    return obj


def _check_request_reencodes(request: Request) -> None:
    """Whatever the server decodes can be encoded again, to the same request."""
    if isinstance(request, DescribeRequest) and request.format != 0:
        with pytest.raises(LocalProtocolError):  # never sent: it crashes dqlite
            encode_message(request)
        return
    body = request.encode_body()
    again = REQUESTS[request.TYPE].decode_body(body, request.schema)
    assert _canon(again) == _canon(request), (request, again)


def _check_response_reencodes(response: Response, legacy: bool, fmt: int) -> None:
    body = response.encode_body(legacy=legacy)
    if isinstance(response, ServersResponse):
        again: Response = ServersResponse.decode_body(body, response.schema, format=fmt)
    else:
        again = RESPONSES[response.TYPE].decode_body(  # type: ignore[assignment]
            body, response.schema, legacy=legacy
        )
    if isinstance(response, ServerResponse) and legacy:
        assert again == ServerResponse(0, response.address)
    else:
        assert _canon(again) == _canon(response), (response, again)


# ------------------------------------------------------------------ entry points


def fuzz_server(data: bytes) -> None:
    """Feed arbitrary bytes to a server connection; fail only on a wire-layer bug.

    ``data[0] % 3`` picks what goes first: a version-1 handshake, a legacy
    handshake, or nothing (the data itself must then hold the version word).
    """
    if not data:
        return
    prefix = (_V1, _LEGACY, b"")[data[0] % 3]
    server = ServerConnection(FUZZ_MAX_MESSAGE)
    server.receive_data(prefix + data[1:])
    while True:
        try:
            event = server.next_event()
        except RemoteProtocolError:
            assert server.state is ServerState.BROKEN
            return
        if event is NEED_DATA:
            return
        if isinstance(event, Handshake):
            assert event.version in (PROTOCOL_VERSION, PROTOCOL_VERSION_LEGACY)
            continue
        if isinstance(event, BadRequest):
            assert event.code == 1005
            server.send(FailureResponse(event.code, event.message))
            continue
        assert isinstance(event, Request)
        _check_request_reencodes(event)
        if isinstance(event, ConnectRequest):
            assert server.state is ServerState.HANDED_OVER
            server.trailing_data()
            return
        server.send(FailureResponse(1, "fuzz"))


#: One request of each type, for the client's pending request.
PENDING: tuple[Request, ...] = (
    LeaderRequest(),
    ClientRequest(0),
    HeartbeatRequest(0),
    OpenRequest("db"),
    PrepareRequest(0, "SELECT 1"),
    PrepareRequest(0, "SELECT 1", with_offset=True),
    ExecRequest(0, 0),
    QueryRequest(0, 0),
    FinalizeRequest(0, 0),
    ExecSqlRequest(0, "x"),
    QuerySqlRequest(0, "x"),
    InterruptRequest(0),
    AddRequest(2, "b"),
    AssignRequest(2, 1),
    RemoveRequest(2),
    DumpRequest("db"),
    ClusterRequest(0),
    ClusterRequest(1),
    TransferRequest(0),
    DescribeRequest(0),
    WeightRequest(1),
    AuthChallengeRequest(),
)


def fuzz_client(data: bytes) -> None:
    """Feed arbitrary bytes to a client with a pending request; fail only on a bug.

    ``data[0]`` picks the pending request (and the legacy handshake for odd
    values above 127).
    """
    if not data:
        return
    legacy = data[0] >= 128 and data[0] & 1 == 1
    pending = PENDING[data[0] % len(PENDING)]
    fmt = pending.format if isinstance(pending, ClusterRequest) else 1
    client = ClientConnection(FUZZ_MAX_MESSAGE)
    client.handshake(PROTOCOL_VERSION_LEGACY if legacy else PROTOCOL_VERSION)
    client.send(pending)
    client.receive_data(data[1:])
    while True:
        try:
            event = client.next_event()
        except RemoteProtocolError:
            assert client.state is ClientState.BROKEN
            return
        if event is NEED_DATA:
            return
        assert isinstance(event, Response)
        _check_response_reencodes(event, legacy, fmt)
        if client.state is ClientState.IDLE:
            # Any byte after a complete answer is unsolicited.
            if len(data) > 1:
                try:
                    client.next_event()
                except RemoteProtocolError:
                    assert client.state is ClientState.BROKEN
            return


# ------------------------------------------------------------------ corpus


def _vt(*pairs: tuple[int, object]) -> ValueTuple:
    return ValueTuple(tuple(t for t, _ in pairs), tuple(v for _, v in pairs))  # type: ignore[misc]


EVERY_TYPE = _vt(
    (1, -(1 << 63)),
    (2, float("nan")),
    (3, "héllo wörld"),
    (4, b"\x01\x02\x03"),
    (5, None),
    (9, 1700000000),
    (10, "2024-02-29 12:34:56"),
    (11, (1 << 64) - 1),
)

REQUEST_CORPUS: tuple[Request, ...] = (
    LeaderRequest(),
    ClientRequest(123),
    HeartbeatRequest(99),
    OpenRequest("demo", 0, "volatile"),
    PrepareRequest(0, "SELECT * FROM t WHERE a = ?", with_offset=True),
    ExecRequest(1, 2, EVERY_TYPE),
    QueryRequest(0, 7, _vt((3, "x" * 8), (4, b""))),
    FinalizeRequest(0, 1),
    ExecSqlRequest(0, "INSERT INTO t VALUES (?, ?)", EVERY_TYPE),
    ExecSqlRequest(0, "INSERT", _vt((1, 77)), wide_params=True),
    QuerySqlRequest(0, "SELECT ?" * 3, _vt(*[(1, i) for i in range(9)])),
    QuerySqlRequest(0, "SELECT 1"),
    InterruptRequest(0),
    ConnectRequest(5, "127.0.0.1:9005"),
    AddRequest(3, "127.0.0.1:9003"),
    AssignRequest(3, 2),
    AssignRequest(3, None),
    RemoveRequest(3),
    DumpRequest("demo"),
    ClusterRequest(1),
    TransferRequest(0),
    DescribeRequest(0),
    WeightRequest(7),
    AuthChallengeRequest(),
    AuthProofRequest(bytes(range(32)), bytes(range(32, 64))),
)

RESPONSE_CORPUS: tuple[Response, ...] = (
    FailureResponse(1005, "not an error"),
    ServerResponse(0x2DC171858C3155BE, "127.0.0.1:9001"),
    WelcomeResponse(15000),
    ServersResponse((NodeInfo(1, "a:1", 0), NodeInfo(2, "b:2", 2)), format=1),
    ServersResponse((NodeInfo(1, "a:1", 0),), format=0),
    DbResponse(0),
    StmtResponse(0, 1, 2),
    StmtResponse(0, 1, 2, offset=17),
    ResultResponse(-1, 3),
    RowsResponse(
        ("i", "f", "s", "b", "n", "t", "d", "x"),
        ((1, 2.5, "s", b"\xde\xad", None, 5, "2023-01-01", 1),),
        ((1, 2, 3, 4, 5, 9, 10, 11),),
        done=True,
    ),
    RowsResponse(tuple(f"c{i}" for i in range(17)), ((None,) * 17,), ((5,) * 17,), done=False),
    RowsResponse(("a",), (), (), done=True),
    EmptyResponse(),
    FilesResponse((("demo", b"SQLite format 3\x00" + bytes(5)), ("demo-wal", b"\x01\x02"))),
    MetadataResponse(0, 7),
    ChallengeResponse(bytes(range(64, 96))),
)

_PENDING_INDEX = {type(r): i for i, r in reversed(list(enumerate(PENDING)))}
_ANSWERS: dict[type[Response], type[Request]] = {
    FailureResponse: LeaderRequest,
    ServerResponse: LeaderRequest,
    WelcomeResponse: ClientRequest,
    ServersResponse: ClusterRequest,
    DbResponse: OpenRequest,
    StmtResponse: PrepareRequest,
    ResultResponse: ExecSqlRequest,
    RowsResponse: QuerySqlRequest,
    EmptyResponse: FinalizeRequest,
    FilesResponse: DumpRequest,
    MetadataResponse: DescribeRequest,
    ChallengeResponse: AuthChallengeRequest,
}


def _selector_for(response: Response) -> int:
    """The fuzz_client selector byte whose pending request ``response`` answers."""
    if isinstance(response, ServersResponse):
        return PENDING.index(ClusterRequest(response.format))
    if isinstance(response, StmtResponse):
        return PENDING.index(PrepareRequest(0, "SELECT 1", response.offset is not None))
    return _PENDING_INDEX[_ANSWERS[type(response)]]


def test_corpus_is_valid() -> None:
    """Unmutated, the corpus decodes cleanly through the entry points."""
    assert {type(r) for r in REQUEST_CORPUS} == set(REQUESTS.values())
    assert {type(r) for r in RESPONSE_CORPUS} == set(RESPONSES.values())
    for request in REQUEST_CORPUS:
        server = ServerConnection()
        server.receive_data(_V1 + encode_message(request))
        assert server.next_event() == Handshake(PROTOCOL_VERSION)
        assert _canon(server.next_event()) == _canon(request)
        fuzz_server(b"\x00" + encode_message(request))
    for response in RESPONSE_CORPUS:
        selector = _selector_for(response)
        client = ClientConnection()
        client.handshake()
        client.send(PENDING[selector])
        client.receive_data(encode_message(response))
        assert _canon(client.next_event()) == _canon(response)
        fuzz_client(bytes([selector]) + encode_message(response))


# ------------------------------------------------------------------ mutations


@st.composite
def mutated(draw: st.DrawFn, corpus: tuple[Request | Response, ...]) -> bytes:
    data = bytearray(encode_message(draw(st.sampled_from(corpus))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "truncate", "words", "type", "schema", "cut"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) * 8 - 1))
            data[i // 8] ^= 1 << (i % 8)
        elif op == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "cut" and len(data) >= 16:
            # Remove whole words from the body but keep the header's count.
            start = 8 + 8 * draw(st.integers(0, (len(data) - 8) // 8 - 1))
            del data[start : start + 8 * draw(st.integers(1, 3))]
        elif len(data) >= 8:
            words, type_, schema, extra = _HEADER.unpack_from(data)
            if op == "words":
                words = draw(
                    st.one_of(
                        st.integers(max(0, words - 3), min(words + 3, (1 << 32) - 1)),
                        st.integers(0, (1 << 32) - 1),
                    )
                )
            elif op == "type":
                type_ = draw(st.integers(0, 255))
            else:
                schema = draw(st.integers(0, 255))
            _HEADER.pack_into(data, 0, words, type_, schema, extra)
    return bytes(data)


@SETTINGS
@given(st.binary(max_size=300))
def test_server_random_bytes(data: bytes) -> None:
    fuzz_server(data)


@SETTINGS
@given(st.binary(max_size=300))
def test_client_random_bytes(data: bytes) -> None:
    fuzz_client(data)


@SETTINGS
@given(st.sampled_from([0, 1]), st.lists(mutated(REQUEST_CORPUS), min_size=1, max_size=3))
def test_server_mutated_requests(handshake: int, messages: list[bytes]) -> None:
    fuzz_server(bytes([handshake]) + b"".join(messages))


@SETTINGS
@given(st.integers(0, 255), mutated(RESPONSE_CORPUS))
def test_client_mutated_responses(selector: int, message: bytes) -> None:
    fuzz_client(bytes([selector]) + message)


@SETTINGS
@given(st.sampled_from(RESPONSE_CORPUS), st.data())
def test_client_mutated_matching_responses(response: Response, data: st.DataObject) -> None:
    """Mutations of a response that does answer the pending request."""
    message = data.draw(mutated((response,)))
    fuzz_client(bytes([_selector_for(response)]) + message)


# ------------------------------------------------------------------ limits


def _server() -> ServerConnection:
    server = ServerConnection(max_message_size=1 << 20)
    server.receive_data(_V1)
    assert server.next_event() == Handshake(PROTOCOL_VERSION)
    return server


def test_oversized_header_raises_at_once() -> None:
    server = _server()
    server.receive_data(_HEADER.pack(0xFFFF_FFFF, 8, 0, 0))
    with pytest.raises(MessageTooLarge):
        server.next_event()
    assert server.state is ServerState.BROKEN


def test_oversized_header_boundary() -> None:
    limit_words = (1 << 20) // 8
    server = _server()
    server.receive_data(_HEADER.pack(limit_words, 8, 0, 0))
    assert server.next_event() is NEED_DATA  # exactly the limit: wait for the body
    server = _server()
    server.receive_data(_HEADER.pack(limit_words + 1, 8, 0, 0)[:7])
    assert server.next_event() is NEED_DATA  # the header is not complete yet
    server.receive_data(b"\x00")
    with pytest.raises(MessageTooLarge):
        server.next_event()


def test_client_oversized_response_raises_at_once() -> None:
    client = ClientConnection(max_message_size=1 << 20)
    client.handshake()
    client.send(DumpRequest("db"))
    client.receive_data(_HEADER.pack(0xFFFF_FFFF, 9, 0, 0))
    with pytest.raises(MessageTooLarge):
        client.next_event()
    assert client.state is ClientState.BROKEN


@pytest.mark.parametrize("type_", [0, 2, 8, 19, 20, 255])
def test_zero_word_message_breaks_server(type_: int) -> None:
    server = _server()
    server.receive_data(_HEADER.pack(0, type_, 0, 0) + encode_message(LeaderRequest()))
    with pytest.raises(RemoteProtocolError) as info:
        server.next_event()
    assert type(info.value) is RemoteProtocolError
    assert not info.value.recoverable
    assert server.state is ServerState.BROKEN
    with pytest.raises(LocalProtocolError):
        server.next_event()


def test_zero_word_message_breaks_client() -> None:
    client = ClientConnection()
    client.handshake()
    client.send(FinalizeRequest(0, 0))
    client.receive_data(_HEADER.pack(0, 8, 0, 0))
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    assert client.state is ClientState.BROKEN


def _assert_bad_request_then_usable(message: bytes, type_: int) -> BadRequest:
    server = _server()
    follow_up = OpenRequest("next")
    server.receive_data(message + encode_message(follow_up))
    event = server.next_event()
    assert isinstance(event, BadRequest), event
    assert event.type == type_
    assert event.code == 1005
    assert event.message
    assert server.state is ServerState.RESPONDING
    assert server.next_event() is NEED_DATA  # nothing is read before the answer
    failure = server.send(FailureResponse(event.code, event.message))
    assert failure[4] == FailureResponse.TYPE
    assert server.next_event() == follow_up
    return event


@pytest.mark.parametrize("type_", [t for t in range(20, 256) if t not in REQUESTS])
def test_unknown_request_type_is_bad_request(type_: int) -> None:
    event = _assert_bad_request_then_usable(_HEADER.pack(1, type_, 3, 0) + bytes(8), type_)
    assert event.schema == 3


def test_heartbeat_decodes() -> None:
    server = _server()
    server.receive_data(_HEADER.pack(1, 2, 0, 0) + struct.pack("<Q", 12345))
    assert server.next_event() == HeartbeatRequest(12345)


def _body(*parts: bytes) -> bytes:
    body = b"".join(parts)
    assert len(body) % 8 == 0
    return body


def _msg(type_: int, body: bytes, schema: int = 0) -> bytes:
    return _HEADER.pack(len(body) // 8, type_, schema, 0) + body


U64 = struct.Struct("<Q").pack

_SQL_X = b"x\x00" + bytes(6)

#: Whole messages whose body cannot be decoded, by what is wrong with them.
MALFORMED: dict[str, bytes] = {
    "text without NUL": _msg(3, b"abcdefgh"),  # OPEN whose name runs to the end
    "OPEN with only a name": _msg(3, b"demo\x00\x00\x00\x00"),
    "DUMP name without NUL": _msg(15, b"x" * 16),
    "PREPARE without SQL": _msg(4, U64(0)),
    "ADD without address": _msg(12, U64(3)),
    "blob overruns the body": _msg(
        8, _body(U64(0), _SQL_X, bytes([1, 4]) + bytes(6), U64(1000), bytes(8))
    ),
    "param count beyond the body (schema 0)": _msg(
        8, _body(U64(0), _SQL_X, bytes([200, 1]) + bytes(6), U64(1))
    ),
    "more param types than values": _msg(
        9, _body(U64(0), _SQL_X, bytes([3, 1, 1, 1]) + bytes(4), U64(1))
    ),
    "param count beyond the body (schema 1)": _msg(
        5, _body(bytes(8), struct.pack("<I", 0xFFFF_FFFF) + bytes(4)), schema=1
    ),
    "unknown param type 12": _msg(8, _body(U64(0), _SQL_X, bytes([1, 12]) + bytes(6), U64(1))),
    "param type 0 (G18 read as schema 0)": _msg(
        8, _body(U64(0), _SQL_X, bytes([1, 0]) + bytes(6), U64(1))
    ),
    "text param without NUL": _msg(8, _body(U64(0), _SQL_X, bytes([1, 3]) + bytes(6), b"y" * 8)),
    "unknown schema on EXEC": _msg(5, bytes(8), schema=2),
    "unknown schema on PREPARE": _msg(4, _body(U64(0), _SQL_X), schema=7),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_body_is_bad_request(name: str) -> None:
    message = MALFORMED[name]
    _assert_bad_request_then_usable(message, message[4])


def test_trailing_words_are_ignored() -> None:
    server = _server()
    server.receive_data(_msg(0, U64(0) + U64(0xDEAD)))
    assert server.next_event() == LeaderRequest()


def test_explicit_zero_param_count_is_no_params() -> None:
    server = _server()
    server.receive_data(_msg(8, _body(U64(0), _SQL_X, bytes(8))))
    assert server.next_event() == ExecSqlRequest(0, "x")


def test_errors_are_all_protocol_errors() -> None:
    for exc in (LocalProtocolError, RemoteProtocolError, MessageTooLarge):
        assert issubclass(exc, ProtocolError)
