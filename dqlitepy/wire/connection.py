"""Sans-I/O connection state machines for both ends of a dqlite connection.

Theory of operation (``protocol.md`` §1.2, §1.6, §3.8, §5.4): after connecting,
the client sends one 8-byte protocol version and nothing comes back.  From then
on the conversation is strictly one request, then its response; the only
exception is QUERY/QUERY_SQL, answered by ROWS batches ending in PART until one
ends in DONE (or in a FAILURE, for an error met while building a later batch).
An INTERRUPT sent while batches are still coming is read by the server only
after the stream ends, so the client must discard ROWS (or a FAILURE) until the
EMPTY that answers the INTERRUPT.

Neither object touches a socket or a clock: feed received bytes to
``receive_data``, pull events with ``next_event`` (which returns :data:`NEED_DATA`
when a whole message has not arrived yet), and send the bytes returned by
``send``.  Each state is an enum member; every move goes through ``_set_state``
and the transition table, so an illegal move raises instead of corrupting the
conversation.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from .constants import (
    PROTOCOL_VERSION,
    PROTOCOL_VERSION_LEGACY,
    RequestType,
    ResponseType,
)
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .framing import DEFAULT_MAX_MESSAGE_SIZE, FrameBuffer, encode_frame
from .messages import (
    REQUESTS,
    RESPONSES,
    ClusterRequest,
    ConnectRequest,
    EmptyResponse,
    FailureResponse,
    InterruptRequest,
    QueryRequest,
    QuerySqlRequest,
    Request,
    Response,
    RowsResponse,
    ServersResponse,
)
from .record import record

__all__ = [
    "NEED_DATA",
    "BadRequest",
    "ClientConnection",
    "ClientState",
    "Handshake",
    "Incoming",
    "NeedData",
    "ServerConnection",
    "ServerState",
    "encode_message",
]

_VERSION = struct.Struct("<Q")


class NeedData(enum.Enum):
    """Sentinel type of :data:`NEED_DATA`."""

    NEED_DATA = "NEED_DATA"


#: Returned by ``next_event`` when more bytes must be received first.
NEED_DATA: Final = NeedData.NEED_DATA


def encode_message(message: Request | Response, *, legacy: bool = False) -> bytes:
    """Return header and body of a message, ready to send."""
    return encode_frame(message.TYPE, message.schema, message.encode_body(legacy=legacy))


# Which responses may answer each request; FAILURE may answer any of them.
_EXPECTED: dict[int, frozenset[int]] = {
    RequestType.LEADER: frozenset({ResponseType.SERVER}),
    RequestType.CLIENT: frozenset({ResponseType.WELCOME}),
    RequestType.HEARTBEAT: frozenset({ResponseType.SERVERS, ResponseType.EMPTY}),
    RequestType.OPEN: frozenset({ResponseType.DB}),
    RequestType.PREPARE: frozenset({ResponseType.STMT}),
    RequestType.EXEC: frozenset({ResponseType.RESULT}),
    RequestType.QUERY: frozenset({ResponseType.ROWS}),
    RequestType.FINALIZE: frozenset({ResponseType.EMPTY}),
    RequestType.EXEC_SQL: frozenset({ResponseType.RESULT}),
    RequestType.QUERY_SQL: frozenset({ResponseType.ROWS}),
    RequestType.INTERRUPT: frozenset({ResponseType.EMPTY}),
    RequestType.ADD: frozenset({ResponseType.EMPTY}),
    RequestType.ASSIGN: frozenset({ResponseType.EMPTY}),
    RequestType.REMOVE: frozenset({ResponseType.EMPTY}),
    RequestType.DUMP: frozenset({ResponseType.FILES}),
    RequestType.CLUSTER: frozenset({ResponseType.SERVERS}),
    RequestType.TRANSFER: frozenset({ResponseType.EMPTY}),
    RequestType.DESCRIBE: frozenset({ResponseType.METADATA}),
    RequestType.WEIGHT: frozenset({ResponseType.EMPTY}),
    RequestType.AUTH_CHALLENGE: frozenset({ResponseType.CHALLENGE}),
    RequestType.AUTH_PROOF: frozenset({ResponseType.EMPTY}),
}


class ClientState(enum.Enum):
    """Where the client side of a connection stands."""

    #: Nothing sent yet: the protocol version must go first.
    START = "start"
    #: Ready to send a request.
    IDLE = "idle"
    #: A request was sent and its (first) response has not arrived.
    AWAITING = "awaiting"
    #: A ROWS batch ended in PART: more batches are on their way.
    STREAMING = "streaming"
    #: INTERRUPT sent mid-stream: discarding until its EMPTY arrives.
    INTERRUPTING = "interrupting"
    #: The conversation is out of step; the connection must be closed.
    BROKEN = "broken"


_CLIENT_TRANSITIONS: dict[ClientState, frozenset[ClientState]] = {
    ClientState.START: frozenset({ClientState.IDLE, ClientState.BROKEN}),
    ClientState.IDLE: frozenset({ClientState.AWAITING, ClientState.BROKEN}),
    ClientState.AWAITING: frozenset(
        {ClientState.IDLE, ClientState.STREAMING, ClientState.INTERRUPTING, ClientState.BROKEN}
    ),
    ClientState.STREAMING: frozenset(
        {ClientState.IDLE, ClientState.INTERRUPTING, ClientState.BROKEN}
    ),
    ClientState.INTERRUPTING: frozenset({ClientState.IDLE, ClientState.BROKEN}),
    ClientState.BROKEN: frozenset({ClientState.BROKEN}),
}


class ClientConnection:
    """The client end of a dqlite connection, without I/O.

    Args:
        max_message_size: the largest response body accepted (DUMP can be big).
    """

    def __init__(self, max_message_size: int = 1 << 30) -> None:
        self._frames = FrameBuffer(max_message_size)
        self._state = ClientState.START
        self._legacy = False
        self._pending: Request | None = None

    @property
    def state(self) -> ClientState:
        """The current state."""
        return self._state

    @property
    def legacy(self) -> bool:
        """True if the legacy protocol version was sent."""
        return self._legacy

    def _set_state(self, new: ClientState) -> None:
        if new not in _CLIENT_TRANSITIONS[self._state]:
            raise LocalProtocolError(f"illegal client transition {self._state.name} -> {new.name}")
        self._state = new

    def handshake(self, version: int = PROTOCOL_VERSION) -> bytes:
        """Return the protocol-version word that opens the conversation."""
        if version not in (PROTOCOL_VERSION, PROTOCOL_VERSION_LEGACY):
            raise LocalProtocolError(f"unknown protocol version {version:#x}")
        self._set_state(ClientState.IDLE)
        self._legacy = version == PROTOCOL_VERSION_LEGACY
        return _VERSION.pack(version)

    def send(self, request: Request) -> bytes:
        """Return the bytes of ``request``; legal when idle, or INTERRUPT mid-stream.

        Raises:
            LocalProtocolError: a request is already in flight, or the message
                cannot be encoded (nothing changes state in that case).
        """
        data = encode_message(request, legacy=self._legacy)
        if isinstance(request, InterruptRequest) and self._interruptible():
            self._set_state(ClientState.INTERRUPTING)
        elif isinstance(request, ConnectRequest):
            raise LocalProtocolError("CONNECT is for dqlite nodes, not clients")
        else:
            self._set_state(ClientState.AWAITING)
        self._pending = request
        return data

    def can_interrupt(self) -> bool:
        """True if an INTERRUPT may be sent now (see :meth:`send`)."""
        return self._interruptible()

    def _interruptible(self) -> bool:
        # Mid-stream (as go-dqlite does), or while a query has not answered yet:
        # a dqlitepy server stops a long query on INTERRUPT.  Never an EXEC: its
        # outcome would be discarded with the response.
        if self._state is ClientState.STREAMING:
            return True
        return self._state is ClientState.AWAITING and isinstance(
            self._pending, (QueryRequest, QuerySqlRequest)
        )

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the server."""
        self._frames.feed(data)

    def next_event(self) -> Response | NeedData:
        """Return the next response, or :data:`NEED_DATA`.

        In the INTERRUPTING state, ROWS and FAILURE are discarded and the EMPTY
        that ends the interruption is returned.

        Raises:
            RemoteProtocolError: the server sent something that cannot answer
                the pending request; the connection is BROKEN from then on.
        """
        while True:
            if self._state not in (
                ClientState.AWAITING,
                ClientState.STREAMING,
                ClientState.INTERRUPTING,
            ):
                if self._state is ClientState.BROKEN:
                    raise LocalProtocolError("the connection is broken")
                if len(self._frames):
                    self._set_state(ClientState.BROKEN)
                    raise RemoteProtocolError("the server sent data while no request was pending")
                return NEED_DATA
            try:
                frame = self._frames.next_frame()
                if frame is None:
                    return NEED_DATA
                response = self._decode(frame.type, frame.schema, frame.body)
            except ProtocolError:
                self._set_state(ClientState.BROKEN)
                raise
            if self._state is ClientState.INTERRUPTING:
                if isinstance(response, (RowsResponse, FailureResponse)):
                    continue
                if isinstance(response, EmptyResponse):
                    self._finish()
                    return response
                self._set_state(ClientState.BROKEN)
                raise RemoteProtocolError(
                    f"unexpected {type(response).__name__} while interrupting"
                )
            if isinstance(response, RowsResponse) and not response.done:
                if self._state is ClientState.AWAITING:
                    self._set_state(ClientState.STREAMING)
            else:
                self._finish()
            return response

    def _finish(self) -> None:
        self._set_state(ClientState.IDLE)
        self._pending = None

    def _decode(self, type_: int, schema: int, body: bytes) -> Response:
        pending = self._pending
        assert pending is not None
        if self._state is ClientState.STREAMING and type_ not in (
            ResponseType.ROWS,
            ResponseType.FAILURE,
        ):
            # FAILURE can end a stream: dqlite reports an error met while building
            # a later batch (gateway.c queryBatch), and the connection goes on.
            raise RemoteProtocolError(f"response type {type_} in the middle of a ROWS stream")
        if type_ != ResponseType.FAILURE and self._state is not ClientState.INTERRUPTING:
            expected = _EXPECTED.get(pending.TYPE, frozenset())
            if type_ not in expected:
                raise RemoteProtocolError(
                    f"response type {type_} does not answer request {pending.TYPE.name}"
                )
        cls = RESPONSES.get(type_)
        if cls is None:
            raise RemoteProtocolError(f"unknown response type {type_}")
        if cls is ServersResponse:
            fmt = pending.format if isinstance(pending, ClusterRequest) else 1
            return ServersResponse.decode_body(body, schema, legacy=self._legacy, format=fmt)
        return cls.decode_body(body, schema, legacy=self._legacy)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- server


@record
class Handshake:
    """Event: the client sent its protocol version."""

    version: int

    @property
    def legacy(self) -> bool:
        return self.version == PROTOCOL_VERSION_LEGACY


@record
class BadRequest:
    """Event: a whole request arrived that cannot be served (unknown type, bad body).

    The stream is still in step: answer with ``FailureResponse(code, message)``.
    """

    type: int
    schema: int
    code: int
    message: str


@record
class Incoming:
    """What has arrived of a message not yet whole (see :meth:`ServerConnection.incoming`)."""

    #: Bytes of it buffered so far, header included.
    buffered: int
    #: The body size its header announces; None until the whole header (or, for a
    #: new connection, the protocol version) is in.
    body_size: int | None


ServerEvent = Handshake | Request | BadRequest | NeedData


class ServerState(enum.Enum):
    """Where the server side of a connection stands."""

    #: Waiting for the 8-byte protocol version.
    HANDSHAKE = "handshake"
    #: Waiting for a request.
    IDLE = "idle"
    #: A request was delivered; its response has not been fully sent.
    RESPONDING = "responding"
    #: CONNECT received: the socket now belongs to Raft.
    HANDED_OVER = "handed_over"
    #: The peer broke the protocol; close the connection.
    BROKEN = "broken"

    # Members are singletons compared by identity: the identity hash is consistent
    # with that and is C code, where Enum's own __hash__ is a Python call (two
    # transition checks per request).
    __hash__ = object.__hash__


_SERVER_TRANSITIONS: dict[ServerState, frozenset[ServerState]] = {
    ServerState.HANDSHAKE: frozenset({ServerState.IDLE, ServerState.BROKEN}),
    ServerState.IDLE: frozenset(
        {ServerState.RESPONDING, ServerState.HANDED_OVER, ServerState.BROKEN}
    ),
    ServerState.RESPONDING: frozenset({ServerState.IDLE, ServerState.BROKEN}),
    ServerState.HANDED_OVER: frozenset({ServerState.BROKEN}),
    ServerState.BROKEN: frozenset({ServerState.BROKEN}),
}

# dqlite's failure code for requests it cannot parse (§5.1).
_DQLITE_PARSE = 1005


class ServerConnection:
    """The server end of a dqlite connection, without I/O.

    Args:
        max_message_size: the largest request body accepted; a larger header
            raises :class:`~dqlitepy.wire.errors.MessageTooLarge`.
        accept_legacy: accept the pre-1.0 protocol version as well.
    """

    def __init__(
        self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, *, accept_legacy: bool = True
    ) -> None:
        self._frames = FrameBuffer(max_message_size)
        self._state = ServerState.HANDSHAKE
        self._accept_legacy = accept_legacy
        self._legacy = False

    @property
    def state(self) -> ServerState:
        """The current state."""
        return self._state

    @property
    def legacy(self) -> bool:
        """True if the client used the legacy protocol version."""
        return self._legacy

    def _set_state(self, new: ServerState) -> None:
        if new not in _SERVER_TRANSITIONS[self._state]:
            raise LocalProtocolError(f"illegal server transition {self._state.name} -> {new.name}")
        self._state = new

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the client."""
        self._frames.feed(data)

    def trailing_data(self) -> bytes:
        """After CONNECT: the bytes already received that belong to Raft."""
        if self._state is not ServerState.HANDED_OVER:
            raise LocalProtocolError("trailing data is only for a handed-over connection")
        return self._frames.take_all()

    def next_event(self) -> ServerEvent:
        """Return the next event, or :data:`NEED_DATA`.

        While a response is being sent (RESPONDING) no request is read, as in
        dqlite (§1.6): pipelined requests wait in the buffer.

        Raises:
            RemoteProtocolError: unknown protocol version, a 0-word or oversized
                message; the connection is BROKEN and should be closed.
        """
        state = self._state
        if state is ServerState.HANDSHAKE:
            raw = self._frames.take(8)
            if raw is None:
                return NEED_DATA
            (version,) = _VERSION.unpack(raw)
            if version == PROTOCOL_VERSION or (
                version == PROTOCOL_VERSION_LEGACY and self._accept_legacy
            ):
                self._legacy = version == PROTOCOL_VERSION_LEGACY
                self._set_state(ServerState.IDLE)
                return Handshake(version)
            self._set_state(ServerState.BROKEN)
            raise RemoteProtocolError(f"unknown protocol version {version:#x}")
        if state is not ServerState.IDLE:
            if state is ServerState.BROKEN:
                raise LocalProtocolError("the connection is broken")
            return NEED_DATA
        try:
            frame = self._frames.next_frame()
        except ProtocolError:
            self._set_state(ServerState.BROKEN)
            raise
        if frame is None:
            return NEED_DATA
        cls = REQUESTS.get(frame.type)
        if cls is None:
            self._set_state(ServerState.RESPONDING)
            return BadRequest(frame.type, frame.schema, _DQLITE_PARSE, "unrecognized request type")
        try:
            request = cls.decode_body(frame.body, frame.schema)
        except RemoteProtocolError as exc:
            self._set_state(ServerState.RESPONDING)
            return BadRequest(frame.type, frame.schema, _DQLITE_PARSE, str(exc))
        assert isinstance(request, Request)
        if cls is ConnectRequest:
            self._set_state(ServerState.HANDED_OVER)
        else:
            self._set_state(ServerState.RESPONDING)
        return request

    def incoming(self) -> Incoming | None:
        """The partly received next message, or None when none of it has arrived.

        A new connection counts as receiving its protocol version until that is
        in, whether or not any of it arrived. A server uses this to bound how
        long a message may take and how much memory it may reserve for it.
        """
        buffered = len(self._frames)
        if self._state is ServerState.HANDSHAKE:
            return Incoming(buffered, None)
        if not buffered:
            return None
        return Incoming(buffered, self._frames.announced_size())

    def interrupt_pending(self) -> bool:
        """True if a whole INTERRUPT request is already buffered behind the current one.

        Lets a server stop a long statement early; the INTERRUPT itself stays
        in the buffer and is answered in turn, as the client expects.
        """
        return RequestType.INTERRUPT in self._frames.buffered_types()

    def send(self, response: Response) -> bytes:
        """Return the bytes of a response to the current request.

        A ROWS batch with ``done=False`` keeps the request open for more batches;
        anything else completes it.
        """
        if self._state is not ServerState.RESPONDING:
            raise LocalProtocolError(f"no request to respond to in state {self._state.name}")
        data = encode_message(response, legacy=self._legacy)
        if not (isinstance(response, RowsResponse) and not response.done):
            self._set_state(ServerState.IDLE)
        return data

    def send_encoded_rows(self, data: bytes, *, done: bool) -> bytes:
        """Account for a ROWS message built by :class:`~dqlitepy.wire.rows.RowsBatchEncoder`.

        The server streams a result batch by batch without building message
        objects; this keeps the state machine in step: a PART batch leaves the
        request open, the DONE batch completes it.
        """
        if self._state is not ServerState.RESPONDING:
            raise LocalProtocolError(f"no request to respond to in state {self._state.name}")
        if done:
            self._set_state(ServerState.IDLE)
        return data
