"""The listener: accepting client connections and serving each one on its own thread.

The listener accepts TCP (``host:port``) or abstract Unix (``@name``) connections.
Each connection gets a thread that drives a sans-I/O
:class:`~dqlitepy.wire.ServerConnection` and a :class:`~dqlitepy.server.gateway.Gateway`.
A peer that breaks the framing (unknown protocol version, a 0-word or oversized
message) is disconnected; a request that is framed correctly but cannot be
served is answered with a FAILURE and the connection goes on
(``docs/architecture.md``, "Safety of the SQL surface").
A connection that sends CONNECT is handed over to Raft.

The bounds of :mod:`dqlitepy.server.limits` are enforced here, where the I/O
is: the connection table (a newcomer past ``max_connections`` takes the slot of
the connection idle longest), the idle and request timeouts (kernel receive
timeouts, so that the socket stays blocking), and the request memory a large
request reserves before its body is read.

Responses are never sent with a blocking ``sendall`` (a kernel send timeout
starts again with every partial send): :class:`~dqlitepy.server.sockio.Sender`
sends without blocking and charges its waits for the client to the response's
:class:`~dqlitepy.server.limits.SendAllowance`; a ROWS batch is produced only
once the previous one was taken, and a send that waits makes the session drop
its unused cached pages first.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Protocol

from ..wire import (
    NEED_DATA,
    BadRequest,
    ConnectRequest,
    ErrorCode,
    FailureResponse,
    Handshake,
    Incoming,
    MessageTooLarge,
    ProtocolError,
    QueryRequest,
    QuerySqlRequest,
    Request,
    Response,
    ServerConnection,
    encode_message,
)
from ..wire.connection import ServerEvent
from .gateway import Gateway, RowsChunk
from .limits import SMALL_BODY, ConnectionTable, Limits, MemoryBudget, Phase, Slot
from .sockio import Sender, SocketTimeouts, Stalled, send_nowait
from .stats import INVALID, OK, RequestStats, outcome_of, slot_of

__all__ = ["ConnectionHandler", "Listener", "bind"]

log = logging.getLogger("dqlitepy.server")

_RECV_SIZE = 256 * 1024
# accept() errors that leave the listener usable, and the pause before trying again.
_ACCEPT_RETRY = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EPROTO}
)
_ACCEPT_RETRY_DELAY = 0.1
# Out of descriptors, after shutting a connection down: time for its thread to close it.
_EVICTED_CLOSE_DELAY = 0.005
# Warnings a flood of clients would repeat are logged at most this often (seconds).
_LOG_EVERY = 60.0
# SO_LINGER on, 0 s: close() resets the connection and drops unsent data.
_RESET = struct.pack("ii", 1, 0)
# A connection waiting for request memory looks this often whether it should stop waiting.
_RESERVE_SLICE = 0.25
# _Connection._receive's default: the caller did not look at what is buffered.
_UNKNOWN: Incoming | None = Incoming(-1, None)
# The requests the read fast path takes (Gateway.read_fast), and their stats slots.
_READS = {cls: slot_of(cls.TYPE) for cls in (QueryRequest, QuerySqlRequest)}


class ConnectionHandler(Protocol):
    """What the listener needs from its node."""

    def gateway(self, sock: socket.socket) -> Gateway:
        """A gateway for a new client connection (runs on the connection's thread)."""

    def adopt(self, sock: socket.socket, node_id: int, address: str, data: bytes) -> bool:
        """Hand a connection that sent CONNECT to Raft; False: refuse it (it is closed)."""


def bind(family: int, sockaddr: str | tuple[str, int]) -> socket.socket:
    """A listening socket on ``sockaddr`` (see ``node.parse_listen_address``)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        # A burst of clients past a short backlog waits a second for SYN retries.
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


class Listener:
    """Accepts client connections and serves each on its own thread.

    Args:
        sock: a bound, listening socket (TLS-wrapped or not); the listener owns it.
        limits: the node's bounds.
        handler: the node.
        closing: set when the node closes: connections stop after the request
            they serve, waits for request memory give up, accepting stops.
        name: names the accepting thread.
        requests: where each connection counts the requests it serves.
    """

    def __init__(
        self,
        sock: socket.socket,
        limits: Limits,
        handler: ConnectionHandler,
        closing: threading.Event,
        name: str,
        requests: RequestStats | None = None,
    ) -> None:
        self._sock: socket.socket | None = sock
        self.limits = limits
        self.handler = handler
        self.closing = closing
        self.requests = RequestStats() if requests is None else requests
        self.table: ConnectionTable[socket.socket] = ConnectionTable(limits.max_connections)
        self.budget = MemoryBudget(limits.request_memory)
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._failing_since = -math.inf
        self._limit_warned = -math.inf
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"dqlitepy-accept-{name}", daemon=True
        )

    def start(self) -> None:
        """Start accepting."""
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, close every connection and wait for their threads."""
        self.closing.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread.ident is not None:
            self._thread.join(timeout=10)
        with self._lock:
            connections = list(self._connections.items())
        for conn, _ in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _, thread in connections:
            thread.join(timeout=10)

    def forget(self, sock: socket.socket) -> None:
        """A connection's thread is done with ``sock``."""
        with self._lock:
            self._connections.pop(sock, None)

    # ------------------------------------------------------------ accepting

    def _accept_loop(self) -> None:
        listener = self._sock
        assert listener is not None
        while not self.closing.is_set():
            try:
                sock, _ = listener.accept()
            except OSError as exc:
                if self.closing.is_set() or not self._accept_failed(exc):
                    return
                continue
            self._admit(sock)

    def _accept_failed(self, exc: OSError) -> bool:
        """Wait after a failed accept(); False if the listener is broken."""
        if exc.errno not in _ACCEPT_RETRY:
            log.error("the listener failed: %s", exc)
            return False
        # Out of descriptors or memory, or a peer gone before its connection
        # was taken: the listener is fine, and serves again once clients leave.
        now = time.monotonic()
        if now - self._failing_since > _LOG_EVERY:
            log.warning("cannot accept connections: %s", exc)
        self._failing_since = now
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            # Free a descriptor the way a full table frees a slot.
            evicted = self.table.evict()
            if evicted is not None:
                _shed(evicted)
                self.closing.wait(_EVICTED_CLOSE_DELAY)
                return True
        self.closing.wait(_ACCEPT_RETRY_DELAY)
        return True

    def _admit(self, sock: socket.socket) -> None:
        """Give an accepted connection a slot and a thread, or refuse it."""
        if sock.family != socket.AF_UNIX:
            # Fails on some systems when the peer has already reset.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self.closing.is_set():
                sock.close()
                return
            slot, evicted = self.table.admit(sock)
            thread = None
            if slot is not None:
                thread = threading.Thread(
                    target=self._serve, args=(sock, slot), name="dqlitepy-conn", daemon=True
                )
                self._connections[sock] = thread
        if evicted is not None:
            self._warn_limit("closing the connection idle longest to admit a new one")
            _shed(evicted)
        if thread is None:
            self._warn_limit("refusing a connection: every connection is serving a request")
            _fail_and_close(
                sock,
                f"too many connections: all {self.limits.max_connections} are serving "
                "requests; try again later",
            )
            sock.close()
            return
        thread.start()

    def _warn_limit(self, what: str) -> None:
        now = time.monotonic()
        if now - self._limit_warned > _LOG_EVERY:
            self._limit_warned = now
            log.warning(
                "%d client connections, the limit (--max-connections): %s (logged once a minute)",
                self.limits.max_connections,
                what,
            )

    def _serve(self, sock: socket.socket, slot: Slot[socket.socket]) -> None:
        _Connection(self, sock, slot).run()


def _shed(slot: Slot[socket.socket]) -> None:
    """Make an evicted connection's thread stop (it closes the socket itself)."""
    log.debug("closing a %s connection to admit a new one", slot.phase.value)
    with contextlib.suppress(OSError):
        slot.handle.shutdown(socket.SHUT_RDWR)


class _Closed(Exception):
    """The connection ends here (why was logged, or told to the client, already)."""


class _Connection:
    """One client connection, served on its own thread by :meth:`run`."""

    def __init__(self, listener: Listener, sock: socket.socket, slot: Slot[socket.socket]) -> None:
        self._listener = listener
        self._limits = listener.limits
        self._sock = sock
        self._slot = slot
        self._conn = ServerConnection(self._limits.max_message_size)
        self._gateway = listener.handler.gateway(sock)
        self._timeouts = SocketTimeouts(sock)
        self._sender = Sender(sock, self._limits.request_timeout, self._gateway.release_memory)
        # Its own object: the gateway holds it, and must not hold this one (a
        # cycle would keep the connection's buffers until the garbage collector runs).
        self._watch = _InterruptWatch(sock, self._conn)
        self._handed_over = False
        # Request memory reserved for the message being received or served.
        self._reserved = 0
        self._in_transaction = False
        self._stats = listener.requests.opened()

    def run(self) -> None:
        """Serve requests until the client leaves, a bound is hit or the node closes."""
        self._gateway.set_interrupt_check(self._watch.requested)
        try:
            # Kernel timeouts, not settimeout(): the socket stays blocking, so the
            # MSG_DONTWAIT reads of _InterruptWatch never wait.
            closing = self._listener.closing
            next_event = self._conn.next_event
            while not closing.is_set():
                event = next_event()
                # The usual two events first, without a call to _step.
                if event is NEED_DATA:
                    self._receive()
                elif type(event) in _READS and not self._in_transaction:
                    self._read(event)  # type: ignore[arg-type]
                else:
                    self._step(event)
        except _Closed:
            pass
        except MessageTooLarge as exc:
            _fail_and_close(self._sock, f"{exc} (--max-message-size)", self._conn.legacy)
        except ProtocolError as exc:
            log.debug("closing a client connection: %s", exc)
        except Stalled:
            log.debug(
                "closing a client connection that kept a response waiting for %g s "
                "(--request-timeout)",
                self._limits.request_timeout,
            )
            # A reset, not a FIN behind the unsent rest: the kernel drops that rest now
            # instead of holding it for a client that does not read.
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        except OSError as exc:
            log.debug("client connection failed: %s", exc)
        finally:
            self._listener.requests.closed(self._stats)
            self._release()
            self._listener.table.remove(self._slot)
            self._gateway.close()
            self._listener.forget(self._sock)
            if not self._handed_over:
                self._sock.close()

    def _step(self, event: ServerEvent) -> None:
        if event is NEED_DATA:
            self._receive()
        elif isinstance(event, Handshake):
            return
        elif self._watch.gone:
            raise _Closed
        elif isinstance(event, BadRequest):
            self._sender.start()
            self._sender.send(self._conn.send(FailureResponse(event.code, event.message)))
            self._release()
            self._stats.record(INVALID, outcome_of(event.code), 0.0)
        elif isinstance(event, ConnectRequest):
            self._hand_over(event)
        else:
            assert isinstance(event, Request)
            self._handle(event)

    def _enter(self, phase: Phase) -> None:
        if not self._listener.table.enter(
            self._slot, phase, in_transaction=self._in_transaction and phase is Phase.IDLE
        ):
            # Lost its slot to a newcomer: whatever it was receiving did not run.
            raise _Closed

    def _receive(self, incoming: Incoming | None = _UNKNOWN) -> None:
        """Receive more of the next message (``incoming``: the caller's ``conn.incoming()``)."""
        watch = self._watch
        if watch.read_ahead:
            watch.read_ahead = 0  # what was read ahead has been served
        if incoming is _UNKNOWN:
            incoming = self._conn.incoming()
        if incoming is None:
            if not self._listener.table.enter(
                self._slot, Phase.IDLE, in_transaction=self._in_transaction
            ):
                raise _Closed  # lost its slot to a newcomer while it served
            timeout = self._limits.idle_timeout
        else:
            timeout = self._receiving(incoming)
        data = self._timeouts.recv(_RECV_SIZE, timeout)
        if data is None:
            self._timed_out(idle=incoming is None, timeout=timeout)
        if not data:
            raise _Closed
        self._conn.receive_data(data)

    def _receiving(self, incoming: Incoming) -> float:
        """Account for a request arriving; how long it may still take."""
        self._enter(Phase.RECEIVING)
        deadline = self._slot.since + self._limits.request_timeout
        size = incoming.body_size
        if size is not None and size > SMALL_BODY and not self._reserved:
            budget = self._listener.budget
            if not self._reserve(budget, size, deadline):
                if not (self._slot.evicted or self._listener.closing.is_set()):
                    _fail_and_close(self._sock, _no_memory(size, budget), self._conn.legacy)
                raise _Closed
            self._reserved = size
        return deadline - time.monotonic()

    def _reserve(self, budget: MemoryBudget, size: int, deadline: float) -> bool:
        """Reserve request memory by ``deadline``, giving up early if the node closes or
        the connection loses its slot (nothing else would wake the wait)."""
        while True:
            left = deadline - time.monotonic()
            if budget.acquire(size, min(left, _RESERVE_SLICE)):
                return True
            if left <= _RESERVE_SLICE or self._slot.evicted or self._listener.closing.is_set():
                return False

    def _timed_out(self, *, idle: bool, timeout: float | None) -> None:
        if idle:
            log.debug("closing a connection idle for %s s", timeout)
        else:
            message = (
                f"request not received within {self._limits.request_timeout:g} s "
                "(--request-timeout)"
            )
            _fail_and_close(self._sock, message, self._conn.legacy)
        raise _Closed

    def _hand_over(self, event: ConnectRequest) -> None:
        self._timeouts.clear()  # Raft's transport sets its own
        data = self._conn.trailing_data()
        self._handed_over = self._listener.handler.adopt(
            self._sock, event.node_id, event.address, data
        )
        raise _Closed

    def _read(self, request: QueryRequest | QuerySqlRequest) -> None:
        """Serve a QUERY or QUERY_SQL, through the gateway's read fast path if it can;
        then, if nothing more is buffered, wait for the next request right here (the
        loop would only find out so, at the cost of a look for an event)."""
        if self._watch.gone:
            raise _Closed
        started = time.perf_counter()
        if not self._listener.table.enter(self._slot, Phase.HANDLING):
            raise _Closed  # lost its slot while the request arrived: it did not run
        served = self._gateway.read_fast(request)
        if not isinstance(served, bytes):
            self._sender.start()
            self._respond(request, started, served)
            return
        # Counted before it is sent: a test reads it as soon as the answer arrives.
        stats = self._stats
        stats.fast_reads += 1
        self._sender.send_response(self._conn.send_encoded_rows(served, done=True))
        if self._reserved:
            self._release()
        # A read outside a transaction leaves none open: _in_transaction stays False.
        stats.record_ok(_READS[type(request)], time.perf_counter() - started)
        incoming = self._conn.incoming()
        if incoming is None and not self._listener.closing.is_set():
            self._receive(None)

    def _handle(self, request: Request) -> None:
        started = time.perf_counter()
        # Lost its slot while the request arrived: it did not run.
        self._enter(Phase.HANDLING)
        self._sender.start()
        self._respond(request, started, None)

    def _respond(
        self,
        request: Request,
        started: float,
        responses: Iterator[Response | RowsChunk] | None,
    ) -> None:
        """Send the responses to ``request`` (``None``: the gateway's general path's)."""
        outcome = OK
        send = self._sender.send
        if responses is None:
            responses = self._gateway.handle(request)
        try:
            for item in responses:
                if isinstance(item, RowsChunk):
                    # The next batch is produced only once this one was taken.
                    send(self._conn.send_encoded_rows(item.data, done=item.done))
                    if not item.done and self._watch.requested():
                        self._gateway.interrupt()
                else:
                    if isinstance(item, FailureResponse):
                        outcome = outcome_of(item.code)
                    send(self._conn.send(item))
        finally:
            # Cut mid-result: the statement ends here, not when the generator is collected.
            close = getattr(responses, "close", None)
            if close is not None:
                close()
        self._release()
        self._in_transaction = self._gateway.in_transaction
        # Counted once answered: a request whose client left first has no outcome.
        self._stats.record(slot_of(request.TYPE), outcome, time.perf_counter() - started)

    def _release(self) -> None:
        self._listener.budget.release(self._reserved)
        self._reserved = 0


class _InterruptWatch:
    """Watches a connection while a statement runs: should the statement stop?

    It takes in whatever the client sent meanwhile and says stop if that is an
    INTERRUPT, or if the client went away (nobody will read the result).  At
    most ``_RECV_SIZE`` bytes are taken in ahead of the requests being served,
    or a client streaming during a long statement fills our memory.
    """

    def __init__(self, sock: socket.socket, conn: ServerConnection) -> None:
        self._sock = sock
        self._conn = conn
        #: The client went away.
        self.gone = False
        #: Bytes taken in ahead of the requests being served (the connection sets it
        #: back to 0 once they were served).
        self.read_ahead = 0

    def requested(self) -> bool:
        """True if the running statement should stop (runs on the connection's thread)."""
        if self.gone:
            return True
        if self.read_ahead >= _RECV_SIZE:
            # Read no further ahead; a reset connection still shows in SO_ERROR.
            self.gone = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
            return self.gone or self._conn.interrupt_pending()
        try:
            # Not select(): it fails on descriptors past FD_SETSIZE (1024).
            data = self._sock.recv(_RECV_SIZE - self.read_ahead, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return self._conn.interrupt_pending()  # nothing new from the client
        except OSError:
            data = b""
        if not data:
            self.gone = True
            return True
        self.read_ahead += len(data)
        self._conn.receive_data(data)
        return self._conn.interrupt_pending()


def _no_memory(size: int, budget: MemoryBudget) -> str:
    return (
        f"request of {size} bytes refused: the node's request memory ({budget.capacity} bytes, "
        "--request-memory) stayed in use by other requests; try again later"
    )


def _fail_and_close(sock: socket.socket, message: str, legacy: bool = False) -> None:
    """Send a FAILURE with ``message`` if the socket takes it at once, then shut it down.

    It answers whatever the client sent or is sending.  A client still sending its
    request reads it only if it reads before the shutdown resets the connection:
    the shutdown is what enforces the limit.  The caller closes the socket.
    """
    log.debug("closing a client connection: %s", message)
    failure = encode_message(FailureResponse(ErrorCode.SQLITE_ERROR, message), legacy=legacy)
    with contextlib.suppress(OSError):
        send_nowait(sock, memoryview(failure))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
