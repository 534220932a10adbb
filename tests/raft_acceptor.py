"""A listener that serves only Raft, for the transport tests and the Raft benchmark.

A full node server hands Raft connections over from its gateway when a CONNECT arrives
(``dqlitepy/server/node.py``); the transport tests run PySyncObj nodes without a server, so
:class:`ConnectAcceptor` plays that part: it reads the dqlite handshake and CONNECT with the
wire layer's :class:`~dqlitepy.wire.ServerConnection`, then calls
:meth:`~dqlitepy.replication.transport.SecureTransport.adopt`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading

from dqlitepy.replication.transport import SecureTransport, split_address
from dqlitepy.wire import NEED_DATA, ConnectRequest, Handshake, ProtocolError, ServerConnection

__all__ = ["ConnectAcceptor"]

log = logging.getLogger("dqlitepy.tests.raft_acceptor")


class ConnectAcceptor:
    """A minimal dqlite listener that serves only Raft: handshake + CONNECT, then ``adopt``.

    Anything but a handshake followed by CONNECT closes the connection.

    Args:
        address: ``host:port`` to listen on (port 0 picks one; see :attr:`address`).
        handshake_timeout: how long a peer may take to send the handshake and CONNECT.
        ssl_context: a server context: peers must speak TLS first (as to a TLS node).
    """

    def __init__(
        self,
        address: str,
        *,
        handshake_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        host, port = split_address(address, allow_port_zero=True)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family)
        self._listener.settimeout(0.1)  # so close() is noticed promptly
        bound = self._listener.getsockname()[1]
        self.address = f"[{host}]:{bound}" if family == socket.AF_INET6 else f"{host}:{bound}"
        self._handshake_timeout = handshake_timeout
        self._ssl_context = ssl_context
        self._transport: SecureTransport | None = None
        self._lock = threading.Lock()
        self._pending: set[socket.socket] = set()
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name=f"raft-acceptor {self.address}", daemon=True
        )
        self._thread.start()

    def attach(self, transport: SecureTransport | None) -> None:
        """Hand future Raft connections to ``transport`` (None: refuse them)."""
        with self._lock:
            self._transport = transport

    def close(self) -> None:
        """Stop listening and close connections not yet handed over."""
        self._closed.set()
        self._thread.join()
        self._listener.close()
        with self._lock:
            pending, self._pending = self._pending, set()
        for sock in pending:
            sock.close()

    def __enter__(self) -> ConnectAcceptor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if self._closed.is_set():
                    sock.close()
                    return
                self._pending.add(sock)
            threading.Thread(
                target=self._handshake, args=(sock,), name="raft-handshake", daemon=True
            ).start()

    def _handshake(self, sock: socket.socket) -> None:
        handed_over = False
        try:
            sock.settimeout(self._handshake_timeout)
            if self._ssl_context is not None:
                plain = sock
                with self._lock:
                    if plain not in self._pending:
                        return  # closed meanwhile
                    # Wrapping detaches ``plain``: track the TLS socket from now on.
                    sock = self._ssl_context.wrap_socket(
                        plain, server_side=True, do_handshake_on_connect=False
                    )
                    self._pending.discard(plain)
                    self._pending.add(sock)
                assert isinstance(sock, ssl.SSLSocket)
                sock.do_handshake()
            # A CONNECT body is a u64 and an address: nothing bigger is worth buffering.
            conn = ServerConnection(4096, accept_legacy=False)
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    data = sock.recv(4096)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, Handshake):
                    continue
                elif isinstance(event, ConnectRequest):
                    with self._lock:
                        transport = self._transport
                        if transport is None or sock not in self._pending:
                            return
                        self._pending.discard(sock)
                        handed_over = True
                    transport.adopt(sock, event.node_id, event.address, conn.trailing_data())
                    return
                else:
                    return  # a client request: this listener serves Raft only
        except (OSError, ProtocolError) as exc:
            log.debug("raft acceptor %s: dropping a connection: %s", self.address, exc)
        finally:
            if not handed_over:
                with self._lock:
                    self._pending.discard(sock)
                sock.close()
