"""Round trips of every message through the encoder and both connection objects.

Hypothesis builds every request class of :data:`REQUESTS` and every response
class of :data:`RESPONSES` with values of every wire type (int64 extremes,
inf/-0.0/nan, text and blobs around multiples of 8, 0..300 parameters, 0..40
columns).  Each is encoded with :func:`encode_message` and decoded by a
:class:`ServerConnection` (requests) or a :class:`ClientConnection` with a
matching pending request (responses); the result must equal the original.  The
same events must come out whether the bytes arrive whole, one byte at a time or
coalesced and cut at random boundaries.

The second half tests the client state machine: multi-batch QUERY streams,
INTERRUPT mid-stream, illegal transitions, mismatched and unsolicited responses.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dqlitepy.wire import (
    MARKER_DONE,
    MARKER_PART,
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
    RequestType,
    Response,
    ResponseType,
    ResultResponse,
    RowsResponse,
    ServerConnection,
    ServerResponse,
    ServersResponse,
    ServerState,
    StmtResponse,
    TransferRequest,
    ValueTuple,
    ValueType,
    WeightRequest,
    WelcomeResponse,
    encode_message,
)
from dqlitepy.wire.codec import Reader, Value, Writer
from dqlitepy.wire.record import fields as record_fields
from dqlitepy.wire.record import is_record

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(SETTINGS, max_examples=25)

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1

# ------------------------------------------------------------------ comparisons


def canon(obj: object) -> object:
    """A comparable form: floats by bit pattern (nan == nan, -0.0 != 0.0)."""
    if isinstance(obj, float):
        return ("float", struct.pack("<d", obj))
    if is_record(obj):
        fields = ((name, canon(getattr(obj, name))) for name in record_fields(obj))
        return (type(obj).__name__, *fields)
    if isinstance(obj, (tuple, list)):
        return tuple(canon(x) for x in obj)
    if isinstance(obj, bool):
        return ("bool", obj)
    return obj


def assert_same(a: object, b: object) -> None:
    assert canon(a) == canon(b), f"{a!r} != {b!r}"


def test_canon_distinguishes() -> None:
    """The comparison itself can fail where it must."""
    assert canon(math.nan) == canon(float("nan"))
    assert canon(0.0) != canon(-0.0)
    assert canon(ValueTuple((2,), (1.0,))) != canon(ValueTuple((2,), (1.5,)))
    assert canon(ValueTuple((1,), (1,))) != canon(ValueTuple((11,), (1,)))


# ------------------------------------------------------------------- strategies

u64 = st.one_of(st.sampled_from([0, 1, U64_MAX, 1 << 63]), st.integers(0, U64_MAX))
u32 = st.one_of(st.sampled_from([0, U32_MAX]), st.integers(0, U32_MAX))
nonces = st.binary(min_size=32, max_size=32)  # AUTH nonces and MACs (wire/auth.py)
i64 = st.one_of(
    st.sampled_from([INT64_MIN, INT64_MAX, 0, -1, 1]), st.integers(INT64_MIN, INT64_MAX)
)
floats = st.one_of(
    st.sampled_from([math.inf, -math.inf, -0.0, 0.0, math.nan, 5e-324, 1.7976931348623157e308]),
    st.floats(allow_nan=True, allow_infinity=True),
)

_NO_NUL = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
#: Byte lengths around multiples of 8 (text adds a NUL, so 7 and 8 differ).
_EDGE_LENGTHS = st.sampled_from([0, 1, 6, 7, 8, 9, 15, 16, 17, 23, 24, 25, 63, 64, 65])
texts = st.one_of(
    _EDGE_LENGTHS.map(lambda n: "x" * n),
    _EDGE_LENGTHS.flatmap(
        lambda n: st.text(st.characters(min_codepoint=1, max_codepoint=127), min_size=n, max_size=n)
    ),
    st.text(_NO_NUL, max_size=40),
    st.sampled_from(["wörld", "héllo", "日本語テキスト", "🙂" * 2, "é" * 4]),
)
blobs = st.one_of(
    _EDGE_LENGTHS.flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    st.binary(max_size=40),
)

VALUES: dict[int, st.SearchStrategy[Any]] = {
    ValueType.INTEGER: i64,
    ValueType.FLOAT: floats,
    ValueType.TEXT: texts,
    ValueType.BLOB: blobs,
    ValueType.NULL: st.none(),
    ValueType.UNIXTIME: i64,
    ValueType.ISO8601: texts,
    ValueType.BOOLEAN: u64,
}


def test_value_strategies_cover_every_type() -> None:
    assert set(VALUES) == {int(t) for t in ValueType}


typed_values = st.sampled_from(sorted(VALUES)).flatmap(lambda t: VALUES[t].map(lambda v: (t, v)))


@st.composite
def value_tuples(draw: st.DrawFn, sizes: st.SearchStrategy[int]) -> ValueTuple:
    n = draw(sizes)
    if n <= 16:
        pairs = draw(st.lists(typed_values, min_size=n, max_size=n))
    else:
        # Long tuples repeat a short random pattern: every type still shows up,
        # and a failure shrinks in seconds instead of minutes.
        pattern = draw(st.lists(typed_values, min_size=1, max_size=8))
        pairs = [pattern[i % len(pattern)] for i in range(n)]
    return ValueTuple(tuple(t for t, _ in pairs), tuple(v for _, v in pairs))


#: 0..10 params most of the time, and the schema 0/1 boundary around 255.
param_sizes = st.one_of(st.integers(0, 10), st.sampled_from([254, 255, 256, 257, 300]))


@st.composite
def params_and_width(draw: st.DrawFn) -> tuple[ValueTuple, bool]:
    params = draw(value_tuples(param_sizes))
    # More than 255 values always travel as schema 1; the decoder reports that as
    # wide_params=True, so the canonical object says so too.
    wide = True if len(params) > 255 else draw(st.booleans())
    return params, wide


@st.composite
def _stmt_request(draw: st.DrawFn, cls: type[ExecRequest] | type[QueryRequest]) -> Request:
    params, wide = draw(params_and_width())
    return cls(draw(u32), draw(u32), params, wide)


@st.composite
def _sql_request(draw: st.DrawFn, cls: type[ExecSqlRequest] | type[QuerySqlRequest]) -> Request:
    params, wide = draw(params_and_width())
    return cls(draw(u64), draw(texts), params, wide)


REQUEST_STRATEGIES: dict[int, st.SearchStrategy[Request]] = {
    RequestType.LEADER: st.just(LeaderRequest()),
    RequestType.CLIENT: st.builds(ClientRequest, u64),
    RequestType.HEARTBEAT: st.builds(HeartbeatRequest, u64),
    RequestType.OPEN: st.builds(OpenRequest, texts, u64, texts),
    RequestType.PREPARE: st.builds(PrepareRequest, u64, texts, st.booleans()),
    RequestType.EXEC: _stmt_request(ExecRequest),
    RequestType.QUERY: _stmt_request(QueryRequest),
    RequestType.FINALIZE: st.builds(FinalizeRequest, u32, u32),
    RequestType.EXEC_SQL: _sql_request(ExecSqlRequest),
    RequestType.QUERY_SQL: _sql_request(QuerySqlRequest),
    RequestType.INTERRUPT: st.builds(InterruptRequest, u64),
    RequestType.CONNECT: st.builds(ConnectRequest, u64, texts),
    RequestType.ADD: st.builds(AddRequest, u64, texts),
    RequestType.ASSIGN: st.builds(AssignRequest, u64, st.one_of(st.none(), u64)),
    RequestType.REMOVE: st.builds(RemoveRequest, u64),
    RequestType.DUMP: st.builds(DumpRequest, texts),
    RequestType.CLUSTER: st.builds(ClusterRequest, u64),
    RequestType.TRANSFER: st.builds(TransferRequest, u64),
    RequestType.DESCRIBE: st.just(DescribeRequest(0)),  # any other format is refused
    RequestType.AUTH_CHALLENGE: st.builds(AuthChallengeRequest, u64),
    RequestType.AUTH_PROOF: st.builds(AuthProofRequest, nonces, nonces, u64),
    RequestType.WEIGHT: st.builds(WeightRequest, u64),
}


@st.composite
def rows_responses(
    draw: st.DrawFn,
    columns: tuple[str, ...] | None = None,
    done: bool | None = None,
    max_columns: int = 40,
) -> RowsResponse:
    if columns is None:
        n_cols = draw(st.one_of(st.integers(0, max_columns), st.sampled_from([1, 2, 15, 16, 17])))
        columns = tuple(draw(st.lists(texts, min_size=n_cols, max_size=n_cols)))
    n_cols = len(columns)
    n_rows = 0 if n_cols == 0 else draw(st.integers(0, 4))
    rows, row_types = [], []
    for _ in range(n_rows):
        pairs = draw(st.lists(typed_values, min_size=n_cols, max_size=n_cols))
        row_types.append(tuple(t for t, _ in pairs))
        rows.append(tuple(v for _, v in pairs))
    if done is None:
        done = draw(st.booleans())
    return RowsResponse(columns, tuple(rows), tuple(row_types), done)


@st.composite
def servers_responses(draw: st.DrawFn) -> ServersResponse:
    fmt = draw(st.sampled_from([0, 1]))
    roles = st.just(0) if fmt == 0 else st.one_of(st.sampled_from([0, 1, 2]), u64)
    nodes = draw(st.lists(st.builds(NodeInfo, u64, texts, roles), max_size=5))
    return ServersResponse(tuple(nodes), fmt)


RESPONSE_STRATEGIES: dict[int, st.SearchStrategy[Response]] = {
    ResponseType.FAILURE: st.builds(FailureResponse, u64, texts),
    ResponseType.SERVER: st.builds(ServerResponse, u64, texts),
    ResponseType.WELCOME: st.builds(WelcomeResponse, u64),
    ResponseType.SERVERS: servers_responses(),
    ResponseType.DB: st.builds(DbResponse, u32),
    ResponseType.STMT: st.builds(StmtResponse, u32, u32, u64, st.one_of(st.none(), u64)),
    # RESULT is read as int64 (go-dqlite converts both values), so its domain is int64.
    ResponseType.RESULT: st.builds(ResultResponse, i64, i64),
    ResponseType.ROWS: rows_responses(),
    ResponseType.EMPTY: st.just(EmptyResponse()),
    ResponseType.FILES: st.builds(
        FilesResponse,
        st.lists(
            st.tuples(texts, st.one_of(blobs, st.binary(min_size=100, max_size=300))),
            max_size=4,
        ).map(tuple),
    ),
    ResponseType.METADATA: st.builds(MetadataResponse, u64, u64),
    ResponseType.CHALLENGE: st.builds(ChallengeResponse, nonces, u64),
}


def test_strategies_cover_every_message_class() -> None:
    assert set(REQUEST_STRATEGIES) == set(REQUESTS)
    assert set(RESPONSE_STRATEGIES) == set(RESPONSES)


requests = st.sampled_from(sorted(REQUEST_STRATEGIES)).flatmap(lambda t: REQUEST_STRATEGIES[t])
responses = st.sampled_from(sorted(RESPONSE_STRATEGIES)).flatmap(lambda t: RESPONSE_STRATEGIES[t])


def pending_for(response: Response) -> Request:
    """A request that ``response`` may answer (and that tells how to decode it)."""
    if isinstance(response, ServersResponse):
        return ClusterRequest(response.format)
    if isinstance(response, StmtResponse):
        return PrepareRequest(0, "SELECT 1", with_offset=response.offset is not None)
    table: dict[type[Response], Request] = {
        FailureResponse: LeaderRequest(),
        ServerResponse: LeaderRequest(),
        WelcomeResponse: ClientRequest(0),
        DbResponse: OpenRequest("db"),
        ResultResponse: ExecSqlRequest(0, "INSERT"),
        RowsResponse: QuerySqlRequest(0, "SELECT"),
        EmptyResponse: FinalizeRequest(0, 0),
        FilesResponse: DumpRequest("db"),
        MetadataResponse: DescribeRequest(0),
        ChallengeResponse: AuthChallengeRequest(),
    }
    return table[type(response)]


# ------------------------------------------------------------------ connection helpers


def server_after_handshake(legacy: bool = False) -> ServerConnection:
    server = ServerConnection()
    version = PROTOCOL_VERSION_LEGACY if legacy else PROTOCOL_VERSION
    server.receive_data(struct.pack("<Q", version))
    assert server.next_event() == Handshake(version)
    return server


def client_after_handshake(legacy: bool = False) -> ClientConnection:
    client = ClientConnection()
    client.handshake(PROTOCOL_VERSION_LEGACY if legacy else PROTOCOL_VERSION)
    return client


def server_events(chunks: Iterable[bytes]) -> list[object]:
    """Feed chunks to a server, answering each request, and collect the events."""
    server = server_after_handshake()
    events: list[object] = []
    for chunk in chunks:
        server.receive_data(chunk)
        while (event := server.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, ConnectRequest):
                return events  # the rest of the stream belongs to raft
            server.send(FailureResponse(1, "answered"))
    assert server.state is ServerState.IDLE
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# ---------------------------------------------------------------- request round trips


@SETTINGS
@given(requests)
def test_request_round_trip(request: Request) -> None:
    data = encode_message(request)
    assert len(data) % 8 == 0 and len(data) > 8
    assert struct.unpack_from("<I", data)[0] == len(data) // 8 - 1
    assert data[4] == request.TYPE and data[5] == request.schema
    assert_same(server_events([data]), [request])


@FEW
@given(st.sampled_from(sorted(REQUEST_STRATEGIES)).flatmap(lambda t: REQUEST_STRATEGIES[t]))
def test_request_body_round_trip_via_class_table(request: Request) -> None:
    body = request.encode_body()
    assert_same(REQUESTS[request.TYPE].decode_body(body, request.schema), request)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 9, 255, 256, 300])
def test_params_schema_boundary(n: int) -> None:
    params = ValueTuple((ValueType.INTEGER,) * n, tuple(range(n)))
    for cls in (ExecSqlRequest, QuerySqlRequest):
        request = cls(0, "x", params, wide_params=n > 255)
        data = encode_message(request)
        assert data[5] == (1 if n > 255 else 0)
        header = 1 + n if n <= 255 else 4 + n
        sql_and_db = 16
        expected_len = 8 + sql_and_db + (0 if n == 0 else (header + 7) // 8 * 8 + 8 * n)
        assert len(data) == expected_len
        assert_same(server_events([data]), [request])
    with pytest.raises(LocalProtocolError):
        Writer().params(ValueTuple((ValueType.NULL,) * 256, (None,) * 256), 0)


@SETTINGS
@given(st.lists(requests, min_size=1, max_size=6), st.lists(st.integers(0, 1 << 20), max_size=12))
def test_request_feeding_is_chunking_independent(reqs: list[Request], cuts: list[int]) -> None:
    # CONNECT ends the client protocol: keep it last if present.
    connects: list[Request] = [r for r in reqs if isinstance(r, ConnectRequest)]
    reqs = [r for r in reqs if not isinstance(r, ConnectRequest)] + connects[:1]
    data = b"".join(encode_message(r) for r in reqs)
    whole = server_events([data])
    assert_same(whole, reqs)
    assert_same(server_events(split(data, cuts)), whole)
    assert_same(server_events(data[i : i + 1] for i in range(len(data))), whole)


# --------------------------------------------------------------- response round trips


def client_events(
    response_bytes: bytes, pending: Request, chunks: Callable[[bytes], Iterable[bytes]]
) -> list[Response]:
    client = client_after_handshake()
    client.send(pending)
    events: list[Response] = []
    for chunk in chunks(response_bytes):
        client.receive_data(chunk)
        while (event := client.next_event()) is not NEED_DATA:
            events.append(event)
    return events


@SETTINGS
@given(responses, st.lists(st.integers(0, 1 << 20), max_size=6))
def test_response_round_trip(response: Response, cuts: list[int]) -> None:
    data = encode_message(response)
    assert len(data) % 8 == 0 and len(data) > 8
    assert data[4] == response.TYPE
    pending = pending_for(response)
    whole = client_events(data, pending, lambda d: [d])
    assert_same(whole, [response])
    assert_same(client_events(data, pending, lambda d: split(d, cuts)), whole)
    if len(data) < 2000:
        one_by_one = client_events(data, pending, lambda d: (d[i : i + 1] for i in range(len(d))))
        assert_same(one_by_one, whole)


@FEW
@given(st.builds(ServerResponse, u64, texts))
def test_legacy_server_response(response: ServerResponse) -> None:
    client = client_after_handshake(legacy=True)
    client.send(LeaderRequest())
    server = server_after_handshake(legacy=True)
    server.receive_data(encode_message(LeaderRequest()))
    assert server.next_event() == LeaderRequest()
    data = server.send(response)
    assert data == encode_message(response, legacy=True)
    assert len(data) == 8 + (len(response.address.encode()) // 8 + 1) * 8  # no id word
    client.receive_data(data)
    # The legacy body has no id: it comes back as 0.
    assert client.next_event() == ServerResponse(0, response.address)


@FEW
@given(
    st.lists(texts, min_size=0, max_size=20).map(tuple),
    st.integers(1, 4),
    st.data(),
    st.lists(st.integers(0, 1 << 20), max_size=10),
)
def test_multi_batch_rows_stream(
    columns: tuple[str, ...], n_batches: int, data: st.DataObject, cuts: list[int]
) -> None:
    batches = [
        data.draw(rows_responses(columns=columns, done=i == n_batches - 1))
        for i in range(n_batches)
    ]
    stream = b"".join(encode_message(b) for b in batches)
    pending = QueryRequest(0, 0)
    assert_same(client_events(stream, pending, lambda d: [d]), batches)
    assert_same(client_events(stream, pending, lambda d: split(d, cuts)), batches)


@pytest.mark.parametrize("n_cols", [0, 1, 2, 3, 15, 16, 17, 18, 31, 32, 33, 40])
def test_row_header_nibble_packing(n_cols: int) -> None:
    types = tuple(sorted(VALUES)[i % len(VALUES)] for i in range(n_cols))
    sample: dict[int, Value] = {1: -5, 2: 0.5, 3: "t", 4: b"b", 5: None, 9: 7, 10: "", 11: 1}
    values = tuple(sample[t] for t in types)
    rows = (values,) if n_cols else ()
    response = RowsResponse(tuple(f"c{i}" for i in range(n_cols)), rows, (types,) if n_cols else ())
    body = response.encode_body()
    r = Reader(body)
    assert r.u64() == n_cols
    for i in range(n_cols):
        assert r.text() == f"c{i}"
    if n_cols:
        header_len = ((n_cols + 1) // 2 + 7) // 8 * 8
        assert header_len == (8 if n_cols <= 16 else 16 if n_cols <= 32 else 24)
        header = r.raw(header_len)
        for i, t in enumerate(types):
            assert (header[i // 2] >> (4 * (i % 2))) & 0xF == t
        assert not any(header[(n_cols + 1) // 2 :])
        if n_cols % 2:
            assert header[n_cols // 2] >> 4 == 0
    assert body[-8:] == struct.pack("<Q", MARKER_DONE)
    assert_same(RowsResponse.decode_body(body), response)


def test_markers() -> None:
    part = RowsResponse(("a",), done=False).encode_body()
    done = RowsResponse(("a",), done=True).encode_body()
    assert part[-8:] == struct.pack("<Q", MARKER_PART) == b"\xee" * 8
    assert done[-8:] == struct.pack("<Q", MARKER_DONE) == b"\xff" * 8


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 16, 17])
def test_text_and_blob_padding(n: int) -> None:
    w = Writer()
    w.text("a" * n)
    assert len(w.buf) == (n // 8 + 1) * 8  # always a NUL, then zeros to a word
    assert w.buf[n:] == bytes(len(w.buf) - n)
    w = Writer()
    w.blob(b"\x01" * n)
    assert len(w.buf) == 8 + (n + 7) // 8 * 8
    assert w.buf[8 + n :] == bytes(len(w.buf) - 8 - n)


@FEW
@given(st.binary(max_size=64).filter(lambda b: b"\x00" not in b))
def test_invalid_utf8_text_survives_decode_encode(raw: bytes) -> None:
    body = raw + bytes(8 - len(raw) % 8)
    text = Reader(body).text()
    w = Writer()
    w.text(text)
    assert w.getvalue() == body


def test_text_with_nul_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        encode_message(OpenRequest("a\x00b"))
    with pytest.raises(LocalProtocolError):
        encode_message(FailureResponse(1, "\x00"))


@pytest.mark.parametrize(
    "message",
    [
        ClientRequest(1 << 64),
        ClientRequest(-(1 << 63) - 1),
        ExecRequest(1 << 32, 0),
        FinalizeRequest(0, -1),
        DbResponse(1 << 32),
        ExecSqlRequest(0, "x", ValueTuple((ValueType.INTEGER,), (1 << 63,))),
        ExecSqlRequest(0, "x", ValueTuple((ValueType.BOOLEAN,), (1 << 64,))),
        ExecSqlRequest(0, "x", ValueTuple((ValueType.TEXT,), (b"bytes",))),
        ExecSqlRequest(0, "x", ValueTuple((7,), (1,))),
        OpenRequest("\ud800"),
        DescribeRequest(1),
    ],
)
def test_unencodable_values_raise_local_protocol_error(message: Request | Response) -> None:
    """Out-of-range or mistyped fields are refused, never silently truncated."""
    with pytest.raises(LocalProtocolError):
        encode_message(message)


def test_row_with_no_columns_is_refused() -> None:
    # A row of zero values has no bytes at all: it would vanish on the wire.
    with pytest.raises(LocalProtocolError):
        encode_message(RowsResponse((), ((),), ((),)))


def test_value_tuple_of_infers_types() -> None:
    vt = ValueTuple.of([True, 3, 1.5, "s", b"b", bytearray(b"x"), memoryview(b"m"), None])
    assert vt.types == (1, 1, 2, 3, 4, 4, 4, 5)
    assert vt.values == (1, 3, 1.5, "s", b"b", b"x", b"m", None)
    assert all(type(v) is not bool for v in vt.values)
    with pytest.raises(LocalProtocolError):
        ValueTuple.of([object()])
    with pytest.raises(LocalProtocolError):
        ValueTuple((1, 2), (1,))


# -------------------------------------------------------------- client state machine


def _streaming_client() -> ClientConnection:
    client = client_after_handshake()
    client.send(QuerySqlRequest(0, "SELECT x"))
    client.receive_data(encode_message(RowsResponse(("x",), ((1,),), ((1,),), done=False)))
    assert isinstance(client.next_event(), RowsResponse)
    assert client.state is ClientState.STREAMING
    return client


def test_multi_batch_query_states() -> None:
    client = client_after_handshake()
    assert client.state is ClientState.IDLE
    client.send(QueryRequest(0, 1, ValueTuple((1,), (5,))))
    assert client.state is ClientState.AWAITING
    batches = [
        RowsResponse(("x",), ((1,),), ((1,),), done=False),
        RowsResponse(("x",), ((2,),), ((1,),), done=False),
        RowsResponse(("x",), (), (), done=True),
    ]
    states = []
    for batch in batches:
        client.receive_data(encode_message(batch))
        assert client.next_event() == batch
        states.append(client.state)
    assert states == [ClientState.STREAMING, ClientState.STREAMING, ClientState.IDLE]
    # The connection is usable again.
    client.send(FinalizeRequest(0, 1))
    client.receive_data(encode_message(EmptyResponse()))
    assert client.next_event() == EmptyResponse()


def test_failure_ends_a_stream() -> None:
    """dqlite can fail while building a later batch (§3.1): FAILURE after PART."""
    client = _streaming_client()
    failure = FailureResponse(1, "integer overflow")
    client.receive_data(encode_message(failure))
    assert client.next_event() == failure
    assert client.state is ClientState.IDLE
    client.send(LeaderRequest())
    client.receive_data(encode_message(ServerResponse(1, "a")))
    assert client.next_event() == ServerResponse(1, "a")


@pytest.mark.parametrize(
    "discarded",
    [
        [],
        [RowsResponse(("x",), ((2,),), ((1,),), done=True)],
        [
            RowsResponse(("x",), ((2,),), ((1,),), done=False),
            RowsResponse(("x",), ((3,),), ((1,),), done=False),
            RowsResponse(("x",), (), (), done=True),
        ],
        [RowsResponse(("x",), (), (), done=False), FailureResponse(1, "boom")],
        [FailureResponse(1005, "x")],
    ],
)
@pytest.mark.parametrize("coalesced", [False, True])
def test_interrupt_mid_stream(discarded: list[Response], coalesced: bool) -> None:
    client = _streaming_client()
    assert client.send(InterruptRequest(0)) == encode_message(InterruptRequest(0))
    assert client.state is ClientState.INTERRUPTING
    chunks = [encode_message(m) for m in [*discarded, EmptyResponse()]]
    if coalesced:
        chunks = [b"".join(chunks)]
    events: list[Response] = []
    for chunk in chunks:
        client.receive_data(chunk)
        while (event := client.next_event()) is not NEED_DATA:
            events.append(event)
    assert events == [EmptyResponse()]
    assert client.state is ClientState.IDLE


def test_interrupt_broken_by_unexpected_response() -> None:
    client = _streaming_client()
    client.send(InterruptRequest(0))
    client.receive_data(encode_message(ResultResponse(1, 1)))
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    assert client.state is ClientState.BROKEN


def test_interrupt_when_idle_expects_empty() -> None:
    client = client_after_handshake()
    client.send(InterruptRequest(0))
    assert client.state is ClientState.AWAITING
    client.receive_data(encode_message(EmptyResponse()))
    assert client.next_event() == EmptyResponse()
    assert client.state is ClientState.IDLE


def test_illegal_client_transitions() -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError):
        client.send(LeaderRequest())  # before the handshake
    assert client.state is ClientState.START
    with pytest.raises(LocalProtocolError):
        client.handshake(2)
    assert client.state is ClientState.START
    client.handshake()
    with pytest.raises(LocalProtocolError):
        client.handshake()  # twice
    with pytest.raises(LocalProtocolError):
        client.send(ConnectRequest(1, "a"))
    assert client.state is ClientState.IDLE
    client.send(LeaderRequest())
    with pytest.raises(LocalProtocolError):
        client.send(LeaderRequest())  # one request at a time
    with pytest.raises(LocalProtocolError):
        client.send(InterruptRequest(0))  # not streaming yet
    assert client.state is ClientState.AWAITING

    streaming = _streaming_client()
    with pytest.raises(LocalProtocolError):
        streaming.send(QuerySqlRequest(0, "SELECT 2"))
    assert streaming.state is ClientState.STREAMING
    streaming.send(InterruptRequest(0))
    with pytest.raises(LocalProtocolError):
        streaming.send(InterruptRequest(0))
    assert streaming.state is ClientState.INTERRUPTING


def test_unencodable_request_leaves_state_alone() -> None:
    client = client_after_handshake()
    with pytest.raises(LocalProtocolError):
        client.send(OpenRequest("a\x00"))
    assert client.state is ClientState.IDLE
    client.send(OpenRequest("a"))
    client.receive_data(encode_message(DbResponse(0)))
    assert client.next_event() == DbResponse(0)


def test_illegal_server_transitions() -> None:
    server = ServerConnection()
    with pytest.raises(LocalProtocolError):
        server.send(EmptyResponse())  # no handshake, no request
    with pytest.raises(LocalProtocolError):
        server.trailing_data()
    server = server_after_handshake()
    with pytest.raises(LocalProtocolError):
        server.send(EmptyResponse())  # no request yet
    server.receive_data(
        encode_message(QuerySqlRequest(0, "SELECT")) + encode_message(LeaderRequest())
    )
    assert isinstance(server.next_event(), QuerySqlRequest)
    server.send(RowsResponse(("a",), done=False))
    assert server.next_event() is NEED_DATA  # LEADER waits until the stream ends
    server.send(RowsResponse(("a",), done=True))
    assert server.next_event() == LeaderRequest()


#: Per §2.1 and §3: which responses answer each request (FAILURE answers all).
SPEC_ANSWERS: dict[int, set[int]] = {
    RequestType.LEADER: {ResponseType.SERVER},
    RequestType.CLIENT: {ResponseType.WELCOME},
    # No 1.11.1 answer; the pre-1.0 server answered SERVERS, and EMPTY is allowed.
    RequestType.HEARTBEAT: {ResponseType.SERVERS, ResponseType.EMPTY},
    RequestType.OPEN: {ResponseType.DB},
    RequestType.PREPARE: {ResponseType.STMT},
    RequestType.EXEC: {ResponseType.RESULT},
    RequestType.QUERY: {ResponseType.ROWS},
    RequestType.FINALIZE: {ResponseType.EMPTY},
    RequestType.EXEC_SQL: {ResponseType.RESULT},
    RequestType.QUERY_SQL: {ResponseType.ROWS},
    RequestType.INTERRUPT: {ResponseType.EMPTY},
    RequestType.ADD: {ResponseType.EMPTY},
    RequestType.ASSIGN: {ResponseType.EMPTY},
    RequestType.REMOVE: {ResponseType.EMPTY},
    RequestType.DUMP: {ResponseType.FILES},
    RequestType.CLUSTER: {ResponseType.SERVERS},
    RequestType.TRANSFER: {ResponseType.EMPTY},
    RequestType.DESCRIBE: {ResponseType.METADATA},
    RequestType.WEIGHT: {ResponseType.EMPTY},
    # dqlitepy's own (wire/auth.py).
    RequestType.AUTH_CHALLENGE: {ResponseType.CHALLENGE},
    RequestType.AUTH_PROOF: {ResponseType.EMPTY},
}

SAMPLE_REQUESTS: dict[int, Request] = {
    RequestType.LEADER: LeaderRequest(),
    RequestType.CLIENT: ClientRequest(0),
    RequestType.HEARTBEAT: HeartbeatRequest(0),
    RequestType.OPEN: OpenRequest("db"),
    RequestType.PREPARE: PrepareRequest(0, "SELECT 1"),
    RequestType.EXEC: ExecRequest(0, 0),
    RequestType.QUERY: QueryRequest(0, 0),
    RequestType.FINALIZE: FinalizeRequest(0, 0),
    RequestType.EXEC_SQL: ExecSqlRequest(0, "x"),
    RequestType.QUERY_SQL: QuerySqlRequest(0, "x"),
    RequestType.INTERRUPT: InterruptRequest(0),
    RequestType.ADD: AddRequest(2, "b"),
    RequestType.ASSIGN: AssignRequest(2, 1),
    RequestType.REMOVE: RemoveRequest(2),
    RequestType.DUMP: DumpRequest("db"),
    RequestType.CLUSTER: ClusterRequest(1),
    RequestType.TRANSFER: TransferRequest(0),
    RequestType.DESCRIBE: DescribeRequest(0),
    RequestType.WEIGHT: WeightRequest(1),
    RequestType.AUTH_CHALLENGE: AuthChallengeRequest(),
    RequestType.AUTH_PROOF: AuthProofRequest(bytes(32), bytes(32)),
}

SAMPLE_RESPONSES: dict[int, Response] = {
    ResponseType.FAILURE: FailureResponse(1, "x"),
    ResponseType.SERVER: ServerResponse(1, "a"),
    ResponseType.WELCOME: WelcomeResponse(),
    ResponseType.SERVERS: ServersResponse((NodeInfo(1, "a", 0),)),
    ResponseType.DB: DbResponse(0),
    ResponseType.STMT: StmtResponse(0, 0, 0),
    ResponseType.RESULT: ResultResponse(0, 0),
    ResponseType.ROWS: RowsResponse(("a",)),
    ResponseType.EMPTY: EmptyResponse(),
    ResponseType.FILES: FilesResponse((("a", b""),)),
    ResponseType.METADATA: MetadataResponse(0, 0),
    ResponseType.CHALLENGE: ChallengeResponse(bytes(32)),
}

PAIRS = [(q, a) for q in sorted(SAMPLE_REQUESTS) for a in sorted(SAMPLE_RESPONSES)]


@pytest.mark.parametrize(("req_type", "resp_type"), PAIRS)
def test_response_must_answer_pending_request(req_type: int, resp_type: int) -> None:
    client = client_after_handshake()
    client.send(SAMPLE_REQUESTS[req_type])
    response = SAMPLE_RESPONSES[resp_type]
    client.receive_data(encode_message(response))
    if resp_type == ResponseType.FAILURE or resp_type in SPEC_ANSWERS[req_type]:
        assert client.next_event() == response
        assert client.state is ClientState.IDLE
    else:
        with pytest.raises(RemoteProtocolError):
            client.next_event()
        assert client.state is ClientState.BROKEN
        with pytest.raises(LocalProtocolError):
            client.next_event()


def test_db_in_answer_to_leader_breaks() -> None:
    client = client_after_handshake()
    client.send(LeaderRequest())
    client.receive_data(encode_message(DbResponse(0)))
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    assert client.state is ClientState.BROKEN
    with pytest.raises(LocalProtocolError):
        client.send(LeaderRequest())


@pytest.mark.parametrize("data", [encode_message(EmptyResponse()), b"\x01"])
def test_unsolicited_data_breaks(data: bytes) -> None:
    client = client_after_handshake()
    client.receive_data(data)
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    assert client.state is ClientState.BROKEN


def test_data_before_handshake_breaks() -> None:
    client = ClientConnection()
    client.receive_data(encode_message(EmptyResponse()))
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    assert client.state is ClientState.BROKEN


def test_extra_response_after_answer_breaks() -> None:
    client = client_after_handshake()
    client.send(LeaderRequest())
    client.receive_data(encode_message(ServerResponse(1, "a")) + encode_message(EmptyResponse()))
    assert client.next_event() == ServerResponse(1, "a")
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    assert client.state is ClientState.BROKEN


def test_other_response_mid_stream_breaks() -> None:
    client = _streaming_client()
    client.receive_data(encode_message(EmptyResponse()))
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    assert client.state is ClientState.BROKEN


def test_unknown_response_type_breaks() -> None:
    client = client_after_handshake()
    client.send(LeaderRequest())
    client.receive_data(struct.pack("<IBBH", 1, 42, 0, 0) + bytes(8))
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    assert client.state is ClientState.BROKEN


def test_server_connect_hands_over() -> None:
    server = server_after_handshake()
    raft = b"\x02" + bytes(7) + b"raft!"
    server.receive_data(encode_message(ConnectRequest(5, "n5")) + raft)
    assert server.next_event() == ConnectRequest(5, "n5")
    assert server.state is ServerState.HANDED_OVER
    assert server.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        server.send(EmptyResponse())
    assert server.trailing_data() == raft


def test_server_bad_request_then_usable() -> None:
    server = server_after_handshake()
    server.receive_data(
        struct.pack("<IBBH", 1, 99, 0, 0) + bytes(8) + encode_message(LeaderRequest())
    )
    event = server.next_event()
    assert isinstance(event, BadRequest)
    assert (event.type, event.code) == (99, 1005)
    assert server.state is ServerState.RESPONDING
    server.send(FailureResponse(event.code, event.message))
    assert server.next_event() == LeaderRequest()


def test_protocol_errors_share_base() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
