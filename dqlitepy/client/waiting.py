"""The blocking waiter: drives the driver's generators with blocking sockets.

:func:`wait` runs a generator of :mod:`dqlitepy.client.needs` to its end,
answering each need with a blocking call: :func:`dial` opens a
:class:`SocketTransport`, whose :meth:`~SocketTransport.send` and
:meth:`~SocketTransport.recv` wait on the socket with its timeout set to what
is left before the need's deadline (``TimeoutError`` past it), and a
:class:`~dqlitepy.client.needs.Sleep` sleeps.  An exception a need raises,
``KeyboardInterrupt`` included, is thrown into the generator at the ``yield``
that asked, as if the blocking call had raised it there.

OpenSSL objects must not be used by two threads at once, so on a TLS socket
:meth:`SocketTransport.send_urgent` (an INTERRUPT from another thread) leaves
its bytes for the owner's thread, which waits for responses in short slices and
sends them in between.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

from .address import parse_address
from .needs import Dial, Gen, Recv, Send, Sleep
from .tls import loaded_ssl

if TYPE_CHECKING:
    import ssl


__all__ = ["SocketTransport", "dial", "wait"]

log = logging.getLogger("dqlitepy.client")

T = TypeVar("T")

_RECV_SIZE = 256 * 1024
# How long the owner of a TLS connection waits at a time for a response, so that an
# interrupt from another thread goes out within that delay.
_TLS_SLICE = 0.05
# How long a failed TLS write waits for the alert that may say why (_alert).
_ALERT_WAIT = 0.5


def wait(gen: Gen[T]) -> T:
    """Run ``gen`` to its end, answering its needs with blocking calls; return its value."""
    answer: Any = None
    error: BaseException | None = None
    send = gen.send
    while True:
        try:
            if error is None:
                need = send(answer)
            else:
                need, error = gen.throw(error), None
        except StopIteration as stop:
            value: T = stop.value
            return value
        answer = None
        kind = type(need)
        try:
            # The common needs first: one point query is a Send and a Recv.
            if kind is Recv:
                answer = need.transport.recv(need.deadline)  # type: ignore[union-attr]
            elif kind is Send:
                need.transport.send(need.data, need.deadline)  # type: ignore[union-attr]
            elif kind is Dial:
                assert isinstance(need, Dial)
                answer = dial(need.address, need.timeout, need.ssl_context)
            else:
                assert isinstance(need, Sleep)
                time.sleep(need.seconds)
        except BaseException as exc:  # thrown into the generator, which decides
            error = exc


def dial(
    address: str, timeout: float, ssl_context: ssl.SSLContext | None = None
) -> SocketTransport:
    """Open a blocking socket to a node within ``timeout`` seconds, with TLS if ``ssl_context``."""
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
        return SocketTransport(sock, address)
    try:
        # The handshake runs here, under the connect timeout the socket still has.
        host = sockaddr[0] if isinstance(sockaddr, tuple) else None
        return SocketTransport(ssl_context.wrap_socket(sock, server_hostname=host), address)
    except BaseException:
        sock.close()
        raise


def _alert(sock: socket.socket) -> ssl.SSLError | None:
    """The TLS alert that ended a connection a write found closed, if one came.

    With TLS 1.3 the server judges the client's certificate after the client's
    side of the handshake is over: a refused certificate shows up as an alert
    waiting to be read, while the first write fails with a bare EOF or reset.
    """
    tls = loaded_ssl()  # a TLS socket exists: ssl is loaded
    assert tls is not None
    try:
        sock.settimeout(_ALERT_WAIT)
        sock.recv(1)
    except tls.SSLError as exc:
        if not isinstance(exc, tls.SSLEOFError | tls.SSLZeroReturnError | tls.SSLSyscallError):
            alert: ssl.SSLError = exc
            return alert
    except (OSError, ValueError):
        pass
    return None


class SocketTransport:
    """A blocking socket (a TLS one too) as a :class:`~dqlitepy.client.needs.Transport`.

    Args:
        sock: a connected socket; the transport owns it from now on.
        address: the address it was dialled with (reported in the log).
    """

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.address = address
        self._sock: socket.socket | None = sock
        ssl = loaded_ssl()  # a TLS socket exists only once ssl is loaded
        self._tls = ssl is not None and isinstance(sock, ssl.SSLSocket)
        # An INTERRUPT another thread asked for, sent by the owner's thread (TLS only).
        self._urgent = b""
        # Serialises writes: send_urgent() runs on another thread while the owner sends.
        self._lock = threading.Lock()

    @property
    def tls(self) -> bool:
        """True if the socket runs TLS."""
        return self._tls

    @property
    def closed(self) -> bool:
        """True once the socket is closed."""
        return self._sock is None

    def close(self) -> None:
        """Close the socket; idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _open_socket(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            raise ConnectionResetError(f"the connection to {self.address} is closed")
        return sock

    def send(self, data: bytes, deadline: float | None) -> None:
        """Send all of ``data`` before ``deadline`` (``TimeoutError`` past it)."""
        sock = self._open_socket()
        if self._urgent:
            with self._lock:
                data, self._urgent = self._urgent + data, b""
        sock.settimeout(_remaining(deadline))
        with self._lock:
            try:
                sock.sendall(data)
            except TimeoutError:
                raise  # the deadline: waiting for an alert would wait past it
            except OSError as exc:  # a reset, or an ssl.SSLError (ssl may not be loaded)
                alert = _alert(sock) if self._tls else None
                if alert is None:
                    raise
                raise alert from exc

    def recv(self, deadline: float | None) -> bytes:
        """Read what arrives before ``deadline``: at least one byte, or ``b""`` at EOF."""
        sock = self._open_socket()
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

    def send_urgent(self, data: bytes) -> bool:
        """Send ``data`` now (plain sockets), or leave it for the owner's thread (TLS)."""
        sock = self._sock
        if sock is None:
            return False
        with self._lock:
            if self._tls:
                # The owner, waiting for the response, sends it within _TLS_SLICE.
                self._urgent += data
                return True
            try:
                sock.sendall(data)
            except OSError:
                return False
        return True

    def is_alive(self) -> bool:
        """Check without blocking that the peer has not closed the connection."""
        sock = self._sock
        if sock is None:
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
                except OSError as exc:
                    ssl = loaded_ssl()
                    if self._tls and ssl is not None and isinstance(exc, ssl.SSLWantReadError):
                        return True  # a TLS record with nothing for us (a session ticket)
                    raise
                finally:
                    sock.setblocking(True)
        except (OSError, ValueError):
            data = b""
        self.close()
        if data:
            log.warning("unsolicited data from %s; dropping the connection", self.address)
        return False


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left
