"""Every request and response of the dqlite protocol, as frozen dataclasses.

Each message knows its type code, encodes its body (:meth:`Message.encode_body`)
and decodes one (:meth:`Message.decode_body`).  Request and response codes are
separate number spaces (§1.3); :data:`REQUESTS` and :data:`RESPONSES` map codes
to classes.  Layouts follow ``protocol.md`` §2 and §3, section numbers cited
below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .auth import MECHANISM_HMAC_SHA256, NONCE_SIZE
from .codec import Reader, Value, ValueTuple, Writer
from .constants import (
    DEFAULT_HEARTBEAT_TIMEOUT_MS,
    NodeRole,
    RequestType,
    ResponseType,
)
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "REQUESTS",
    "RESPONSES",
    "AddRequest",
    "AssignRequest",
    "AuthChallengeRequest",
    "AuthProofRequest",
    "ChallengeResponse",
    "ClientRequest",
    "ClusterRequest",
    "ConnectRequest",
    "DbResponse",
    "DescribeRequest",
    "DumpRequest",
    "EmptyResponse",
    "ExecRequest",
    "ExecSqlRequest",
    "FailureResponse",
    "FilesResponse",
    "FinalizeRequest",
    "HeartbeatRequest",
    "InterruptRequest",
    "LeaderRequest",
    "Message",
    "MetadataResponse",
    "NodeInfo",
    "OpenRequest",
    "PrepareRequest",
    "QueryRequest",
    "QuerySqlRequest",
    "RemoveRequest",
    "Request",
    "Response",
    "ResultResponse",
    "RowsResponse",
    "ServerResponse",
    "ServersResponse",
    "StmtResponse",
    "TransferRequest",
    "WeightRequest",
    "WelcomeResponse",
]


class Message:
    """Base of every message: a type code, a schema, and a body codec."""

    __slots__ = ()
    TYPE: ClassVar[int]

    @property
    def schema(self) -> int:
        """The schema byte this message is sent with; 0 for most messages."""
        return 0

    def encode_body(self, *, legacy: bool = False) -> bytes:
        """Return the body bytes (a whole number of words).

        Args:
            legacy: the connection used the legacy handshake (changes SERVER only).
        """
        w = Writer()
        self._encode(w, legacy)
        if not w.buf:
            # A 0-word body aborts a 1.11.1 server (§1.3): every message has a word.
            raise LocalProtocolError(f"{type(self).__name__} would have an empty body")
        return w.getvalue()

    def _encode(self, w: Writer, legacy: bool) -> None:
        raise NotImplementedError

    @classmethod
    def decode_body(cls, body: bytes, schema: int = 0, *, legacy: bool = False) -> Message:
        """Decode a body of this message type.

        Raises:
            RemoteProtocolError: the body does not hold a valid message.
        """
        return cls._decode(Reader(body), schema, legacy)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> Message:
        raise NotImplementedError


# --------------------------------------------------------------------------- requests


class Request(Message):
    """A message sent by a client."""

    __slots__ = ()
    TYPE: ClassVar[RequestType]


@dataclass(frozen=True, slots=True)
class LeaderRequest(Request):
    """LEADER (§2.2): ask which node is the leader; the body word is unused."""

    TYPE: ClassVar[RequestType] = RequestType.LEADER

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(0)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> LeaderRequest:
        r.u64()
        return cls()


@dataclass(frozen=True, slots=True)
class ClientRequest(Request):
    """CLIENT (§2.2): register a client; answered by WELCOME."""

    TYPE: ClassVar[RequestType] = RequestType.CLIENT
    client_id: int = 0

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.client_id)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> ClientRequest:
        return cls(r.u64())


@dataclass(frozen=True, slots=True)
class HeartbeatRequest(Request):
    """HEARTBEAT (§2.4): never answered by 1.11.1; clients should not send it."""

    TYPE: ClassVar[RequestType] = RequestType.HEARTBEAT
    timestamp: int = 0

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.timestamp)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> HeartbeatRequest:
        return cls(r.u64())


@dataclass(frozen=True, slots=True)
class OpenRequest(Request):
    """OPEN (§2.2): open or create a database.

    dqlite uses only the name; dqlitepy servers also read a lock timeout from
    the upper half of ``flags`` (see ``OPEN_BUSY_TIMEOUT_SHIFT``).
    """

    TYPE: ClassVar[RequestType] = RequestType.OPEN
    name: str
    flags: int = 0
    vfs: str = "volatile"

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.text(self.name)
        w.u64(self.flags)
        w.text(self.vfs)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> OpenRequest:
        return cls(r.text(), r.u64(), r.text())


def _check_stmt_schema(schema: int) -> None:
    if schema not in (0, 1):
        raise RemoteProtocolError("unrecognized schema version", recoverable=True)


@dataclass(frozen=True, slots=True)
class PrepareRequest(Request):
    """PREPARE (§2.2): compile the first statement; schema 1 asks for the tail offset."""

    TYPE: ClassVar[RequestType] = RequestType.PREPARE
    db_id: int
    sql: str
    with_offset: bool = False

    @property
    def schema(self) -> int:
        return 1 if self.with_offset else 0

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.db_id)
        w.text(self.sql)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> PrepareRequest:
        _check_stmt_schema(schema)
        return cls(r.u64(), r.text(), schema == 1)


def _params_schema(params: ValueTuple, wide: bool) -> int:
    return 1 if wide or len(params) > 255 else 0


@dataclass(frozen=True, slots=True)
class _StatementRequest(Request):
    """EXEC and QUERY: a prepared statement's ids, then an optional parameter tuple."""

    db_id: int
    stmt_id: int
    params: ValueTuple = field(default_factory=ValueTuple)
    #: Send the 4-byte parameter count (schema 1) even for few parameters.
    wide_params: bool = False

    @property
    def schema(self) -> int:
        return _params_schema(self.params, self.wide_params)

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u32_pair(self.db_id, self.stmt_id)
        if self.params.types or self.wide_params:
            w.params(self.params, self.schema)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> _StatementRequest:
        _check_stmt_schema(schema)
        db_id, stmt_id = r.u32_pair()
        return cls(db_id, stmt_id, r.params(schema), schema == 1)


@dataclass(frozen=True, slots=True)
class ExecRequest(_StatementRequest):
    """EXEC (§2.2): run a prepared statement that yields no rows."""

    TYPE: ClassVar[RequestType] = RequestType.EXEC


@dataclass(frozen=True, slots=True)
class QueryRequest(_StatementRequest):
    """QUERY (§2.2): run a prepared statement and stream its rows."""

    TYPE: ClassVar[RequestType] = RequestType.QUERY


@dataclass(frozen=True, slots=True)
class FinalizeRequest(Request):
    """FINALIZE (§2.2): release a prepared statement."""

    TYPE: ClassVar[RequestType] = RequestType.FINALIZE
    db_id: int
    stmt_id: int

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u32_pair(self.db_id, self.stmt_id)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> FinalizeRequest:
        return cls(*r.u32_pair())


@dataclass(frozen=True, slots=True)
class _SqlRequest(Request):
    """EXEC_SQL and QUERY_SQL: a database id, SQL text, then an optional parameter tuple."""

    db_id: int
    sql: str
    params: ValueTuple = field(default_factory=ValueTuple)
    #: Send the 4-byte parameter count (schema 1) even for few parameters.
    wide_params: bool = False

    @property
    def schema(self) -> int:
        return _params_schema(self.params, self.wide_params)

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.db_id)
        w.text(self.sql)
        if self.params.types or self.wide_params:
            w.params(self.params, self.schema)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> _SqlRequest:
        _check_stmt_schema(schema)
        return cls(r.u64(), r.text(), r.params(schema), schema == 1)


@dataclass(frozen=True, slots=True)
class ExecSqlRequest(_SqlRequest):
    """EXEC_SQL (§2.2, §6.1): run every statement of a SQL text."""

    TYPE: ClassVar[RequestType] = RequestType.EXEC_SQL


@dataclass(frozen=True, slots=True)
class QuerySqlRequest(_SqlRequest):
    """QUERY_SQL (§2.2): run the first statement of a SQL text and stream its rows."""

    TYPE: ClassVar[RequestType] = RequestType.QUERY_SQL


@dataclass(frozen=True, slots=True)
class InterruptRequest(Request):
    """INTERRUPT (§2.2, §5.4): stop a streaming result; always answered by EMPTY."""

    TYPE: ClassVar[RequestType] = RequestType.INTERRUPT
    db_id: int = 0

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.db_id)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> InterruptRequest:
        return cls(r.u64())


@dataclass(frozen=True, slots=True)
class _NodeAddressRequest(Request):
    """CONNECT and ADD: a node id, then its address."""

    node_id: int
    address: str

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.node_id)
        w.text(self.address)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> _NodeAddressRequest:
        return cls(r.u64(), r.text())


@dataclass(frozen=True, slots=True)
class ConnectRequest(_NodeAddressRequest):
    """CONNECT (§2.2): a peer node hands this socket over to Raft; never answered.

    The id and address are the *sender's*.
    """

    TYPE: ClassVar[RequestType] = RequestType.CONNECT


@dataclass(frozen=True, slots=True)
class AddRequest(_NodeAddressRequest):
    """ADD (§2.2): add a node to the cluster as a spare."""

    TYPE: ClassVar[RequestType] = RequestType.ADD


@dataclass(frozen=True, slots=True)
class AssignRequest(Request):
    """ASSIGN (§2.2): change a node's role; ``role=None`` is the old one-word PROMOTE."""

    TYPE: ClassVar[RequestType] = RequestType.ASSIGN
    node_id: int
    role: int | None = NodeRole.VOTER

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.node_id)
        if self.role is not None:
            w.u64(self.role)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> AssignRequest:
        node_id = r.u64()
        return cls(node_id, None if r.at_end() else r.u64())


@dataclass(frozen=True, slots=True)
class RemoveRequest(Request):
    """REMOVE (§2.2): remove a node from the cluster."""

    TYPE: ClassVar[RequestType] = RequestType.REMOVE
    node_id: int

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.node_id)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> RemoveRequest:
        return cls(r.u64())


@dataclass(frozen=True, slots=True)
class DumpRequest(Request):
    """DUMP (§2.2, §5.6): fetch a database's files."""

    TYPE: ClassVar[RequestType] = RequestType.DUMP
    name: str

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.text(self.name)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> DumpRequest:
        return cls(r.text())


@dataclass(frozen=True, slots=True)
class ClusterRequest(Request):
    """CLUSTER (§2.2): list the members; format 1 includes roles."""

    TYPE: ClassVar[RequestType] = RequestType.CLUSTER
    format: int = 1

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.format)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> ClusterRequest:
        return cls(r.u64())


@dataclass(frozen=True, slots=True)
class TransferRequest(Request):
    """TRANSFER (§2.2): move leadership to a node (0: let Raft pick)."""

    TYPE: ClassVar[RequestType] = RequestType.TRANSFER
    node_id: int

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.node_id)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> TransferRequest:
        return cls(r.u64())


@dataclass(frozen=True, slots=True)
class DescribeRequest(Request):
    """DESCRIBE (§2.2): a node's failure domain and weight.

    Only format 0 exists; any other value crashes a 1.11.1 server, so the
    encoder refuses it.
    """

    TYPE: ClassVar[RequestType] = RequestType.DESCRIBE
    format: int = 0

    def _encode(self, w: Writer, legacy: bool) -> None:
        if self.format != 0:
            raise LocalProtocolError(f"DESCRIBE format must be 0, not {self.format!r}")
        w.u64(self.format)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> DescribeRequest:
        return cls(r.u64())


@dataclass(frozen=True, slots=True)
class WeightRequest(Request):
    """WEIGHT (§2.2): set the receiving node's weight, in memory."""

    TYPE: ClassVar[RequestType] = RequestType.WEIGHT
    weight: int

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.weight)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> WeightRequest:
        return cls(r.u64())


def _check_nonce(what: str, value: bytes) -> None:
    if len(value) != NONCE_SIZE:
        raise LocalProtocolError(f"{what} must have {NONCE_SIZE} bytes, not {len(value)}")


@dataclass(frozen=True, slots=True)
class AuthChallengeRequest(Request):
    """AUTH_CHALLENGE (dqlitepy, ``wire/auth.py``): ask for a nonce to prove the cluster key."""

    TYPE: ClassVar[RequestType] = RequestType.AUTH_CHALLENGE
    mechanism: int = MECHANISM_HMAC_SHA256

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.mechanism)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> AuthChallengeRequest:
        return cls(r.u64())


@dataclass(frozen=True, slots=True)
class AuthProofRequest(Request):
    """AUTH_PROOF (dqlitepy, ``wire/auth.py``): the client's nonce and its MAC of the challenge."""

    TYPE: ClassVar[RequestType] = RequestType.AUTH_PROOF
    client_nonce: bytes
    mac: bytes
    mechanism: int = MECHANISM_HMAC_SHA256

    def _encode(self, w: Writer, legacy: bool) -> None:
        _check_nonce("the client nonce", self.client_nonce)
        _check_nonce("the MAC", self.mac)
        w.u64(self.mechanism)
        w.raw(bytes(self.client_nonce))
        w.raw(bytes(self.mac))

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> AuthProofRequest:
        mechanism = r.u64()
        nonce = r.raw(NONCE_SIZE)
        return cls(nonce, r.raw(NONCE_SIZE), mechanism)


# -------------------------------------------------------------------------- responses


class Response(Message):
    """A message sent by a server."""

    __slots__ = ()
    TYPE: ClassVar[ResponseType]


@dataclass(frozen=True, slots=True)
class FailureResponse(Response):
    """FAILURE (§3.1): a SQLite or dqlite error code and its message."""

    TYPE: ClassVar[ResponseType] = ResponseType.FAILURE
    code: int
    message: str

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.code)
        w.text(self.message)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> FailureResponse:
        start = r.pos
        code, message = r.u64(), r.text()
        if r.remaining() < 8:
            return cls(code, message)
        # More than one text's worth of body: dqlite 1.11's failure met while a
        # ROWS batch was being built sends the half-built batch first, then the
        # real code and message (§3.1).  Recover those; keep the naive reading
        # if the body does not have that shape.
        r.pos = start
        recovered = _stale_batch_failure(r)
        return recovered if recovered is not None else cls(code, message)


def _stale_batch_failure(r: Reader) -> FailureResponse | None:
    try:
        n = r.u64()
        if n == 0 or n > r.remaining() // 8:
            return None
        for _ in range(n):
            r.text()
        while r.remaining() >= 16:
            at = r.pos
            try:
                code, message = r.u64(), r.text()
            except RemoteProtocolError:
                code, message = -1, ""
            if code >= 0 and r.remaining() == 0 and message:
                return FailureResponse(code, message)
            r.pos = at
            r.row(n)
    except RemoteProtocolError:
        return None
    return None


@dataclass(frozen=True, slots=True)
class ServerResponse(Response):
    """SERVER (§3.2): the leader's id and address; id 0 and "" when unknown.

    With the legacy handshake the body is the address alone.
    """

    TYPE: ClassVar[ResponseType] = ResponseType.SERVER
    id: int
    address: str

    def _encode(self, w: Writer, legacy: bool) -> None:
        if not legacy:
            w.u64(self.id)
        w.text(self.address)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> ServerResponse:
        if legacy:
            return cls(0, r.text())
        return cls(r.u64(), r.text())


@dataclass(frozen=True, slots=True)
class WelcomeResponse(Response):
    """WELCOME (§3.3): the server's heartbeat timeout in milliseconds."""

    TYPE: ClassVar[ResponseType] = ResponseType.WELCOME
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT_MS

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.heartbeat_timeout)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> WelcomeResponse:
        return cls(r.u64())


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One member of a cluster, as listed by SERVERS."""

    id: int
    address: str
    role: int = NodeRole.VOTER


@dataclass(frozen=True, slots=True)
class ServersResponse(Response):
    """SERVERS (§3.4): the cluster members; format 0 leaves the roles out."""

    TYPE: ClassVar[ResponseType] = ResponseType.SERVERS
    servers: tuple[NodeInfo, ...]
    format: int = 1

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(len(self.servers))
        for node in self.servers:
            w.u64(node.id)
            w.text(node.address)
            if self.format != 0:
                w.u64(node.role)

    @classmethod
    def decode_body(
        cls, body: bytes, schema: int = 0, *, legacy: bool = False, format: int = 1
    ) -> ServersResponse:
        """Decode a SERVERS body; the layout depends on the requested ``format``."""
        r = Reader(body)
        n = r.u64()
        if n > r.remaining() // 16:
            raise RemoteProtocolError(f"server count {n} overruns the body", recoverable=True)
        nodes = []
        for _ in range(n):
            node_id = r.u64()
            address = r.text()
            role = r.u64() if format != 0 else NodeRole.VOTER
            nodes.append(NodeInfo(node_id, address, role))
        return cls(tuple(nodes), format)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> ServersResponse:
        raise NotImplementedError  # decode_body is overridden


@dataclass(frozen=True, slots=True)
class DbResponse(Response):
    """DB (§3.5): the id of the opened database (always 0)."""

    TYPE: ClassVar[ResponseType] = ResponseType.DB
    db_id: int = 0

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u32_pair(self.db_id, 0)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> DbResponse:
        return cls(r.u32_pair()[0])


@dataclass(frozen=True, slots=True)
class StmtResponse(Response):
    """STMT (§3.6): a prepared statement's id and parameter count.

    ``offset`` (schema 1 only) is where the unparsed tail of the SQL begins.
    """

    TYPE: ClassVar[ResponseType] = ResponseType.STMT
    db_id: int
    stmt_id: int
    param_count: int
    offset: int | None = None

    @property
    def schema(self) -> int:
        return 0 if self.offset is None else 1

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u32_pair(self.db_id, self.stmt_id)
        w.u64(self.param_count)
        if self.offset is not None:
            w.u64(self.offset)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> StmtResponse:
        db_id, stmt_id = r.u32_pair()
        count = r.u64()
        offset = r.u64() if schema == 1 else None
        return cls(db_id, stmt_id, count, offset)


@dataclass(frozen=True, slots=True)
class ResultResponse(Response):
    """RESULT (§3.7): last insert rowid and rows changed by the last statement."""

    TYPE: ClassVar[ResponseType] = ResponseType.RESULT
    last_insert_id: int
    rows_affected: int

    def _encode(self, w: Writer, legacy: bool) -> None:
        # Both are sent as uint64; a negative rowid travels as two's complement.
        w.u64(self.last_insert_id)
        w.u64(self.rows_affected)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> ResultResponse:
        return cls(r.i64(), r.i64())


@dataclass(frozen=True, slots=True)
class RowsResponse(Response):
    """ROWS (§3.8): one batch of a result.

    Every batch repeats the column names.  ``done`` is True for the DONE marker
    (the result is complete) and False for PART (another batch follows).
    ``row_types[i]`` holds the wire type of each value of ``rows[i]``.
    """

    TYPE: ClassVar[ResponseType] = ResponseType.ROWS
    columns: tuple[str, ...]
    rows: tuple[tuple[Value, ...], ...] = ()
    row_types: tuple[tuple[int, ...], ...] = ()
    done: bool = True

    def _encode(self, w: Writer, legacy: bool) -> None:
        if len(self.rows) != len(self.row_types):
            raise LocalProtocolError("rows and row_types differ in length")
        w.u64(len(self.columns))
        for name in self.columns:
            w.text(name)
        for types, values in zip(self.row_types, self.rows, strict=True):
            if len(types) != len(self.columns):
                raise LocalProtocolError(
                    f"row of {len(types)} values in a result of {len(self.columns)} columns"
                )
            w.row(types, values)
        w.u64(0xFFFF_FFFF_FFFF_FFFF if self.done else 0xEEEE_EEEE_EEEE_EEEE)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> RowsResponse:
        n = r.u64()
        if n > r.remaining() // 8:
            raise RemoteProtocolError(f"column count {n} overruns the body", recoverable=True)
        columns = tuple(r.text() for _ in range(n))
        rows, row_types, done = r.rows(n)
        return cls(columns, tuple(rows), tuple(row_types), done)


@dataclass(frozen=True, slots=True)
class EmptyResponse(Response):
    """EMPTY (§3.9): success with nothing to say (one zero word)."""

    TYPE: ClassVar[ResponseType] = ResponseType.EMPTY

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(0)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> EmptyResponse:
        r.u64()
        return cls()


@dataclass(frozen=True, slots=True)
class FilesResponse(Response):
    """FILES (§3.10): named files; the raw bytes follow each size unpadded."""

    TYPE: ClassVar[ResponseType] = ResponseType.FILES
    files: tuple[tuple[str, bytes], ...]

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(len(self.files))
        for name, data in self.files:
            w.text(name)
            w.u64(len(data))
            w.raw(data)
        # dqlite's files are page multiples so it never pads; we pad a stray
        # length to keep the body a whole number of words.
        if len(w.buf) & 7:
            w.raw(bytes(8 - (len(w.buf) & 7)))

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> FilesResponse:
        n = r.u64()
        if n > r.remaining() // 16:
            raise RemoteProtocolError(f"file count {n} overruns the body", recoverable=True)
        files = []
        for _ in range(n):
            name = r.text()
            size = r.u64()
            files.append((name, r.raw(size)))
        return cls(tuple(files))


@dataclass(frozen=True, slots=True)
class MetadataResponse(Response):
    """METADATA (§3.11): the answering node's failure domain and weight."""

    TYPE: ClassVar[ResponseType] = ResponseType.METADATA
    failure_domain: int
    weight: int

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.failure_domain)
        w.u64(self.weight)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> MetadataResponse:
        return cls(r.u64(), r.u64())


@dataclass(frozen=True, slots=True)
class ChallengeResponse(Response):
    """CHALLENGE (dqlitepy, ``wire/auth.py``): the node's nonce, good for one proof."""

    TYPE: ClassVar[ResponseType] = ResponseType.CHALLENGE
    nonce: bytes
    mechanism: int = MECHANISM_HMAC_SHA256

    def _encode(self, w: Writer, legacy: bool) -> None:
        _check_nonce("the nonce", self.nonce)
        w.u64(self.mechanism)
        w.raw(bytes(self.nonce))

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> ChallengeResponse:
        mechanism = r.u64()
        return cls(r.raw(NONCE_SIZE), mechanism)


#: Request classes by type code.
REQUESTS: dict[int, type[Request]] = {
    cls.TYPE: cls
    for cls in (
        LeaderRequest,
        ClientRequest,
        HeartbeatRequest,
        OpenRequest,
        PrepareRequest,
        ExecRequest,
        QueryRequest,
        FinalizeRequest,
        ExecSqlRequest,
        QuerySqlRequest,
        InterruptRequest,
        ConnectRequest,
        AddRequest,
        AssignRequest,
        RemoveRequest,
        DumpRequest,
        ClusterRequest,
        TransferRequest,
        DescribeRequest,
        WeightRequest,
        AuthChallengeRequest,
        AuthProofRequest,
    )
}

#: Response classes by type code.
RESPONSES: dict[int, type[Response]] = {
    cls.TYPE: cls
    for cls in (
        FailureResponse,
        ServerResponse,
        WelcomeResponse,
        ServersResponse,
        DbResponse,
        StmtResponse,
        ResultResponse,
        RowsResponse,
        EmptyResponse,
        FilesResponse,
        MetadataResponse,
        ChallengeResponse,
    )
}
