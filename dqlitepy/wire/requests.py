"""Every request of the dqlite protocol (``protocol.md`` §2), as frozen records (:mod:`.record`).

A client sends these; a server decodes them by type code through
:data:`~.messages.REQUESTS`.  Section numbers in the docstrings cite
``docs/protocol.md``.
"""

from __future__ import annotations

import struct
from typing import ClassVar

from .auth import MECHANISM_HMAC_SHA256, NONCE_SIZE
from .body import Message, check_nonce
from .codec import Reader, Value, ValueTuple, Writer
from .constants import NodeRole, RequestType
from .errors import LocalProtocolError, RemoteProtocolError
from .record import field, record

__all__ = [
    "AddRequest",
    "AssignRequest",
    "AuthChallengeRequest",
    "AuthProofRequest",
    "ClientRequest",
    "ClusterRequest",
    "ConnectRequest",
    "DescribeRequest",
    "DumpRequest",
    "ExecRequest",
    "ExecSqlRequest",
    "FinalizeRequest",
    "HeartbeatRequest",
    "InterruptRequest",
    "LeaderRequest",
    "OpenRequest",
    "PrepareRequest",
    "QueryRequest",
    "QuerySqlRequest",
    "RemoveRequest",
    "Request",
    "TransferRequest",
    "WeightRequest",
]


class Request(Message):
    """A message sent by a client."""

    __slots__ = ()
    TYPE: ClassVar[RequestType]


@record
class LeaderRequest(Request):
    """LEADER (§2.2): ask which node is the leader; the body word is unused."""

    TYPE: ClassVar[RequestType] = RequestType.LEADER

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(0)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> LeaderRequest:
        r.u64()
        return cls()


@record
class ClientRequest(Request):
    """CLIENT (§2.2): register a client; answered by WELCOME."""

    TYPE: ClassVar[RequestType] = RequestType.CLIENT
    client_id: int = 0

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.client_id)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> ClientRequest:
        return cls(r.u64())


@record
class HeartbeatRequest(Request):
    """HEARTBEAT (§2.4): never answered by 1.11.1; clients should not send it."""

    TYPE: ClassVar[RequestType] = RequestType.HEARTBEAT
    timestamp: int = 0

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.timestamp)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> HeartbeatRequest:
        return cls(r.u64())


@record
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


@record
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


# The server's fast decoding of EXEC, QUERY, EXEC_SQL and QUERY_SQL: the requests
# every statement comes in.  Straight from the body's bytes, for the common case only
# (schema 0 parameters of type INTEGER, FLOAT, TEXT, NULL, UNIXTIME or ISO8601);
# anything else, malformed bodies included, gets None and goes the Reader's way,
# which gives the answer or the error, so both ways decode alike by construction.
_U64_AT = struct.Struct("<Q").unpack_from
_U32_PAIR_AT = struct.Struct("<II").unpack_from
_I64_AT = struct.Struct("<q").unpack_from
_F64_AT = struct.Struct("<d").unpack_from
_NO_PARAMS = ValueTuple()


def _fast_params(body: bytes, pos: int, end: int) -> ValueTuple | None:
    """A schema-0 parameter tuple starting at ``pos``, or None for the Reader's way."""
    if pos >= end:
        return _NO_PARAMS
    n = body[pos]
    header = (n + 8) & ~7  # the count byte and n types, padded to a word
    if pos + header > end:
        return None
    types = tuple(body[pos + 1 : pos + 1 + n])
    pos += header
    values: list[Value] = []
    for t in types:
        if t == 3 or t == 10:  # TEXT, ISO8601
            nul = body.find(b"\x00", pos, end)
            if nul < 0:
                return None
            values.append(body[pos:nul].decode("utf-8", "surrogateescape"))
            pos += ((nul - pos) | 7) + 1
            if pos > end:  # the last value's padding may be cut short
                pos = end
        elif pos + 8 > end:
            return None
        elif t == 1 or t == 9:  # INTEGER, UNIXTIME
            values.append(_I64_AT(body, pos)[0])
            pos += 8
        elif t == 2:  # FLOAT
            values.append(_F64_AT(body, pos)[0])
            pos += 8
        elif t == 5:  # NULL
            values.append(None)
            pos += 8
        else:
            return None  # BLOB, BOOLEAN, unknown types
    return ValueTuple(types, tuple(values))


@record
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

    @classmethod
    def decode_body(cls, body: bytes, schema: int = 0, *, legacy: bool = False) -> Message:
        """Decode straight from ``body`` in the common case (see ``_fast_params``)."""
        if schema == 0 and type(body) is bytes and len(body) >= 8:
            params = _fast_params(body, 8, len(body))
            if params is not None:
                db_id, stmt_id = _U32_PAIR_AT(body, 0)
                return cls(db_id, stmt_id, params, False)
        return cls._decode(Reader(body), schema, legacy)


@record
class ExecRequest(_StatementRequest):
    """EXEC (§2.2): run a prepared statement that yields no rows."""

    TYPE: ClassVar[RequestType] = RequestType.EXEC


@record
class QueryRequest(_StatementRequest):
    """QUERY (§2.2): run a prepared statement and stream its rows."""

    TYPE: ClassVar[RequestType] = RequestType.QUERY


@record
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


@record
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

    @classmethod
    def decode_body(cls, body: bytes, schema: int = 0, *, legacy: bool = False) -> Message:
        """Decode straight from ``body`` in the common case (see ``_fast_params``)."""
        if schema == 0 and type(body) is bytes:
            end = len(body)
            nul = body.find(b"\x00", 8, end)
            if nul >= 0:
                start = ((nul - 8) | 7) + 9
                params = _fast_params(body, start if start < end else end, end)
                if params is not None:
                    sql = body[8:nul].decode("utf-8", "surrogateescape")
                    return cls(_U64_AT(body, 0)[0], sql, params, False)
        return cls._decode(Reader(body), schema, legacy)


@record
class ExecSqlRequest(_SqlRequest):
    """EXEC_SQL (§2.2, §6.1): run every statement of a SQL text."""

    TYPE: ClassVar[RequestType] = RequestType.EXEC_SQL


@record
class QuerySqlRequest(_SqlRequest):
    """QUERY_SQL (§2.2): run the first statement of a SQL text and stream its rows."""

    TYPE: ClassVar[RequestType] = RequestType.QUERY_SQL


@record
class InterruptRequest(Request):
    """INTERRUPT (§2.2, §5.4): stop a streaming result; always answered by EMPTY."""

    TYPE: ClassVar[RequestType] = RequestType.INTERRUPT
    db_id: int = 0

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.db_id)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> InterruptRequest:
        return cls(r.u64())


@record
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


@record
class ConnectRequest(_NodeAddressRequest):
    """CONNECT (§2.2): a peer node hands this socket over to Raft; never answered.

    The id and address are the *sender's*.
    """

    TYPE: ClassVar[RequestType] = RequestType.CONNECT


@record
class AddRequest(_NodeAddressRequest):
    """ADD (§2.2): add a node to the cluster as a spare."""

    TYPE: ClassVar[RequestType] = RequestType.ADD


@record
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


@record
class RemoveRequest(Request):
    """REMOVE (§2.2): remove a node from the cluster."""

    TYPE: ClassVar[RequestType] = RequestType.REMOVE
    node_id: int

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.node_id)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> RemoveRequest:
        return cls(r.u64())


@record
class DumpRequest(Request):
    """DUMP (§2.2, §5.6): fetch a database's files."""

    TYPE: ClassVar[RequestType] = RequestType.DUMP
    name: str

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.text(self.name)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> DumpRequest:
        return cls(r.text())


@record
class ClusterRequest(Request):
    """CLUSTER (§2.2): list the members; format 1 includes roles."""

    TYPE: ClassVar[RequestType] = RequestType.CLUSTER
    format: int = 1

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.format)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> ClusterRequest:
        return cls(r.u64())


@record
class TransferRequest(Request):
    """TRANSFER (§2.2): move leadership to a node (0: let Raft pick)."""

    TYPE: ClassVar[RequestType] = RequestType.TRANSFER
    node_id: int

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.node_id)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> TransferRequest:
        return cls(r.u64())


@record
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


@record
class WeightRequest(Request):
    """WEIGHT (§2.2): set the receiving node's weight, in memory."""

    TYPE: ClassVar[RequestType] = RequestType.WEIGHT
    weight: int

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.weight)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> WeightRequest:
        return cls(r.u64())


@record
class AuthChallengeRequest(Request):
    """AUTH_CHALLENGE (dqlitepy, ``wire/auth.py``): ask for a nonce to prove the cluster key."""

    TYPE: ClassVar[RequestType] = RequestType.AUTH_CHALLENGE
    mechanism: int = MECHANISM_HMAC_SHA256

    def _encode(self, w: Writer, legacy: bool) -> None:
        w.u64(self.mechanism)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> AuthChallengeRequest:
        return cls(r.u64())


@record
class AuthProofRequest(Request):
    """AUTH_PROOF (dqlitepy, ``wire/auth.py``): the client's nonce and its MAC of the challenge."""

    TYPE: ClassVar[RequestType] = RequestType.AUTH_PROOF
    client_nonce: bytes
    mac: bytes
    mechanism: int = MECHANISM_HMAC_SHA256

    def _encode(self, w: Writer, legacy: bool) -> None:
        check_nonce("the client nonce", self.client_nonce)
        check_nonce("the MAC", self.mac)
        w.u64(self.mechanism)
        w.raw(bytes(self.client_nonce))
        w.raw(bytes(self.mac))

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> AuthProofRequest:
        mechanism = r.u64()
        nonce = r.raw(NONCE_SIZE)
        return cls(nonce, r.raw(NONCE_SIZE), mechanism)
