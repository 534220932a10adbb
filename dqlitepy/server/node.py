"""A dqlitepy node's server: the listener, one thread per client connection, and node state.

The listener accepts TCP (``host:port``) or abstract Unix (``@name``) connections.
Each connection gets a thread that drives a sans-I/O
:class:`~dqlitepy.wire.ServerConnection` and a :class:`~dqlitepy.server.gateway.Gateway`.
A peer that breaks the framing (unknown protocol version, a 0-word or oversized
message) is disconnected; a request that is framed correctly but cannot be
served is answered with a FAILURE and the connection goes on (``design.md`` §4).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

import cbor2

from ..engine import Engine, Session
from ..wire import (
    NEED_DATA,
    BadRequest,
    ConnectRequest,
    FailureResponse,
    Handshake,
    NodeInfo,
    NodeRole,
    ProtocolError,
    Request,
    ServerConnection,
)
from ..wire.framing import DEFAULT_MAX_MESSAGE_SIZE
from .gateway import Gateway, GatewayFailure, RowsChunk

__all__ = ["BOOTSTRAP_ID", "NodeServer", "parse_listen_address"]

log = logging.getLogger("dqlitepy.server")

#: The id go-dqlite's app gives the first node of a cluster; we do the same.
BOOTSTRAP_ID = 0x2DC171858C3155BE

_IDENTITY_FILE = "node-identity.cbor"
_IDENTITY_VERSION = 1
_RECV_SIZE = 256 * 1024
_NOT_LEADER = 10250
# accept() errors that leave the listener usable, and the pause before trying again.
_ACCEPT_RETRY = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EPROTO}
)
_ACCEPT_RETRY_DELAY = 0.1


def parse_listen_address(address: str) -> tuple[int, str | tuple[str, int]]:
    """Split ``host:port`` / ``[v6]:port`` / ``@name`` into a family and socket address."""
    if address.startswith("@"):
        if len(address) < 2:
            raise ValueError(f"invalid abstract socket address {address!r}")
        return socket.AF_UNIX, "\0" + address[1:]
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        raise ValueError(f"invalid node address {address!r}: expected host:port or @name")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], int(port))
    return socket.AF_INET, (host, int(port))


def _load_identity(data_dir: Path, bootstrap: bool) -> int:
    path = data_dir / _IDENTITY_FILE
    if path.exists():
        with path.open("rb") as f:
            record = cbor2.load(f)
        if not isinstance(record, dict) or record.get("version") != _IDENTITY_VERSION:
            raise ValueError(f"unrecognised node identity file {str(path)!r}")
        node_id = record["id"]
        if not isinstance(node_id, int):
            raise ValueError(f"bad node id in {str(path)!r}")
        return node_id
    node_id = BOOTSTRAP_ID if bootstrap else secrets.randbits(63) | 1
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        cbor2.dump({"version": _IDENTITY_VERSION, "id": node_id}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return node_id


class NodeServer:
    """One node: its databases, its listener and its client connections.

    Args:
        address: where to listen (``host:port``, port 0 picks a free one, or
            ``@name`` for an abstract Unix socket).
        data_dir: the node's directory (created if missing).
        join: addresses of existing members (used by replication).
        max_message_size: the largest request accepted.
        busy_timeout_ms: how long a writer waits for another writer's lock.
        max_connections: client connections served at once; more are refused.
    """

    def __init__(
        self,
        address: str,
        data_dir: str | os.PathLike[str],
        *,
        join: Sequence[str] = (),
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        busy_timeout_ms: int = 5000,
        max_connections: int = 1024,
    ) -> None:
        parse_listen_address(address)
        self._requested_address = address
        self._address = address
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.join = list(join)
        self._id = _load_identity(self.data_dir, bootstrap=not self.join)
        self.engine = Engine(self.data_dir / "databases", busy_timeout_ms=busy_timeout_ms)
        self._max_message_size = max_message_size
        self._max_connections = max_connections
        self.weight = 0
        self.failure_domain = 0
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._closing = threading.Event()

    # ------------------------------------------------------------ identity

    @property
    def id(self) -> int:
        """This node's Raft id."""
        return self._id

    @property
    def address(self) -> str:
        """The address clients dial (with the real port once started)."""
        return self._address

    # ------------------------------------------------------------- NodeContext

    def leader(self) -> tuple[int, str]:
        """A single node always leads itself."""
        return self._id, self._address

    def is_leader(self) -> bool:
        """True when this node is the leader."""
        return True

    def cluster(self) -> list[NodeInfo]:
        """The members: just this node, as a voter."""
        return [NodeInfo(self._id, self._address, NodeRole.VOTER)]

    def open_session(self, name: str) -> Session:
        """Open a session on database ``name``."""
        return self.engine.session(name)

    def dump(self, name: str) -> list[tuple[str, bytes]]:
        """Return the files of database ``name``."""
        return self.engine.dump(name)

    def require_leader(self) -> None:
        """Refuse leader-only requests on a node that does not lead."""
        if not self.is_leader():
            raise GatewayFailure(_NOT_LEADER, "not leader")

    def commit_point(self, database: str, session: Session) -> None:
        """The write path's hand-over point: a transaction committed on ``session``.

        A single node commits locally: SQLite (``synchronous=FULL``) made it
        durable before this is called, so there is nothing to wait for.
        """

    def change_membership(self, request: Request) -> None:
        """Membership changes need replication, which a single node does not run."""
        raise GatewayFailure(1, "membership changes need a replicated cluster")

    # ----------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Bind the listener and start serving in background threads."""
        if self._listener is not None:
            raise RuntimeError("node already started")
        family, sockaddr = parse_listen_address(self._requested_address)
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
        if family != socket.AF_UNIX:
            host = self._requested_address.rpartition(":")[0]
            self._address = f"{host}:{sock.getsockname()[1]}"
        self._listener = sock
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"dqlitepy-accept-{self._address}", daemon=True
        )
        self._accept_thread.start()
        log.info("node %x serving on %s (data in %s)", self._id, self._address, self.data_dir)

    def close(self) -> None:
        """Stop serving: close the listener and every client connection, then wait."""
        self._closing.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=10)
        with self._lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in connections:
            thread.join(timeout=10)

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        failing = False
        while not self._closing.is_set():
            try:
                sock, _ = listener.accept()
            except OSError as exc:
                if self._closing.is_set():
                    return
                if exc.errno not in _ACCEPT_RETRY:
                    log.error("the listener failed: %s", exc)
                    return
                # Out of descriptors or memory, or a peer gone before its connection
                # was taken: the listener is fine, and serves again once clients leave.
                if not failing:
                    log.warning("cannot accept connections: %s", exc)
                failing = True
                self._closing.wait(_ACCEPT_RETRY_DELAY)
                continue
            failing = False
            with self._lock:
                if self._closing.is_set() or len(self._connections) >= self._max_connections:
                    log.warning("refusing a connection: %d already open", len(self._connections))
                    sock.close()
                    continue
                if sock.family != socket.AF_UNIX:
                    # Fails on some systems when the peer has already reset.
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                thread = threading.Thread(
                    target=self._serve, args=(sock,), name="dqlitepy-conn", daemon=True
                )
                self._connections[sock] = thread
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        conn = ServerConnection(self._max_message_size)
        gateway = Gateway(self)
        gone = False
        read_ahead = 0

        def interrupt_requested() -> bool:
            # Runs on this thread while a statement runs: take in whatever the
            # client sent meanwhile and stop if it is an INTERRUPT, or if the
            # client went away (nobody will read the result).  At most
            # _RECV_SIZE bytes are taken in ahead of the requests being served,
            # or a client streaming during a long statement fills our memory.
            nonlocal gone, read_ahead
            if gone:
                return True
            if read_ahead >= _RECV_SIZE:
                # Read no further ahead; a reset connection still shows in SO_ERROR.
                gone = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
                return gone or conn.interrupt_pending()
            try:
                # Not select(): it fails on descriptors past FD_SETSIZE (1024).
                data = sock.recv(_RECV_SIZE - read_ahead, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return conn.interrupt_pending()  # nothing new from the client
            except OSError:
                gone = True
                return True
            if not data:
                gone = True
                return True
            read_ahead += len(data)
            conn.receive_data(data)
            return conn.interrupt_pending()

        gateway.set_interrupt_check(interrupt_requested)
        try:
            while not self._closing.is_set():
                event = conn.next_event()
                if event is NEED_DATA:
                    read_ahead = 0  # what was read ahead has been served
                    data = sock.recv(_RECV_SIZE)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, Handshake):
                    continue
                elif gone:
                    return
                elif isinstance(event, BadRequest):
                    sock.sendall(conn.send(FailureResponse(event.code, event.message)))
                elif isinstance(event, ConnectRequest):
                    # Raft connections arrive with replication; until then, refuse.
                    return
                else:
                    assert isinstance(event, Request)
                    for item in gateway.handle(event):
                        if isinstance(item, RowsChunk):
                            sock.sendall(conn.send_encoded_rows(item.data, done=item.done))
                            if not item.done and interrupt_requested():
                                gateway.interrupt()
                        else:
                            sock.sendall(conn.send(item))
        except ProtocolError as exc:
            log.debug("closing a client connection: %s", exc)
        except OSError as exc:
            log.debug("client connection failed: %s", exc)
        finally:
            gateway.close()
            with self._lock:
                self._connections.pop(sock, None)
            sock.close()
