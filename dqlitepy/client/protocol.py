"""Blocking I/O around the sans-I/O client connection: one socket to one node.

:class:`Protocol` owns one socket to one node.  A socket error or a timeout
between sending a request and reading its whole response leaves the conversation
out of step, so the protocol is *poisoned*: it closes and every later call fails.
:class:`ConnectionLostError` tells the caller whether the request had been sent,
because only a request that provably did not reach the server may be retried
(``docs/architecture.md``, "What users see"; go-dqlite documents the same
ambiguous window).  Which node to talk to is :mod:`dqlitepy.client.discovery`'s business.

With an :class:`ssl.SSLContext` every socket is wrapped in TLS right after it
connects (the handshake counts against the caller's timeout).
:func:`is_tls_failure` tells the failures that retrying cannot cure (a
certificate the client or the server rejects) from those it may.  OpenSSL
objects must not be used by two threads at once, so on a TLS connection
:meth:`Protocol.interrupt` leaves its request for the owner's thread, which
waits for responses in short slices and sends it in between.

A request is checked against the message size limit before it is encoded for
sending, so a value too big for the server is refused here (``DataError``, as
``sqlite3`` refuses a value over ``SQLITE_LIMIT_LENGTH``) instead of the server
resetting the connection.
"""

from __future__ import annotations

import dataclasses
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import TypeVar

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
from .address import parse_address
from .errors import (
    ConnectionLostError,
    DataError,
    OperationalError,
    error_from_code,
    make_error,
)

__all__ = [
    "ConnectionLostError",
    "Protocol",
    "dial",
    "is_tls_failure",
]

log = logging.getLogger("dqlitepy.client")

R = TypeVar("R", bound=Response)

_RECV_SIZE = 256 * 1024
_MIB = 1 << 20
# How long the owner of a TLS connection waits at a time for a response, so that an
# interrupt from another thread goes out within that delay.
_TLS_SLICE = 0.05


def dial(address: str, timeout: float, ssl_context: ssl.SSLContext | None = None) -> socket.socket:
    """Open a socket to a node within ``timeout`` seconds (``ssl_context``: and run TLS)."""
    family, sockaddr = parse_address(address)
    if family == socket.AF_UNIX:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
        except BaseException:
            sock.close()
            raise
    else:
        assert isinstance(sockaddr, tuple)
        sock = socket.create_connection(sockaddr, timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
    if ssl_context is None:
        return sock
    try:
        # The handshake runs here, under the connect timeout the socket still has.
        host = sockaddr[0] if isinstance(sockaddr, tuple) else None
        return ssl_context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def is_tls_failure(exc: BaseException) -> bool:
    """True if ``exc`` (or its cause) is a TLS failure that retrying cannot cure.

    A certificate one side rejects, an alert, a peer that does not speak TLS;
    not a reset, an EOF or a timeout, which an overloaded or restarting node
    gives too.
    """
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return isinstance(cause, ssl.SSLError) and not isinstance(
        cause, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
    )


class Protocol:
    """One open, handshaken connection to one node.

    Args:
        sock: a connected socket (a TLS one too); the protocol owns it from now on.
        address: the address it was dialed with (reported in errors).
        version: the protocol version to send.
    """

    def __init__(self, sock: socket.socket, address: str, version: int = PROTOCOL_VERSION) -> None:
        self.address = address
        self._tls = isinstance(sock, ssl.SSLSocket)
        # An INTERRUPT another thread asked for, sent by the owner's thread (TLS only).
        self._urgent = b""
        #: The largest request body sent; a larger one raises ``DataError`` unsent.
        self.max_request_size = DEFAULT_MAX_MESSAGE_SIZE
        self._sock: socket.socket | None = sock
        self._conn = ClientConnection()
        self._pending_out = self._conn.handshake(version)
        # Guards the state machine and outgoing bytes: interrupt() runs on
        # another thread while the owner waits for a response.
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        address: str,
        timeout: float,
        version: int = PROTOCOL_VERSION,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Protocol:
        """Dial ``address`` (with TLS if ``ssl_context``) and prepare the handshake.

        The handshake is sent with the first request.
        """
        try:
            sock = dial(address, timeout, ssl_context)
        except (OSError, ValueError) as exc:
            if is_tls_failure(exc):
                text = f"TLS handshake failed with {address}: {exc}"
            elif ssl_context is not None and isinstance(exc, ssl.SSLEOFError):
                # What a node without TLS does to a ClientHello (or a busy node to anyone).
                text = f"{address} closed the connection during the TLS handshake: is TLS on there?"
            else:
                text = f"cannot connect to {address}: {exc}"
            raise ConnectionLostError(text, request_sent=False) from exc
        return cls(sock, address, version)

    @property
    def closed(self) -> bool:
        """True once the socket is closed (by :meth:`close` or a failure)."""
        return self._sock is None

    def close(self) -> None:
        """Close the socket; idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def is_alive(self) -> bool:
        """Check without blocking that the peer has not closed the connection.

        A node killed while we were idle leaves an EOF (or reset) waiting in the
        socket: detecting it *before* sending lets the caller reconnect knowing
        the next request never reached anyone.
        """
        sock = self._sock
        if sock is None or self._conn.state is not ClientState.IDLE:
            return False
        try:
            if self._tls and sock.pending():  # type: ignore[attr-defined]
                data = b"?"  # decrypted bytes nobody asked for
            else:
                # poll(), not select(): select fails on descriptors past FD_SETSIZE (1024).
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                if not poller.poll(0):
                    return True
                # Anything readable while idle is EOF, a reset or garbage: all fatal.
                sock.setblocking(False)
                try:
                    # TLS has no MSG_PEEK; what it reads is discarded anyway.
                    data = sock.recv(1) if self._tls else sock.recv(1, socket.MSG_PEEK)
                except ssl.SSLWantReadError:
                    return True  # a TLS record with nothing for us (a session ticket)
                finally:
                    sock.setblocking(True)
        except (OSError, ValueError):
            data = b""
        self.close()
        if data:
            log.warning("unsolicited data from %s; dropping the connection", self.address)
        return False

    def _poison(self, exc: BaseException, *, sent: bool, what: str) -> ConnectionLostError:
        self.close()
        return ConnectionLostError(f"{what} {self.address}: {exc}", request_sent=sent)

    def _send(self, data: bytes, deadline: float | None) -> None:
        sock = self._sock
        if sock is None:
            raise ConnectionLostError(f"connection to {self.address} is closed", request_sent=False)
        if self._pending_out:
            data = self._pending_out + data
            self._pending_out = b""
        if self._urgent:
            with self._lock:
                data, self._urgent = self._urgent + data, b""
        try:
            sock.settimeout(_remaining(deadline))
            with self._lock:
                sock.sendall(data)
        except (OSError, ValueError) as exc:
            # Part of the request may have left: its fate is unknown.
            raise self._poison(exc, sent=True, what="lost connection while sending to") from exc

    def _receive(self, deadline: float | None) -> Response:
        sock = self._sock
        conn = self._conn
        while True:
            try:
                with self._lock:
                    event = conn.next_event()
            except ProtocolError as exc:
                raise self._poison(exc, sent=True, what="protocol error from") from exc
            if event is not NEED_DATA:
                assert isinstance(event, Response)
                return event
            if sock is None:
                raise ConnectionLostError(
                    f"connection to {self.address} is closed", request_sent=True
                )
            try:
                data = self._recv(sock, deadline)
            except (OSError, ValueError) as exc:
                raise self._poison(exc, sent=True, what="lost connection to") from exc
            if not data:
                closed = EOFError("connection closed by the server")
                raise self._poison(closed, sent=True, what="lost connection to")
            with self._lock:
                conn.receive_data(data)

    def _recv(self, sock: socket.socket, deadline: float | None) -> bytes:
        if not self._tls:
            sock.settimeout(_remaining(deadline))
            return sock.recv(_RECV_SIZE)
        while True:
            if self._urgent:
                with self._lock:
                    urgent, self._urgent = self._urgent, b""
                sock.settimeout(_remaining(deadline))
                sock.sendall(urgent)
            left = _remaining(deadline)  # raises TimeoutError once the deadline passed
            sock.settimeout(_TLS_SLICE if left is None else min(left, _TLS_SLICE))
            try:
                return sock.recv(_RECV_SIZE)
            except TimeoutError:
                # OpenSSL keeps a partly received record: the next recv goes on with it.
                continue

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
        """From another thread: ask the server to stop the query in flight.

        Only queries are interrupted (an EXEC's outcome would be lost with its
        response).  The owner's call then fails with ``interrupted``.

        Returns:
            True if an INTERRUPT was sent.
        """
        sock = self._sock
        with self._lock:
            if sock is None or not self._conn.can_interrupt():
                return False
            data = self._conn.send(InterruptRequest(0))
            if self._tls:
                # The owner, waiting for the response, sends it within _TLS_SLICE.
                self._urgent += data
                return True
            try:
                sock.sendall(data)
            except OSError:
                return False
        return True

    def call(self, request: Request, expect: type[R], timeout: float | None) -> R:
        """Send a request and return its single response.

        Raises:
            Error: the server answered FAILURE (mapped through ``error_from_code``).
            ConnectionLostError: the connection failed; it is closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._send(self._start(request), deadline)
        return self._expect(self._receive(deadline), expect)

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

    def query(self, request: Request, timeout: float | None) -> Iterator[RowsResponse]:
        """Send a QUERY or QUERY_SQL and yield its ROWS batches as they arrive.

        The generator must be exhausted (or :meth:`interrupt_stream` called)
        before the next request.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._send(self._start(request), deadline)
        while True:
            response = self._receive(deadline)
            if isinstance(response, EmptyResponse):
                # The EMPTY answering our INTERRUPT: the rest was discarded.
                raise error_from_code(ErrorCode.SQLITE_INTERRUPT, "interrupted")
            batch = self._expect(response, RowsResponse)
            yield batch
            if batch.done:
                return

    def interrupt_stream(self, timeout: float | None) -> None:
        """Stop reading a ROWS stream: send INTERRUPT and discard until its EMPTY (§5.4)."""
        if self._conn.state is not ClientState.STREAMING:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        self._send(self._start(InterruptRequest(0)), deadline)
        self._receive(deadline)


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
    if isinstance(value, Request) and dataclasses.is_dataclass(value):
        return 16 + sum(_size_bound(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 1 << 62


def _bytes_text(size: int) -> str:
    if size and size % _MIB == 0:
        return f"{size} bytes ({size // _MIB} MiB)"
    return f"{size} bytes"


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left
