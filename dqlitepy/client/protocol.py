"""One connection to one node, as generators: the request/response conversation.

:class:`Protocol` keeps the sans-I/O :class:`~dqlitepy.wire.ClientConnection`
of one stream to one node, and its methods are generators of
:mod:`dqlitepy.client.needs` (a waiter drives them: blocking in
:mod:`dqlitepy.client.waiting`, asyncio in :mod:`dqlitepy.aio`).  A failure or
a timeout between sending a request and reading its whole response leaves the
conversation out of step, so the protocol is *poisoned*: it closes and every
later call fails.  :class:`ConnectionLostError` tells the caller whether the
request had been sent, because only a request that provably did not reach the
server may be retried (``docs/architecture.md``, "What users see"; go-dqlite
documents the same ambiguous window).  Which node to talk to is
:mod:`dqlitepy.client.discovery`'s business.

With an :class:`ssl.SSLContext` every stream runs TLS from the start (the
handshake counts against the caller's timeout).  :func:`is_tls_failure` tells
the failures that retrying cannot cure (a certificate the client or the server
rejects) from those it may.  :meth:`Protocol.interrupt` may be called from
another thread (or task) while the owner waits for a response; the transport
sends its bytes safely (:meth:`~dqlitepy.client.needs.Transport.send_urgent`).

A request is checked against the message size limit before it is encoded for
sending, so a value too big for the server is refused here (``DataError``, as
``sqlite3`` refuses a value over ``SQLITE_LIMIT_LENGTH``) instead of the server
resetting the connection.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, TypeVar

from ..wire import (
    DEFAULT_MAX_MESSAGE_SIZE,
    NEED_DATA,
    PROTOCOL_VERSION,
    ClientConnection,
    ClientState,
    EmptyResponse,
    ErrorCode,
    FailureResponse,
    InterruptRequest,
    ProtocolError,
    Request,
    Response,
    RowsResponse,
    ValueTuple,
)
from ..wire.record import fields, is_record
from .errors import (
    ConnectionLostError,
    DataError,
    OperationalError,
    error_from_code,
    make_error,
)
from .needs import Dial, Gen, Recv, Send, Transport
from .tls import loaded_ssl

if TYPE_CHECKING:
    import ssl


__all__ = [
    "ConnectionLostError",
    "Protocol",
    "is_tls_failure",
]

R = TypeVar("R", bound=Response)

_MIB = 1 << 20


def is_tls_failure(exc: BaseException) -> bool:
    """True if ``exc`` (or its cause) is a TLS failure that retrying cannot cure.

    A certificate one side rejects, an alert, a peer that does not speak TLS;
    not a reset, an EOF or a timeout, which an overloaded or restarting node
    gives too.
    """
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    ssl = loaded_ssl()
    return (
        ssl is not None
        and isinstance(cause, ssl.SSLError)
        and not isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError)
    )


def _is_tls_eof(exc: BaseException) -> bool:
    ssl = loaded_ssl()
    return ssl is not None and isinstance(exc, ssl.SSLEOFError)


class Protocol:
    """One open, handshaken connection to one node.

    Args:
        transport: an open stream (a TLS one too); the protocol owns it from now on.
        address: the address it was dialed with (reported in errors).
        version: the protocol version to send.
    """

    def __init__(self, transport: Transport, address: str, version: int = PROTOCOL_VERSION) -> None:
        self.address = address
        #: The largest request body sent; a larger one raises ``DataError`` unsent.
        self.max_request_size = DEFAULT_MAX_MESSAGE_SIZE
        self.transport = transport
        self._conn = ClientConnection()
        self._pending_out = self._conn.handshake(version)
        # Guards the state machine: interrupt() runs on another thread (or task)
        # while the owner waits for a response.  Never held across a yield.
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        address: str,
        timeout: float,
        version: int = PROTOCOL_VERSION,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Gen[Protocol]:
        """Dial ``address`` (with TLS if ``ssl_context``) and prepare the handshake.

        The handshake is sent with the first request.
        """
        try:
            transport = yield Dial(address, timeout, ssl_context)
        except (OSError, ValueError) as exc:
            if is_tls_failure(exc):
                text = f"TLS handshake failed with {address}: {exc}"
            elif ssl_context is not None and _is_tls_eof(exc):
                # What a node without TLS does to a ClientHello (or a busy node to anyone).
                text = f"{address} closed the connection during the TLS handshake: is TLS on there?"
            else:
                text = f"cannot connect to {address}: {exc}"
            raise ConnectionLostError(text, request_sent=False) from exc
        return cls(transport, address, version)

    @property
    def closed(self) -> bool:
        """True once the stream is closed (by :meth:`close` or a failure)."""
        return self.transport.closed

    @property
    def idle(self) -> bool:
        """True between requests: no response is awaited or being read."""
        return self._conn.state is ClientState.IDLE

    def close(self) -> None:
        """Close the stream; idempotent."""
        self.transport.close()

    def is_alive(self) -> bool:
        """Check without blocking that the peer has not closed the connection.

        A node killed while we were idle leaves an EOF (or reset) waiting in the
        stream: detecting it *before* sending lets the caller reconnect knowing
        the next request never reached anyone.
        """
        if self._conn.state is not ClientState.IDLE:
            self.close()  # a conversation left half-way (an interrupted wait) is out of step
            return False
        return self.transport.is_alive()

    def _poison(self, exc: BaseException, *, sent: bool, what: str) -> ConnectionLostError:
        self.close()
        return ConnectionLostError(f"{what} {self.address}: {exc}", request_sent=sent)

    def _send(self, data: bytes, deadline: float | None) -> Gen[None]:
        transport = self.transport
        if transport.closed:
            raise ConnectionLostError(f"connection to {self.address} is closed", request_sent=False)
        if self._pending_out:
            data = self._pending_out + data
            self._pending_out = b""
        try:
            yield Send(transport, data, deadline)
        except (OSError, ValueError) as exc:
            # Part of the request may have left: its fate is unknown.
            raise self._poison(exc, sent=True, what="lost connection while sending to") from exc

    def _receive(self, deadline: float | None) -> Gen[Response]:
        transport = self.transport
        conn = self._conn
        lock = self._lock
        while True:
            try:
                with lock:
                    event = conn.next_event()
            except ProtocolError as exc:
                raise self._poison(exc, sent=True, what="protocol error from") from exc
            if event is not NEED_DATA:
                assert isinstance(event, Response)
                return event
            if transport.closed:
                raise ConnectionLostError(
                    f"connection to {self.address} is closed", request_sent=True
                )
            try:
                data = yield Recv(transport, deadline, self)
            except (OSError, ValueError) as exc:
                raise self._poison(exc, sent=True, what="lost connection to") from exc
            if not data:
                closed = EOFError("connection closed by the server")
                raise self._poison(closed, sent=True, what="lost connection to")
            with lock:
                conn.receive_data(data)

    def _start(self, request: Request) -> bytes:
        self._check_size(request)
        try:
            with self._lock:
                return self._conn.send(request)
        except ProtocolError as exc:
            raise OperationalError(f"cannot send {type(request).__name__}: {exc}") from exc

    def _check_size(self, request: Request) -> None:
        """Refuse a request whose body is over ``max_request_size``, before it is sent.

        A dqlitepy server drops the connection on a message over its limit as soon as
        the header arrives (``docs/architecture.md``, "Safety of the SQL surface"),
        which the caller would see as a reset with an open transaction lost.  Refused
        here, nothing is sent and the connection goes on.  The body is encoded to be
        measured only when a cheap bound says it might be too big.
        """
        limit = self.max_request_size
        if _size_bound(request) <= limit:
            return
        size = len(request.encode_body(legacy=self._conn.legacy))
        if size <= limit:
            return
        sql = getattr(request, "sql", None)
        # sqlite3's wording: the SQL text itself, or a value bound to it.
        what = (
            "query string is too large"
            if isinstance(sql, str) and _size_bound(sql) > limit and len(sql.encode()) > limit
            else "string or blob too big"
        )
        raise make_error(
            DataError,
            f"{what}: the {request.TYPE.name} request would be {size} bytes, over the "
            f"message limit of {_bytes_text(limit)}",
            code=ErrorCode.SQLITE_TOOBIG,
        )

    def interrupt(self) -> bool:
        """From another thread or task: ask the server to stop the query in flight.

        Only queries are interrupted (an EXEC's outcome would be lost with its
        response).  The owner's call then fails with ``interrupted``.

        Returns:
            True if an INTERRUPT was sent.
        """
        with self._lock:
            if self.transport.closed or not self._conn.can_interrupt():
                return False
            data = self._conn.send(InterruptRequest(0))
            return self.transport.send_urgent(data)

    @property
    def interruptible(self) -> bool:
        """True while a query's response is awaited or streaming (INTERRUPT may stop it)."""
        return self._conn.can_interrupt()

    def call(self, request: Request, expect: type[R], timeout: float | None) -> Gen[R]:
        """Send a request and return its single response.

        Raises:
            Error: the server answered FAILURE (mapped through ``error_from_code``).
            ConnectionLostError: the connection failed; it is closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        yield from self._send(self._start(request), deadline)
        response = yield from self._receive(deadline)
        return self._expect(response, expect)

    def _expect(self, response: Response, expect: type[R]) -> R:
        """Raise a FAILURE as its error; poison the connection on a wrong response type."""
        if isinstance(response, FailureResponse):
            raise error_from_code(response.code, response.message)
        if not isinstance(response, expect):
            raise self._poison(
                TypeError(f"unexpected {type(response).__name__}"),
                sent=True,
                what="bad response from",
            )
        return response

    def query(self, request: Request, timeout: float | None) -> Gen[list[RowsResponse]]:
        """Send a QUERY or QUERY_SQL and return all of its ROWS batches."""
        deadline = None if timeout is None else time.monotonic() + timeout
        yield from self._send(self._start(request), deadline)
        batches = []
        while True:
            response = yield from self._receive(deadline)
            if isinstance(response, EmptyResponse):
                # The EMPTY answering our INTERRUPT: the rest was discarded.
                raise error_from_code(ErrorCode.SQLITE_INTERRUPT, "interrupted")
            batch = self._expect(response, RowsResponse)
            batches.append(batch)
            if batch.done:
                return batches

    def drain(self, timeout: float | None) -> Gen[None]:
        """Read and discard the rest of a conversation an INTERRUPT cut short (§5.4).

        After :meth:`interrupt`, the query's remaining ROWS (C dqlite sends them
        all), its FAILURE or RESULT, and the EMPTY answering the INTERRUPT are
        read until the connection is idle again.  A waiter that gave up on a
        query (a cancelled task) calls this to leave the connection clean.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._conn.state is not ClientState.IDLE:
            yield from self._receive(deadline)


def _size_bound(value: object) -> int:
    """An upper bound of the encoded size of a request or one of its fields (protocol.md §1.4).

    Text is at most 4 bytes a character plus its NUL and padding; a blob is
    its bytes plus a length word and padding; numbers are one word.  Anything
    else counts as unbounded, so that the exact size is measured.
    """
    if isinstance(value, str):
        return 4 * len(value) + 16
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value) + 16
    if value is None or isinstance(value, int | float):
        return 8
    if isinstance(value, ValueTuple):
        # A count byte and a type byte per value, padded, then the values.
        return 16 + len(value.values) + sum(_size_bound(v) for v in value.values)
    if isinstance(value, Request) and is_record(value):
        return 16 + sum(_size_bound(getattr(value, name)) for name in fields(value))
    return 1 << 62


def _bytes_text(size: int) -> str:
    if size and size % _MIB == 0:
        return f"{size} bytes ({size // _MIB} MiB)"
    return f"{size} bytes"
