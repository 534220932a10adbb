"""Socket I/O of a client connection: responses under their allowance, receive timeouts.

A response is sent without blocking.  When the client's socket is full, :class:`Sender`
waits for space with ``poll`` (``select`` fails on descriptors past 1,024) and charges
the wait to the response's :class:`~dqlitepy.server.limits.SendAllowance`: for each
1 MiB of a response, at most ``request_timeout`` of waiting.  A kernel send timeout
(``SO_SNDTIMEO``) would not do: it starts again with every partial send, so a client
taking in a trickle, or the few bytes TCP lets through a zero window, held its
connection for minutes.  A wait longer than :data:`_STALL_GRACE` first calls the
connection's ``shed`` hook, which makes its session drop the cached pages its
statement does not hold: a client that stops reading keeps little memory.  The hook
also runs after every :data:`_SHED_EVERY` bytes of a response, so that a large result
streaming to many clients at once does not fill each one's page cache first (a scan
never reads those pages again).

TLS sockets take the same path: ``ssl`` refuses ``MSG_DONTWAIT``, so one write at a
time runs non-blocking, at most :data:`_TLS_WRITE` bytes of it (OpenSSL reports a
write's progress only once it is whole), and an unfinished write is retried with
the same bytes, as OpenSSL requires.

Receives keep a blocking socket with a kernel timeout (:class:`SocketTimeouts`), so
that the ``MSG_DONTWAIT`` reads of the listener's interrupt watch never wait.  Over
TLS a kernel timeout does not end a read either (the ``ssl`` module retries a blocking
read that timed out, so neither the request timeout nor the idle timeout ever fired):
a TLS read waits with ``poll`` and reads without blocking.
Everything here runs on the connection's own thread and takes no lock of its own; the
``shed`` hook takes the session's lock (level 2 of the hierarchy in
``docs/replication.md``) for one call into SQLite, with no other lock held, and nothing
is held while :class:`Sender` waits for the client.
"""

from __future__ import annotations

import math
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable

from .limits import SendAllowance

__all__ = ["Sender", "SocketTimeouts", "Stalled", "send_nowait"]

# A send that waits this long for the client releases the session's cached pages first.
_STALL_GRACE = 0.05
# A response sheds the session's unused cached pages after this many bytes, too.
_SHED_EVERY = 256 * 1024
# The most one TLS write takes: OpenSSL reports a write's progress only when it is done.
_TLS_WRITE = 64 * 1024


class Stalled(Exception):
    """The client kept a response waiting past its allowance (the connection is cut)."""


class Sender:
    """Sends one connection's responses under the rule of :class:`SendAllowance`.

    Args:
        sock: the connection (plain or TLS), blocking.
        timeout: the request timeout: the waits allowed per window of the response.
        shed: frees the connection's spare memory; called when a send has waited
            :data:`_STALL_GRACE`, and every :data:`_SHED_EVERY` bytes.
    """

    def __init__(self, sock: socket.socket, timeout: float, shed: Callable[[], None]) -> None:
        self._sock = sock
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLOUT)
        self._allowance = SendAllowance(timeout)
        self._shed = shed
        self._unshed = 0  # bytes sent since the last shed

    def start(self) -> None:
        """A new response begins."""
        self._allowance.start()

    def send(self, data: bytes) -> None:
        """Send ``data`` whole, waiting for the client as long as the allowance lets.

        Raises:
            Stalled: the client did not take it in time.
            OSError: the connection failed.
        """
        view = memoryview(data)
        while view:
            sent = send_nowait(self._sock, view[:_TLS_WRITE] if self._tls else view)
            if sent:
                self._allowance.sent(sent)
                view = view[sent:]
                self._unshed += sent
                if self._unshed >= _SHED_EVERY:
                    self._shed()
                    self._unshed = 0
            else:
                self._wait()

    def send_response(self, data: bytes) -> None:
        """:meth:`start` a response and :meth:`send` it whole: one system call when the
        socket takes it at once (the usual small response)."""
        if not self._tls:
            try:
                sent = self._sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                # Nothing was waited for, so the allowance has nothing to count (it
                # is started afresh only for a response that waits); _unshed counts
                # it, as send() would.
                self._unshed += sent
                if self._unshed >= _SHED_EVERY:
                    self._shed()
                    self._unshed = 0
                return
            self._allowance.start()
            if sent:
                self._allowance.sent(sent)
                self._unshed += sent
                data = data[sent:]
        else:
            self._allowance.start()
        self.send(data)

    def _wait(self) -> None:
        """Wait for socket space; raise Stalled once the allowance is spent."""
        left = self._allowance.left
        if left <= 0:
            raise Stalled
        started = time.monotonic()
        ready = self._poll.poll(_milliseconds(min(left, _STALL_GRACE)))
        if not ready and left > _STALL_GRACE:
            self._shed()
            self._unshed = 0
            ready = self._poll.poll(_milliseconds(left - (time.monotonic() - started)))
        self._allowance.waited(time.monotonic() - started)
        if not ready and self._allowance.left <= 0:
            raise Stalled


def _milliseconds(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


def send_nowait(sock: socket.socket, data: memoryview) -> int:
    """Send what the socket takes at once (0: it is full); TLS or not.

    A TLS write that could not finish must be retried with the same bytes: the
    caller does, as it advances only by what was sent.
    """
    if not isinstance(sock, ssl.SSLSocket):
        try:
            return sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
    # ssl refuses MSG_DONTWAIT: non-blocking for this one write.  Renegotiation is off
    # (server/tls.py), so a write never waits for a read.
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        return sock.send(data)
    except ssl.SSLWantWriteError:
        return 0
    finally:
        sock.settimeout(timeout)


def _recv_tls(sock: ssl.SSLSocket, size: int, seconds: float | None) -> bytes | None:
    """``recv(size)`` of a TLS socket within ``seconds``; None if nothing came in time.

    The node's TLS sockets read ``MSG_DONTWAIT`` without blocking (``server/tls.py``);
    the handshake runs inside these reads.  Bytes OpenSSL already decrypted are taken
    at once.
    """
    deadline = None if seconds is None else time.monotonic() + seconds
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while True:
        if not sock.pending():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if not poller.poll(None if left is None else _milliseconds(left)):
                continue  # the deadline, checked above
        try:
            return sock.recv(size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue  # not a whole TLS record yet, or a handshake step


class SocketTimeouts:
    """SO_RCVTIMEO on a blocking socket (0 = none), set only when changed.

    Sends use no kernel timeout (see :class:`Sender`); :meth:`clear` clears both
    for Raft, whose transport sets its own.
    """

    _TIMEVAL = struct.Struct("@ll")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._tls = sock if isinstance(sock, ssl.SSLSocket) else None
        self._receive: float | None = None

    def _set(self, option: int, seconds: float | None) -> None:
        if seconds is None:
            value = self._TIMEVAL.pack(0, 0)
        else:
            micros = max(1, math.ceil(seconds * 1e6))  # 0 would mean "no timeout"
            value = self._TIMEVAL.pack(*divmod(micros, 1_000_000))
        self._sock.setsockopt(socket.SOL_SOCKET, option, value)

    def recv(self, size: int, seconds: float | None) -> bytes | None:
        """``recv(size)`` waiting at most ``seconds`` (None: forever); None if it timed out."""
        if seconds is not None and seconds <= 0:
            return None
        if seconds != self._receive:
            self._set(socket.SO_RCVTIMEO, seconds)
            self._receive = seconds
        if self._tls is not None:
            return _recv_tls(self._tls, size, seconds)
        try:
            return self._sock.recv(size)
        except BlockingIOError:
            return None

    def clear(self) -> None:
        self._set(socket.SO_RCVTIMEO, None)
        self._set(socket.SO_SNDTIMEO, None)
        self._receive = None
