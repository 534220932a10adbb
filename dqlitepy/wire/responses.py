"""Every response of the dqlite protocol (``protocol.md`` §3), as frozen records (:mod:`.record`).

A server sends these; a client decodes them by type code through
:data:`~.messages.RESPONSES`.  Section numbers in the docstrings cite
``docs/protocol.md``.
"""

from __future__ import annotations

from typing import ClassVar

from .auth import MECHANISM_HMAC_SHA256, NONCE_SIZE
from .body import Message, check_nonce
from .codec import Reader, Value, Writer
from .constants import DEFAULT_HEARTBEAT_TIMEOUT_MS, NodeRole, ResponseType
from .errors import LocalProtocolError, RemoteProtocolError
from .record import record

__all__ = [
    "ChallengeResponse",
    "DbResponse",
    "EmptyResponse",
    "FailureResponse",
    "FilesResponse",
    "MetadataResponse",
    "NodeInfo",
    "Response",
    "ResultResponse",
    "RowsResponse",
    "ServerResponse",
    "ServersResponse",
    "StmtResponse",
    "WelcomeResponse",
]


class Response(Message):
    """A message sent by a server."""

    __slots__ = ()
    TYPE: ClassVar[ResponseType]


@record
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


@record
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


@record
class WelcomeResponse(Response):
    """WELCOME (§3.3): the server's heartbeat timeout in milliseconds."""

    TYPE: ClassVar[ResponseType] = ResponseType.WELCOME
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT_MS

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.heartbeat_timeout)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> WelcomeResponse:
        return cls(r.u64())


@record
class NodeInfo:
    """One member of a cluster, as listed by SERVERS."""

    id: int
    address: str
    role: int = NodeRole.VOTER


@record
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


@record
class DbResponse(Response):
    """DB (§3.5): the id of the opened database (always 0)."""

    TYPE: ClassVar[ResponseType] = ResponseType.DB
    db_id: int = 0

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u32_pair(self.db_id, 0)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> DbResponse:
        return cls(r.u32_pair()[0])


@record
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


@record
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


@record
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


@record
class EmptyResponse(Response):
    """EMPTY (§3.9): success with nothing to say (one zero word)."""

    TYPE: ClassVar[ResponseType] = ResponseType.EMPTY

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(0)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> EmptyResponse:
        r.u64()
        return cls()


@record
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


@record
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


@record
class ChallengeResponse(Response):
    """CHALLENGE (dqlitepy, ``wire/auth.py``): the node's nonce, good for one proof."""

    TYPE: ClassVar[ResponseType] = ResponseType.CHALLENGE
    nonce: bytes
    mechanism: int = MECHANISM_HMAC_SHA256

    def _encode(self, w: Writer, legacy: bool) -> None:
        check_nonce("the nonce", self.nonce)
        w.u64(self.mechanism)
        w.raw(bytes(self.nonce))

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> ChallengeResponse:
        mechanism = r.u64()
        return cls(r.raw(NONCE_SIZE), mechanism)
