"""One Raft connection on a non-blocking socket: a :class:`Link` and what it needs from its owner.

A :class:`Link` owns a socket, the :class:`~.session.SecureSession` that runs over it and its
write queue.  It runs on PySyncObj's tick thread only, driven by the poller's events and the
owner's ticks, and talks to the transport that owns it through one small object, a
:class:`LinkOwner`: the poller to (un)subscribe with, what a dialled link sends in CONNECT,
and three callbacks (authenticated, payload, closed).  Of PySyncObj it knows only the
poller's event bits.

A dialled link goes CONNECTING (a non-blocking ``connect`` completed by a writable event)
→ ACTIVE, sending the dqlite handshake and CONNECT (``protocol.md`` §2.2) before the
session's HELLO; an adopted one starts ACTIVE.  Writes are queued and flushed with
``sendmsg`` on writable events: the tick thread never blocks on a slow peer.  Frame parts
are sent as separate buffers (no copy of a multi-MiB body), and a per-peer high-water mark
drops whole messages (Raft tolerates loss) rather than buffering without bound.

**TLS** (``server/tls.py``).  On a TLS node the sockets handed over by ``adopt`` are
:class:`ssl.SSLSocket` objects whose handshake the server already ran, and dialled links
run the client handshake themselves, without blocking, before sending the dqlite
handshake: CONNECTING → TLS_HANDSHAKE (``do_handshake`` on each poller event) → ACTIVE.
The session above (HELLO, AUTH, MACs) is unchanged: the cluster key is checked inside TLS
too.  Three things differ for a TLS socket in non-blocking use, all handled here: "no data
yet" is :class:`ssl.SSLWantReadError` (or, for a write, :class:`ssl.SSLWantWriteError`)
rather than :class:`BlockingIOError`; decrypted bytes can wait inside OpenSSL where the
level-triggered poller cannot see them, so a read drains until OpenSSL itself wants more
(and ``pending()`` is emptied); and ``sendmsg`` does not exist, while a write that OpenSSL
could not finish must be retried with the same bytes, so the queue is sent in chunks of at
most :data:`_TLS_CHUNK` bytes kept until written.
"""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import os
import select
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from pysyncobj.poller import POLL_EVENT_TYPE

from ...wire import PROTOCOL_VERSION, ConnectRequest, encode_message
from .addresses import split_address
from .session import FrameKind, RemoteSessionError, SecureSession, SessionEvent, SessionState

__all__ = ["Link", "LinkOwner", "Poller", "connect_preamble", "tune_socket"]

log = logging.getLogger("dqlitepy.replication")

_VERSION = struct.Struct("<Q")

# How much one readable event may pull in: enough for a big frame in few passes through the
# poller, bounded so that other peers are served in between; a stranger gets far less.
_RECV_CHUNK: Final = 256 * 1024
_READ_BUDGET_OPEN: Final = 8 * 1024 * 1024
_READ_BUDGET_HANDSHAKE: Final = 64 * 1024
# sendmsg takes at most IOV_MAX (1024 on Linux) buffers; a frame is three.
_MAX_IOV: Final = 192
# A TLS link writes its queue in copies of at most this size (16 TLS records).
_TLS_CHUNK: Final = 256 * 1024
# Snapshot chunks queue up to this much before the sender waits for the socket,
# and it waits at most this long before giving the link up.
_RELIABLE_HIGH_WATER = 16 * 1024 * 1024
_RELIABLE_WAIT = 1.0


class _LinkState(enum.Enum):
    CONNECTING = "connecting"  # non-blocking connect() in flight (dialled links only)
    TLS_HANDSHAKE = "tls_handshake"  # the TLS client handshake runs (dialled TLS links only)
    ACTIVE = "active"  # the session runs (handshake or open)
    CLOSED = "closed"


_LINK_TRANSITIONS: Final[Mapping[_LinkState, frozenset[_LinkState]]] = {
    _LinkState.CONNECTING: frozenset(
        {_LinkState.TLS_HANDSHAKE, _LinkState.ACTIVE, _LinkState.CLOSED}
    ),
    _LinkState.TLS_HANDSHAKE: frozenset({_LinkState.ACTIVE, _LinkState.CLOSED}),
    _LinkState.ACTIVE: frozenset({_LinkState.CLOSED}),
    _LinkState.CLOSED: frozenset(),
}

_READ: Final[int] = POLL_EVENT_TYPE.READ
_WRITE: Final[int] = POLL_EVENT_TYPE.WRITE
_ERROR: Final[int] = POLL_EVENT_TYPE.ERROR


def connect_preamble(node_id: int, address: str) -> bytes:
    """What a dialler sends before the session: the dqlite handshake and CONNECT (§2.2).

    Args:
        node_id: the dialler's dqlite node id.
        address: the dialler's address (its PySyncObj id).
    """
    return _VERSION.pack(PROTOCOL_VERSION) + encode_message(ConnectRequest(node_id, address))


def tune_socket(sock: socket.socket, keepalive: tuple[int, int, int] | None) -> None:
    """Make a Raft socket non-blocking, without Nagle, with TCP keepalive if configured.

    Args:
        sock: the socket.
        keepalive: (idle, interval, count) in seconds and probes, or None (Linux only).
    """
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # Raft is request/response with small acks: Nagle would add delayed-ACK stalls.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive is not None and sys.platform.startswith("linux"):
            idle, interval, count = keepalive
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    # SO_SNDBUF/SO_RCVBUF are left alone (PySyncObj's 64 KiB would disable the kernel's
    # autotuning and turn one 4 MiB entry into dozens of trips through the poller).


class Poller(Protocol):
    """The part of PySyncObj's poller (``syncObj._poller``) a link uses."""

    def subscribe(self, fd: int, callback: Callable[[int, int], None], mask: int, /) -> None: ...

    def unsubscribe(self, fd: int, /) -> None: ...


def _wait_writable(sock: socket.socket, seconds: float) -> None:
    """Wait until ``sock`` takes bytes; poll(), since select() fails on descriptors past 1,023."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    poller.poll(max(0, int(seconds * 1000)))


def _new_recv_buffer() -> memoryview:
    return memoryview(bytearray(_RECV_CHUNK))


@dataclass(frozen=True, slots=True)
class LinkOwner:
    """What a :class:`Link` needs from the transport that owns it: the only way they talk.

    One per transport, shared by its links; everything in it is used on the tick thread.
    """

    #: Where a link (un)subscribes its socket.
    poller: Poller
    #: This node's address (its PySyncObj id), sent in CONNECT when dialling.
    self_address: str
    #: This node's dqlite id, sent in CONNECT when dialling.
    node_id: int
    #: Queued bytes past which a link drops frames (all but reliable ones).
    high_water: int
    #: A client context to run TLS on dialled sockets with; None: plain text.
    ssl_context: ssl.SSLContext | None
    #: A peer proved it holds the cluster key (once per link).
    on_authenticated: Callable[[Link], None]
    #: A RAFT body arrived on a link (not decoded: the owner decides what to do with it).
    on_payload: Callable[[Link, bytes], None]
    #: A link closed (once): the link, why, and whether the peer counts as rejected.
    on_closed: Callable[[Link, str, bool], None]
    #: One reusable receive buffer for all the owner's links (they share the tick thread):
    #: ``recv(256 KiB)`` would allocate, and for glibc mmap and unmap, 256 KiB on every call.
    recv_buffer: memoryview = field(default_factory=_new_recv_buffer)


class Link:
    """One Raft connection: a socket, its :class:`SecureSession` and its write queue.

    Runs on the tick thread only.  Reports to its owner: authenticated, payload, closed.

    Args:
        owner: the transport's side of the link.
        sock: a non-blocking socket (:func:`tune_socket`), connecting or connected.
        session: the session to run over it (dialer or acceptor side).
        address: the peer's address, its PySyncObj id.
        peer_id: the peer's node id from its CONNECT (None for a link we dial).
        connecting: a ``connect`` is in flight (call :meth:`finish_connect` if it was not).
        stranger: an accepted peer that is not a member: it gets our HELLO and AUTH, then
            is closed.
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        owner: LinkOwner,
        sock: socket.socket,
        session: SecureSession,
        *,
        address: str,
        peer_id: int | None,
        connecting: bool,
        stranger: bool = False,
    ) -> None:
        self.id = next(self._ids)
        self.owner = owner
        self.sock = sock
        self.fd = sock.fileno()
        self.session = session
        self.address = address  # the peer's address: its PySyncObj id
        self.peer_id = peer_id
        self.state = _LinkState.CONNECTING if connecting else _LinkState.ACTIVE
        self.authenticated = False
        #: An accepted peer that is not a member: it gets our HELLO and AUTH, then is closed.
        self.stranger = stranger
        #: Close (as a rejection, for this reason) once the write queue is empty.
        self._close_when_flushed: str | None = None
        now = time.monotonic()
        self.created = now
        self.last_recv = now
        self.last_send = now
        self._wqueue: collections.deque[bytes | memoryview] = collections.deque()
        self._wbytes = 0
        #: A TLS socket (adopted from a TLS node's server, or wrapped once dialled).
        self.tls = isinstance(sock, ssl.SSLSocket)
        #: The TLS write OpenSSL has not finished: retried with exactly these bytes.
        self._tls_out: bytes | None = None
        self._want_write = connecting
        owner.poller.subscribe(self.fd, self._on_event, self._mask())

    def __repr__(self) -> str:
        direction = "to" if self.dialed else "from"
        return f"<raft link #{self.id} {direction} {self.address} {self.state.name}>"

    @property
    def dialed(self) -> bool:
        return self.session.dialer

    @property
    def dialer_address(self) -> str:
        return self.owner.self_address if self.dialed else self.address

    @property
    def closed(self) -> bool:
        # A method, not an inline check: callbacks may close the link under the caller.
        return self.state is _LinkState.CLOSED

    @property
    def pending_bytes(self) -> int:
        return self._wbytes

    def _set_state(self, new: _LinkState) -> None:
        if new not in _LINK_TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal link transition {self.state.name} -> {new.name}")
        self.state = new

    def _mask(self) -> int:
        return _READ | _ERROR | (_WRITE if self._want_write else 0)

    def _set_write_interest(self, want: bool) -> None:
        if want != self._want_write and not self.closed:
            self._want_write = want
            self.owner.poller.subscribe(self.fd, self._on_event, self._mask())

    # -- events from the poller

    def _on_event(self, fd: int, mask: int) -> None:
        # PySyncObj's PollPoller keeps callbacks of closed descriptors and may deliver an
        # event read for an old socket to a new one with the same number: every branch
        # below checks the socket's real state instead of trusting the mask.
        if fd != self.fd or self.closed:
            return
        if self.state is _LinkState.CONNECTING:
            if mask & (_WRITE | _ERROR):
                self.finish_connect()
            return
        if self.state is _LinkState.TLS_HANDSHAKE:
            self._tls_handshake()
            return
        if mask & (_READ | _ERROR):
            self._read()
        if mask & _WRITE and not self.closed:
            self._flush()

    def finish_connect(self) -> None:
        """Go on once the non-blocking ``connect`` completed (or failed): TLS or the session."""
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.close(f"connect failed: {os.strerror(err)}")
            return
        try:
            self.sock.getpeername()
        except OSError:
            return  # not connected yet: a stale event
        context = self.owner.ssl_context
        if context is not None:
            try:
                # Same descriptor, so the poller's subscription stays valid; the plain
                # socket object is detached by the wrapping.
                self.sock = context.wrap_socket(
                    self.sock,
                    do_handshake_on_connect=False,
                    server_hostname=split_address(self.address)[0],
                )
            except (OSError, ValueError) as exc:
                self.close(f"cannot start TLS: {exc}")
                return
            self.tls = True
            self._set_state(_LinkState.TLS_HANDSHAKE)
            self._tls_handshake()
            return
        self._start_session()

    def _tls_handshake(self) -> None:
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_write_interest(False)
            return
        except ssl.SSLWantWriteError:
            self._set_write_interest(True)
            return
        except ssl.SSLError as exc:
            # A certificate the CA did not sign, or ours refused: a misconfigured or
            # foreign peer, reported like a failed authentication.
            self.close(f"TLS handshake failed: {exc}", rejected=True)
            return
        except OSError as exc:
            self.close(f"TLS handshake failed: {exc}")
            return
        self._set_write_interest(False)
        self._start_session()

    def _start_session(self) -> None:
        self._set_state(_LinkState.ACTIVE)
        preamble = connect_preamble(self.owner.node_id, self.owner.self_address)
        self._queue([preamble, *self.session.data_to_send()])

    def feed(self, data: bytes) -> None:
        """Process bytes received before the link existed (an adopted socket's).

        On a TLS socket, decrypted bytes the server read past ``data`` may wait inside
        OpenSSL, where the poller cannot see them: they are read now.
        """
        if data:
            self.session.receive_data(data)
        self._process()
        if self.tls and not self.closed and self.sock.pending():  # type: ignore[attr-defined]
            self._read()

    def _read(self) -> None:
        budget = _READ_BUDGET_OPEN if self.authenticated else _READ_BUDGET_HANDSHAKE
        view = self.owner.recv_buffer
        got = 0
        eof = False
        sock = self.sock
        tls = self.tls
        while got < budget or (tls and sock.pending()):  # type: ignore[attr-defined]
            try:
                n = sock.recv_into(view)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                self._set_write_interest(True)
                break
            except OSError as exc:
                self.close(f"receive failed: {exc}")
                return
            if not n:
                eof = True
                break
            self.session.receive_data(view[:n])
            got += n
            # Drained for now (the level-triggered poller reports any rest); TLS returns
            # one record per call and may hold more decrypted bytes: read on until
            # OpenSSL itself wants more from the socket.
            if n < len(view) and not tls:
                break
        if got:
            self.last_recv = time.monotonic()
            self._process()
        if eof and not self.closed:
            self.close("closed by the peer")
        elif tls and not self.closed and (self._wqueue or self._tls_out) and not self._want_write:
            self._flush()  # a write that waited for a read (SSLWantReadError)

    def _process(self) -> None:
        owner = self.owner
        while self.state is _LinkState.ACTIVE:
            try:
                event = self.session.next_event()
            except RemoteSessionError as exc:
                self.close(str(exc), rejected=True)
                return
            # Handshake replies go out before anything a callback below might send.
            handshake = self.session.data_to_send()
            if handshake:
                self._queue(handshake)
                if self.closed:
                    return
            if self.stranger and self.session.state is SessionState.AUTH:
                # Our HELLO and AUTH are on their way: the stranger can now tell whether
                # it holds the cluster key (check_cluster_key), and gets nothing more.
                self._close_when_flushed = (
                    f"not a cluster member (node id {self.peer_id}); its hello was answered"
                )
                self._flush()
                return
            if event is SessionEvent.NEED_DATA:
                return
            if event is SessionEvent.AUTHENTICATED:
                self.authenticated = True
                owner.on_authenticated(self)
            else:
                assert isinstance(event, bytes)
                owner.on_payload(self, event)

    # -- sending

    def send_frame(self, kind: FrameKind, body: bytes, *, reliable: bool = False) -> bool:
        """Queue one frame and try to send it; False if it was dropped or the link died.

        ``reliable`` frames (snapshot chunks) are never dropped: PySyncObj streams a
        snapshot without acknowledging chunks, so a lost one would corrupt the copy.
        Past the high-water mark they wait (bounded) for the socket to drain instead,
        which also paces how fast PySyncObj reads the snapshot file.
        """
        if self.state is not _LinkState.ACTIVE or not self.authenticated:
            return False
        if reliable and self._wbytes > _RELIABLE_HIGH_WATER:
            deadline = time.monotonic() + _RELIABLE_WAIT
            while self._wbytes > _RELIABLE_HIGH_WATER and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close("the peer does not take a snapshot chunk")
                    return False
                _wait_writable(self.sock, min(left, 0.05))
                self._flush()
            if self.closed:
                return False
        elif self._wbytes > self.owner.high_water:
            # The peer does not keep up: drop whole messages (Raft tolerates loss and the
            # leader resends from the follower's next index) instead of buffering forever.
            log.debug("%r: %d bytes queued, dropping a %s frame", self, self._wbytes, kind.name)
            return False
        self._queue(self.session.seal(kind, body))
        return not self.closed

    def _queue(self, buffers: Iterable[bytes]) -> None:
        for buf in buffers:
            if buf:
                self._wqueue.append(buf)
                self._wbytes += len(buf)
        self.last_send = time.monotonic()
        self._flush()

    def _flush(self) -> None:
        if self.tls:
            self._flush_tls()
            return
        queue = self._wqueue
        while queue:
            try:
                sent = self.sock.sendmsg(list(itertools.islice(queue, _MAX_IOV)))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close(f"send failed: {exc}")
                return
            self._wbytes -= sent
            while sent:
                head = queue[0]
                if len(head) <= sent:
                    sent -= len(head)
                    queue.popleft()
                else:
                    queue[0] = memoryview(head)[sent:]
                    sent = 0
        if not queue and self._close_when_flushed is not None:
            self.close(self._close_when_flushed, rejected=True)
            return
        self._set_write_interest(bool(queue))

    def _flush_tls(self) -> None:
        queue = self._wqueue
        while queue or self._tls_out is not None:
            chunk = self._tls_out
            if chunk is None:
                parts: list[bytes | memoryview] = []
                size = 0
                while queue and size < _TLS_CHUNK:
                    head = queue[0]
                    if size + len(head) <= _TLS_CHUNK:
                        parts.append(queue.popleft())
                        size += len(head)
                    else:
                        view = memoryview(head)
                        parts.append(view[: _TLS_CHUNK - size])
                        queue[0] = view[_TLS_CHUNK - size :]
                        size = _TLS_CHUNK
                chunk = self._tls_out = b"".join(parts)
            try:
                sent = self.sock.send(chunk)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                self._set_write_interest(True)
                return
            except ssl.SSLWantReadError:
                # Only a renegotiation does this (off in our contexts): retried after a read.
                self._set_write_interest(False)
                return
            except OSError as exc:
                self.close(f"send failed: {exc}")
                return
            self._wbytes -= sent
            # OpenSSL writes all or nothing (no SSL_MODE_ENABLE_PARTIAL_WRITE); a short
            # count would still be handled.
            self._tls_out = chunk[sent:] if sent < len(chunk) else None
        if self._close_when_flushed is not None:
            self.close(self._close_when_flushed, rejected=True)
            return
        self._set_write_interest(False)

    # -- timers and closing

    def tick(self, now: float, timeout: float, ping_interval: float) -> None:
        if self.closed:
            return
        if not self.authenticated:
            if now - self.created > timeout:
                # A stranger that never authenticates is rejected; our own dial timing out
                # is just an unreachable peer.
                self.close("handshake timed out", rejected=not self.dialed)
        elif now - self.last_recv > timeout:
            self.close(f"nothing received for {timeout:.1f} s")
        elif now - self.last_send >= ping_interval:
            self.send_frame(FrameKind.PING, b"")

    def close(self, reason: str, *, rejected: bool = False) -> None:
        """Close the socket and tell the owner (idempotent)."""
        if self.closed:
            return
        self._set_state(_LinkState.CLOSED)
        self.owner.poller.unsubscribe(self.fd)
        self.sock.close()
        self._wqueue.clear()
        self._wbytes = 0
        self.owner.on_closed(self, reason, rejected)
