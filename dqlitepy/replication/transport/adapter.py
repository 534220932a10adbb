"""The PySyncObj transport: :class:`SecureTransport` and the class factory that binds its key.

PySyncObj calls ``send``, ``addNode``, ``dropNode`` and ``destroy`` and expects
``_onNodeConnected``, ``_onNodeDisconnected`` and ``_onMessageReceived`` back; this module
is where those meet the links (``link.py``), the sessions (``session.py``) and the message
checks (``messages.py``).  It is the only part of the transport that knows PySyncObj's
transport interface and node objects.

**Threads.**  Everything that touches PySyncObj state or a Raft socket runs on PySyncObj's
tick thread, driven by its poller (``syncObj._poller``) and its tick callbacks.  ``adopt``
only queues the socket and writes a byte to a pipe registered in that poller.  Dialling is a
non-blocking ``connect`` completed by a writable event, so no helper thread and no lock is
needed around PySyncObj (the only price: a host *name* is resolved on the tick thread, through
PySyncObj's cache; IP addresses cost nothing).

**Identity and duplicates.**  A peer counts as connected for PySyncObj (``_onNodeConnected``)
only once its AUTH frame verified.  Both sides dial (a restarted node reconnects at once); if
two authenticated connections exist between a pair, both ends keep the one dialled by the
smaller address (or, for two dialled by the same side, the newer: its dialer only redials
after giving the old one up).  Lost peers are redialled every ``connectionRetryTime``.

**Strangers and key checks.**  A voter accepts Raft traffic only from the members of its
configuration.  A stranger (a CONNECT naming another address) still gets the acceptor's HELLO
and AUTH frame, and is disconnected right after: that is how a node about to join proves to
itself that the cluster holds its key before it asks to be added
(:func:`.keycheck.check_cluster_key`).  The AUTH frame is bound to both nonces and to the
direction, so it is worth nothing in any other session (a claim of a member's address gets
as much).  Two clusters sharing a key are strangers too: a peer whose AUTH frame names
another cluster id is refused like a wrong key (``session.py``, :class:`.ClusterMismatch`).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import math
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import cbor2
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.node import Node
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.transport import Transport

from .addresses import split_address
from .link import Link, LinkOwner, tune_socket
from .messages import (
    APPEND_CHUNK_TARGET,
    RaftMessageError,
    check_raft_message,
    decode_raft_message,
    split_append_entries,
)
from .session import DEFAULT_MAX_FRAME_SIZE, MIN_KEY_SIZE, FrameKind, SecureSession

__all__ = ["SecureTransport", "keep_newer_link", "secure_transport_class"]

log = logging.getLogger("dqlitepy.replication")

# Rejection warnings are rate-limited per claimed address.
_WARNING_INTERVAL: Final = 60
_READ: Final[int] = POLL_EVENT_TYPE.READ
_ERROR: Final[int] = POLL_EVENT_TYPE.ERROR
#: How often a tick checks the links' timers and dials missing peers (seconds).
TIMER_CHECK: Final = 0.02


def keep_newer_link(
    self_address: str, peer_address: str, current_dialer: str, newer_dialer: str
) -> bool:
    """Of two authenticated links between the same pair, should the newer one stay?

    Both ends must answer alike without talking, so the answer depends only on which side
    dialled each link: links dialled by different sides → keep the one dialled by the
    smaller address; links dialled by the same side → keep the newer one (that side redials
    only after giving the older one up, so the older one is dead or dying).
    """
    if current_dialer == newer_dialer:
        return True
    return newer_dialer == min(self_address, peer_address)


@dataclass(frozen=True, slots=True)
class _Settings:
    cluster_key: bytes
    node_id: int
    max_frame_size: int
    on_created: Callable[[SecureTransport], None] | None
    ssl_context: ssl.SSLContext | None = None
    cluster_id: Callable[[], str | None] | None = None


_Adopted = tuple[socket.socket, int, str, bytes]


class SecureTransport(Transport):  # type: ignore[misc]  # PySyncObj is untyped
    """PySyncObj transport: one dqlite address per node, HMAC-authenticated cbor2 frames.

    Build the class with :func:`secure_transport_class` (PySyncObj instantiates
    ``transportClass(syncObj, selfNode, otherNodes)`` itself, so the key travels in the
    class).  Node ids must be ``"host:port"`` addresses (:class:`RaftNode`).

    Attributes:
        rejected_connections: connections closed because the peer failed to authenticate,
            broke the protocol or sent a message of no known shape (a security counter).
    """

    _settings: ClassVar[_Settings | None] = None

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Iterable[Any]) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        settings = self._settings
        if settings is None:
            raise TypeError("build the transport class with secure_transport_class(cluster_key)")
        if selfNode is None:
            raise ValueError("read-only PySyncObj nodes are not supported by SecureTransport")
        self._cluster_key = settings.cluster_key
        # Read for every new link: a node of an older directory learns its cluster's id
        # from the log while it runs (session.py, ClusterMismatch).
        self._cluster_id = settings.cluster_id or (lambda: None)
        self.node_id = settings.node_id
        self.max_frame_size = settings.max_frame_size
        self.self_address = str(selfNode.id)
        split_address(self.self_address)
        self._syncobj = syncObj
        self._poller: Any = syncObj._poller
        conf = syncObj.conf
        self._timeout = float(conf.connectionTimeout)
        self._retry = float(conf.connectionRetryTime)
        self._keepalive: tuple[int, int, int] | None = conf.tcp_keepalive
        # Ping well within the peer's timeout so an idle link is never mistaken for dead.
        self._ping_interval = self._timeout / 4
        self.rejected_connections = 0
        #: Accept authenticated peers missing from the configuration (set on
        #: nodes that do not vote: a stranger cannot disrupt their elections).
        self.accept_strangers = False
        self._last_warning: dict[tuple[str, str], float] = {}
        # All a link may use of this transport (instead of its private members).
        self._link_owner = LinkOwner(
            poller=self._poller,
            self_address=self.self_address,
            node_id=self.node_id,
            high_water=self.max_frame_size,
            ssl_context=settings.ssl_context,
            on_authenticated=self._on_link_authenticated,
            on_payload=self._on_payload,
            on_closed=self._on_link_closed,
        )

        self._nodes: dict[str, Any] = {}  # address -> PySyncObj's node object
        self._open: dict[str, Link] = {}  # address -> the authenticated link in use
        self._dialing: dict[str, Link] = {}  # address -> our dial not yet authenticated
        self._links: set[Link] = set()
        self._last_dial: dict[str, float] = {}
        # The last AppendEntries encoded (tick thread), for its other followers.
        self._last_encoded: tuple[dict[str, Any], list[bytes]] | None = None
        self._next_timer_check = 0.0  # tick thread

        # The only state shared with other threads: sockets handed over by ``adopt``.
        self._adopt_lock = threading.Lock()
        self._adopted: list[_Adopted] = []
        self._destroyed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller.subscribe(self._wake_r, self._on_wake, _READ | _ERROR)

        for node in otherNodes:
            self.addNode(node)
        syncObj.addOnTickCallback(self._on_tick)
        if settings.on_created is not None:
            settings.on_created(self)

    # -- PySyncObj's Transport interface (tick thread, or the constructing thread)

    def addNode(self, node: Any) -> None:
        """Add a peer; it is dialled on the next tick."""
        address = str(node.id)
        split_address(address)
        if address != self.self_address:
            self._nodes[address] = node
            self._next_timer_check = 0.0  # dialled at the very next tick

    def dropNode(self, node: Any) -> None:
        """Forget a peer and close its connections."""
        address = str(node.id)
        self._last_dial.pop(address, None)
        known = self._nodes.pop(address, None)  # first: no redial when its links close
        was_open = address in self._open
        for link in [link for link in self._links if link.address == address]:
            link.close("node removed from the cluster")
        if known is not None and was_open:
            self._onNodeDisconnected(known)  # as PySyncObj's TCPTransport reports it

    def send(self, node: Any, message: Any) -> bool:
        """Send one of PySyncObj's messages; False if there is no authenticated link to it."""
        address = str(node.id)
        link = self._open.get(address)
        if link is None:
            return False
        try:
            bodies = self._encode(message)
        except RaftMessageError as exc:
            log.error("not sending a message to %s: %s", address, exc)
            return False
        for body in bodies:
            if len(body) >= self.max_frame_size:
                log.error(
                    "not sending a %r message of %d bytes to %s: over the %d-byte frame limit",
                    message.get("type"),
                    len(body),
                    address,
                    self.max_frame_size,
                )
                return False
            if not link.send_frame(FrameKind.RAFT, body, reliable="serialized" in message):
                return False
        return True

    def _encode(self, message: Any) -> list[bytes]:
        """Check and encode a message: the frame bodies to send, in order.

        PySyncObj sends every follower its own AppendEntries, alike while they keep
        up (same entries, indexes and read round): the last one's bodies are reused,
        so a commit's entry is checked, split and encoded once, not once per
        follower.  The cache lives until the next tick.
        """
        cached = self._last_encoded
        if cached is not None and cached[0] == message:
            return cached[1]
        parts = split_append_entries(check_raft_message(message), APPEND_CHUNK_TARGET)
        bodies = [cbor2.dumps(part) for part in parts]
        if message.get("type") == "append_entries":
            # A copy: what PySyncObj does with its message afterwards cannot change it.
            entries = message.get("entries")
            kept = {**message, "entries": list(entries)} if entries is not None else dict(message)
            self._last_encoded = (kept, bodies)
        return bodies

    def destroy(self) -> None:
        """Close every connection and stop; sockets adopted later are closed at once."""
        self.setOnMessageReceivedCallback(None)
        self.setOnNodeConnectedCallback(None)
        self.setOnNodeDisconnectedCallback(None)
        self.setOnReadonlyNodeConnectedCallback(None)
        self.setOnReadonlyNodeDisconnectedCallback(None)
        with self._adopt_lock:
            if self._destroyed:
                return
            self._destroyed = True
            adopted, self._adopted = self._adopted, []
            self._poller.unsubscribe(self._wake_r)
            os.close(self._wake_r)
            os.close(self._wake_w)
        for sock, *_ in adopted:
            sock.close()
        self._syncobj.removeOnTickCallback(self._on_tick)
        self._nodes.clear()
        for link in list(self._links):
            link.close("transport destroyed")

    # -- handing sockets over (any thread)

    def adopt(self, sock: socket.socket, peer_id: int, peer_address: str, initial: bytes) -> None:
        """Take over a socket on which a peer sent the handshake and CONNECT.

        Callable from any thread (the server's connection thread); the socket then belongs
        to the transport, which closes it if the peer is not a member or fails to
        authenticate.

        Args:
            sock: the connected socket.
            peer_id: the node id from the CONNECT request.
            peer_address: the address from the CONNECT request (the peer's PySyncObj id).
            initial: bytes already read past the CONNECT message.
        """
        with self._adopt_lock:
            if not self._destroyed:
                self._adopted.append((sock, peer_id, peer_address, bytes(initial)))
                # Under the lock: destroy() closes the pipe under it, and a write to a
                # closed (or worse, reused) descriptor number must not happen.
                with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending
                    os.write(self._wake_w, b"\0")
                return
        sock.close()

    def _on_wake(self, fd: int, mask: int) -> None:
        with self._adopt_lock:
            if self._destroyed or fd != self._wake_r:
                return
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            adopted, self._adopted = self._adopted, []
        for sock, peer_id, peer_address, initial in adopted:
            self._accept(sock, peer_id, peer_address, initial)

    def _accept(self, sock: socket.socket, peer_id: int, peer_address: str, initial: bytes) -> None:
        if peer_address not in self._nodes and self.accept_strangers:
            # Still authenticated by the cluster key below; a member this node's
            # configuration does not know yet (a leader elected while it was away).
            self._nodes[peer_address] = Node(peer_address)
        # A stranger is still answered (then closed, see Link._process): a node about
        # to join checks its key that way before it asks to be added.  What it gets, a
        # HELLO and an AUTH frame bound to its own nonce, anyone can get today by
        # claiming a member's address; it is worth nothing in another session.
        stranger = peer_address not in self._nodes
        session = SecureSession(
            self._cluster_key,
            dialer=False,
            dialer_address=peer_address,
            acceptor_address=self.self_address,
            max_frame_size=self.max_frame_size,
            cluster_id=self._cluster_id(),
        )
        try:
            tune_socket(sock, self._keepalive)
            link = Link(
                self._link_owner,
                sock,
                session,
                address=peer_address,
                peer_id=peer_id,
                connecting=False,
                stranger=stranger,
            )
        except (OSError, ValueError) as exc:
            # E.g. the server closed it meanwhile (fileno -1: the poller refuses it); the
            # other queued sockets must still be served.
            log.info("dropping an adopted raft connection from %s: %s", peer_address, exc)
            sock.close()
            return
        self._links.add(link)
        link.feed(initial)

    # -- dialling and timers (tick thread)

    def next_dial(self) -> float:
        """When a peer is next due to be dialled (``time.monotonic()``), inf if none is.

        Raft's adaptive tick (``raft/tick.py``) sleeps no longer than this;
        everything else a link waits for is a socket event, or a timeout of
        seconds that a tick every 0.1 s checks in time.
        """
        due = math.inf
        for address in self._nodes:
            if address not in self._open and address not in self._dialing:
                due = min(due, self._last_dial.get(address, -self._retry) + self._retry)
        return due

    def _on_tick(self) -> None:
        self._last_encoded = None
        now = time.monotonic()
        # Dials, handshake and silence timeouts, pings: timers of a second or
        # more, checked at most every TIMER_CHECK rather than at each tick (a
        # leader ticks two or three times per commit).
        if now < self._next_timer_check:
            return
        self._next_timer_check = now + TIMER_CHECK
        for address in list(self._nodes):
            self._maybe_dial(address, now)
        for link in list(self._links):
            link.tick(now, self._timeout, self._ping_interval)

    def _maybe_dial(self, address: str, now: float) -> None:
        if address in self._open or address in self._dialing or address not in self._nodes:
            return
        if now - self._last_dial.get(address, -self._retry) < self._retry:
            return
        self._last_dial[address] = now
        host, port = split_address(address)
        try:
            ipaddress.ip_address(host)
            ip: str | None = host
        except ValueError:
            ip = globalDnsResolver().resolve(host)  # cached by PySyncObj
        if ip is None:
            log.info("cannot resolve raft peer %s", address)
            return
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        try:
            tune_socket(sock, self._keepalive)
            err = sock.connect_ex((ip, port))
        except OSError as exc:
            sock.close()
            log.info("cannot dial raft peer %s: %s", address, exc)
            return
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            sock.close()
            log.debug("cannot dial raft peer %s: %s", address, os.strerror(err))
            return
        session = SecureSession(
            self._cluster_key,
            dialer=True,
            dialer_address=self.self_address,
            acceptor_address=address,
            max_frame_size=self.max_frame_size,
            cluster_id=self._cluster_id(),
        )
        link = Link(self._link_owner, sock, session, address=address, peer_id=None, connecting=True)
        self._links.add(link)
        self._dialing[address] = link
        if err == 0:
            link.finish_connect()

    # -- reports from links (tick thread)

    def _on_link_authenticated(self, link: Link) -> None:
        address = link.address
        if self._dialing.get(address) is link:
            del self._dialing[address]
        node = self._nodes.get(address)
        if node is None:
            link.close("node removed from the cluster")
            return
        current = self._open.get(address)
        if current is None:
            self._open[address] = link
            log.info("raft peer %s connected (%r)", address, link)
            self._onNodeConnected(node)
            return
        if keep_newer_link(self.self_address, address, current.dialer_address, link.dialer_address):
            keep, drop = link, current
        else:
            keep, drop = current, link
        self._open[address] = keep  # first, so closing ``drop`` is not a disconnection
        drop.close(f"duplicate of {keep!r}")

    def _on_payload(self, link: Link, body: bytes) -> None:
        node = self._nodes.get(link.address)
        if node is None or self._open.get(link.address) is not link:
            return
        try:
            message = decode_raft_message(body)
        except RaftMessageError as exc:
            link.close(f"bad raft message: {exc}", rejected=True)
            return
        try:
            self._onMessageReceived(node, message)
        except Exception:
            # A PySyncObj failure on one message must not stall the frames behind it.
            log.exception("PySyncObj failed on a %r message from %s", message["type"], link.address)

    def _on_link_closed(self, link: Link, reason: str, rejected: bool) -> None:
        self._links.discard(link)
        address = link.address
        if rejected:
            # A peer of another cluster is told apart from a stranger of a minute ago.
            kind = "cluster" if link.session.other_cluster else ""
            self._rejected(address, f"rejected raft connection {link!r}: {reason}", kind)
        else:
            log.debug("closed raft connection %r: %s", link, reason)
        if self._dialing.get(address) is link:
            del self._dialing[address]
        if self._open.get(address) is link:
            del self._open[address]
            node = self._nodes.get(address)
            if node is not None:
                log.info("raft peer %s disconnected: %s", address, reason)
                self._onNodeDisconnected(node)
                self._maybe_dial(address, time.monotonic())

    def _rejected(self, address: str, text: str, kind: str = "") -> None:
        self.rejected_connections += 1
        # A wrong key or a stranger retrying must not flood the log: one warning per claimed
        # address (and kind) per interval, the rest at debug level.
        now = time.monotonic()
        key = (address, kind)
        if now - self._last_warning.get(key, -_WARNING_INTERVAL) >= _WARNING_INTERVAL:
            self._last_warning[key] = now
            log.warning(
                "%s (further rejections for %s in the next %d s at debug level)",
                text,
                address,
                _WARNING_INTERVAL,
            )
        else:
            log.debug("%s", text)

    # -- diagnostics (any thread; a snapshot)

    def connections(self) -> dict[str, tuple[Any, Any, bool]]:
        """The authenticated links: address -> (local address, peer address, dialled by us)."""
        result: dict[str, tuple[Any, Any, bool]] = {}
        for address, link in list(self._open.items()):
            try:
                result[address] = (link.sock.getsockname(), link.sock.getpeername(), link.dialed)
            except OSError:
                continue
        return result


def secure_transport_class(
    cluster_key: bytes,
    *,
    node_id: int = 0,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    on_created: Callable[[SecureTransport], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    cluster_id: Callable[[], str | None] | None = None,
) -> type[SecureTransport]:
    """Return a :class:`SecureTransport` subclass bound to a cluster key, for ``transportClass=``.

    Args:
        cluster_key: the secret every member shares (at least :data:`MIN_KEY_SIZE` bytes).
        node_id: this node's dqlite id, sent in CONNECT requests.
        max_frame_size: largest frame payload accepted from an authenticated peer; a single
            Raft entry must fit in it.
        on_created: called with each transport PySyncObj creates (the node server needs it
            to hand sockets over with :meth:`SecureTransport.adopt`).
        ssl_context: a client context to dial peers with TLS (the node's: it presents
            the node's certificate); None: dial in plain text.
        cluster_id: returns this node's cluster id (None while it knows none), read for
            each new link: a peer naming another id is refused (session.py).

    Raises:
        ValueError: a short key, a node id outside u64, or a frame limit below 64 KiB.
    """
    if not isinstance(cluster_key, bytes) or len(cluster_key) < MIN_KEY_SIZE:
        raise ValueError(f"the cluster key must be at least {MIN_KEY_SIZE} bytes")
    if not 0 <= node_id < 1 << 64:
        raise ValueError(f"node id {node_id!r} is not a u64")
    if not 64 * 1024 <= max_frame_size < 1 << 32:
        raise ValueError(f"max_frame_size {max_frame_size!r} is out of range")
    bound_settings = _Settings(
        cluster_key, node_id, max_frame_size, on_created, ssl_context, cluster_id
    )

    class BoundSecureTransport(SecureTransport):
        _settings = bound_settings

    return BoundSecureTransport
