"""The session protocol of a Raft connection, sans I/O: HELLOs, AUTH, and MAC'd frames.

:class:`SecureSession` takes received bytes in (``receive_data``) and gives events out
(``next_event``: a RAFT body, AUTHENTICATED once, or NEED_DATA); it frames outgoing bodies
(``seal``).  No socket, no clock: the socket side is ``link.py`` (and the blocking key check
in ``keycheck.py``).  The dqlite handshake and CONNECT that precede the session are sent by
the dialer before it (``link.py``); they are not part of it.

**Session handshake** (after CONNECT; ``D`` is the dialer, ``A`` the acceptor)::

    D -> A   HELLO  = b"DQPYRFT1" | nonce_D (32 random bytes)
    A -> D   HELLO  = b"DQPYRFT1" | nonce_A           (only after a valid HELLO from D)
    A -> D   AUTH frame (sequence 0 from A)
    D -> A   AUTH frame (sequence 0 from D), then Raft frames

**Frames** (both directions, after the HELLOs)::

    u32 LE n | payload (n bytes) | HMAC-SHA256(key, label | direction | nonce_D | nonce_A
                                               | u64 LE sequence | payload)  (32 bytes)

``payload`` is one kind byte (:class:`FrameKind`: AUTH, RAFT, PING) and a body.  ``label`` is
``b"dqlitepy raft v1"`` (domain separation: the cluster key signs nothing else of this
shape); ``direction`` is 1 for D→A and 2 for A→D, so a frame cannot be reflected back to its
sender; fresh nonces from *both* sides make frames of one session worthless in another; the
sequence number is implicit (each side counts), so a replayed, dropped or reordered frame
fails its MAC.  An AUTH body is ``dialer address | NUL | acceptor address`` as each side
understands them, which binds the plaintext CONNECT identity to the key: whoever cannot
produce it is a stranger; a side that knows its cluster's id appends ``NUL | cluster id``.
Two sides that both name an id and name different ones belong to two clusters sharing a key:
the session is refused (:class:`ClusterMismatch`) before any Raft frame is taken, so two
clusters never exchange Raft messages.  A side without an id (a directory of a version
before cluster ids, until its log names one) is taken on the key alone.  A RAFT body is one
cbor2-encoded PySyncObj message; a PING body is empty (keeps idle follower↔follower links
provably alive).

A bad HELLO, a bad MAC, an oversized length (:data:`MAX_HANDSHAKE_FRAME` before
authentication, ``max_frame_size`` after) or garbage closes the connection *before* anything
but the length prefix is looked at.  Only a frame whose MAC verified reaches the cbor2
decoder, which rejects every tag (no datetime, set, bignum, regex... construction) and
indefinite lengths, duplicate keys, non-string keys and trailing bytes; the result must then
match one of PySyncObj's message shapes exactly (:func:`.messages.decode_raft_message`) or the
connection is dropped.  Frames are not encrypted: the cluster key authenticates, it does not
hide the database pages (use a private network or a tunnel when that matters).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "ClusterMismatch",
    "MAX_HANDSHAKE_FRAME",
    "MIN_KEY_SIZE",
    "FrameKind",
    "FrameMacError",
    "LocalSessionError",
    "RemoteSessionError",
    "SecureSession",
    "SessionError",
    "SessionEvent",
    "SessionState",
]

#: Largest frame payload accepted from an authenticated peer (the wire layer's message limit).
DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024 * 1024
#: Largest frame accepted before authentication: an AUTH frame is two addresses.
MAX_HANDSHAKE_FRAME: Final = 1024
#: A shorter cluster key is refused: HMAC-SHA256 is only as strong as its key.
MIN_KEY_SIZE: Final = 16

_MAGIC: Final = b"DQPYRFT1"
_NONCE_SIZE: Final = 32
_HELLO_SIZE: Final = len(_MAGIC) + _NONCE_SIZE
_MAC_SIZE: Final = 32
_MAC_LABEL: Final = b"dqlitepy raft v1"
_DIALER_TO_ACCEPTOR: Final = b"\x01"
_ACCEPTOR_TO_DIALER: Final = b"\x02"
_LENGTH = struct.Struct("<I")
_HEAD = struct.Struct("<IB")  # length prefix and kind byte, sent as one small buffer
_SEQ = struct.Struct("<Q")


def _c_mac(mac: hmac.HMAC) -> Any:
    """The OpenSSL HMAC object inside ``mac`` when there is one, else ``mac`` itself.

    Both have ``copy``, ``update`` and ``digest`` and compute the same MAC; the
    inner one's are C calls, where ``hmac.HMAC``'s are Python methods wrapping
    them (five Python calls per frame sealed or checked, two frames per message
    on each side of a commit).
    """
    inner = getattr(mac, "_hmac", None)
    return mac if inner is None else inner


class SessionError(Exception):
    """Base of the session protocol's errors."""


class RemoteSessionError(SessionError):
    """The peer broke the session protocol (bad hello, bad MAC, replay, oversized frame...)."""


class FrameMacError(RemoteSessionError):
    """A frame failed its MAC: the peer holds another key, or the frame was replayed or altered."""


class ClusterMismatch(RemoteSessionError):
    """The peer holds the key but belongs to another cluster (its AUTH frame names another id).

    Attributes:
        ours: this side's cluster id.
        theirs: the peer's.
    """

    def __init__(self, ours: str, theirs: str) -> None:
        super().__init__(
            f"the peer belongs to cluster {theirs}, this node to cluster {ours} "
            "(two clusters sharing a key)"
        )
        self.ours = ours
        self.theirs = theirs


def _auth_body(dialer_address: str, acceptor_address: str, cluster_id: str | None) -> bytes:
    body = dialer_address.encode() + b"\0" + acceptor_address.encode()
    return body if cluster_id is None else body + b"\0" + cluster_id.encode()


class LocalSessionError(SessionError):
    """This side misused the session (sealing before authentication, a body too large...)."""


class FrameKind(enum.IntEnum):
    """The first payload byte of a frame."""

    AUTH = 1
    RAFT = 2
    PING = 3


class SessionState(enum.Enum):
    """Where a :class:`SecureSession` stands."""

    #: Waiting for the peer's HELLO (magic and nonce).
    HELLO = "hello"
    #: Waiting for the peer's AUTH frame.
    AUTH = "auth"
    #: Both sides proved they hold the key: Raft frames flow.
    OPEN = "open"
    #: The peer broke the protocol; close the connection.
    BROKEN = "broken"


_SESSION_TRANSITIONS: Final[Mapping[SessionState, frozenset[SessionState]]] = {
    SessionState.HELLO: frozenset({SessionState.AUTH, SessionState.BROKEN}),
    SessionState.AUTH: frozenset({SessionState.OPEN, SessionState.BROKEN}),
    SessionState.OPEN: frozenset({SessionState.BROKEN}),
    SessionState.BROKEN: frozenset({SessionState.BROKEN}),
}


class SessionEvent(enum.Enum):
    """Non-payload results of :meth:`SecureSession.next_event`."""

    NEED_DATA = "need_data"
    AUTHENTICATED = "authenticated"


class SecureSession:
    """The session protocol of one Raft connection, without I/O (format: module docstring).

    Feed received bytes to :meth:`receive_data`, pull events with :meth:`next_event` (a RAFT
    body as ``bytes``, :attr:`SessionEvent.AUTHENTICATED` once, or
    :attr:`SessionEvent.NEED_DATA`), send what :meth:`data_to_send` returns after every call,
    and frame outgoing bodies with :meth:`seal`.

    Args:
        cluster_key: the shared secret (at least :data:`MIN_KEY_SIZE` bytes).
        dialer: True on the side that opened the TCP connection.
        dialer_address: the dialer's address (as in its CONNECT request).
        acceptor_address: the acceptor's address (the one that was dialled).
        max_frame_size: largest payload accepted once authenticated.
        nonce: this side's nonce (tests only; random by default).
        cluster_id: this side's cluster id, None if it knows none (see the module docstring).
    """

    def __init__(
        self,
        cluster_key: bytes,
        *,
        dialer: bool,
        dialer_address: str,
        acceptor_address: str,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        nonce: bytes | None = None,
        cluster_id: str | None = None,
    ) -> None:
        if len(cluster_key) < MIN_KEY_SIZE:
            raise LocalSessionError(f"the cluster key must have at least {MIN_KEY_SIZE} bytes")
        self._key = bytes(cluster_key)
        self._dialer = dialer
        self._nonce = os.urandom(_NONCE_SIZE) if nonce is None else bytes(nonce)
        if len(self._nonce) != _NONCE_SIZE:
            raise LocalSessionError(f"a nonce has {_NONCE_SIZE} bytes")
        if cluster_id is not None and (not cluster_id or "\0" in cluster_id):
            raise LocalSessionError(f"bad cluster id {cluster_id!r}")
        self._cluster_id = cluster_id
        #: The cluster id the peer named in its AUTH frame (None: it named none).
        self.peer_cluster_id: str | None = None
        self._addresses = _auth_body(dialer_address, acceptor_address, None)
        self._auth_body = _auth_body(dialer_address, acceptor_address, cluster_id)
        self._max_frame_size = max_frame_size
        self._state = SessionState.HELLO
        self._rbuf = bytearray()
        self._rpos = 0
        self._out: list[bytes] = []
        self._send_mac: Any = None  # hmac.HMAC with the per-direction prefix already absorbed
        self._recv_mac: Any = None
        self._send_seq = 0
        self._recv_seq = 0
        if dialer:
            self._out.append(_MAGIC + self._nonce)

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def dialer(self) -> bool:
        return self._dialer

    @property
    def other_cluster(self) -> bool:
        """True once the peer proved the key but named another cluster id than ours."""
        ours, theirs = self._cluster_id, self.peer_cluster_id
        return ours is not None and theirs is not None and ours != theirs

    def _set_state(self, new: SessionState) -> None:
        if new not in _SESSION_TRANSITIONS[self._state]:
            raise LocalSessionError(f"illegal session transition {self._state.name} -> {new.name}")
        self._state = new

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the peer."""
        self._rbuf += data

    def data_to_send(self) -> list[bytes]:
        """Handshake bytes this side must send now (HELLO, AUTH), in order."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> SessionEvent | bytes:
        """Return the next event: a RAFT body, AUTHENTICATED (once), or NEED_DATA.

        Raises:
            RemoteSessionError: the peer broke the protocol; the session is BROKEN.
            LocalSessionError: called on a broken session.
        """
        try:
            return self._next_event()
        except RemoteSessionError:
            self._set_state(SessionState.BROKEN)
            raise

    def _next_event(self) -> SessionEvent | bytes:
        # Each step consumes what its state expects; None means "moved on, look again".
        while True:
            state = self._state
            event: SessionEvent | bytes | None
            if state is SessionState.HELLO:
                event = self._receive_hello()
            elif state is SessionState.AUTH:
                event = self._receive_auth()
            elif state is SessionState.OPEN:
                event = self._receive_frame()
            else:
                raise LocalSessionError("the session is broken")
            if event is not None:
                return event

    def _receive_hello(self) -> SessionEvent | None:
        if len(self._rbuf) - self._rpos < _HELLO_SIZE:
            return SessionEvent.NEED_DATA
        hello = bytes(self._rbuf[self._rpos : self._rpos + _HELLO_SIZE])
        self._consume(_HELLO_SIZE)
        if hello[: len(_MAGIC)] != _MAGIC:
            raise RemoteSessionError("not a dqlitepy raft peer (bad hello)")
        peer_nonce = hello[len(_MAGIC) :]
        if peer_nonce == self._nonce:
            raise RemoteSessionError("our own hello came back (reflection)")
        self._start_macs(peer_nonce)
        if not self._dialer:
            # Answer only a well-formed HELLO, so garbage gets no reply at all.
            self._out.append(_MAGIC + self._nonce)
            self._out.extend(self._seal(FrameKind.AUTH, self._auth_body))
        self._set_state(SessionState.AUTH)
        return None

    def _receive_auth(self) -> SessionEvent:
        frame = self._take_frame(MAX_HANDSHAKE_FRAME)
        if frame is None:
            return SessionEvent.NEED_DATA
        kind, body = frame
        # Addresses hold no NUL: a third field is the peer's cluster id.
        fields = body.split(b"\0")
        addresses = b"\0".join(fields[:2])
        if (
            kind != FrameKind.AUTH
            or addresses != self._addresses
            or len(fields) > 3
            or (len(fields) == 3 and not fields[2])
        ):
            raise RemoteSessionError("the peer's identity does not match its CONNECT")
        if len(fields) == 3:
            self.peer_cluster_id = fields[2].decode(errors="replace")
        if self.other_cluster:
            raise ClusterMismatch(str(self._cluster_id), str(self.peer_cluster_id))
        if self._dialer:
            self._out.extend(self._seal(FrameKind.AUTH, self._auth_body))
        self._set_state(SessionState.OPEN)
        return SessionEvent.AUTHENTICATED

    def _receive_frame(self) -> SessionEvent | bytes | None:
        frame = self._take_frame(self._max_frame_size)
        if frame is None:
            return SessionEvent.NEED_DATA
        kind, body = frame
        if kind == FrameKind.RAFT:
            return body
        if kind != FrameKind.PING:
            raise RemoteSessionError(f"unexpected frame kind {kind}")
        return None  # a PING only proves the link alive (its MAC verified)

    def seal(self, kind: FrameKind, body: bytes) -> list[bytes]:
        """Frame a body; returns the buffers to send in order (the body is not copied).

        Raises:
            LocalSessionError: the session is not open, or the payload exceeds the limit.
        """
        if self._state is not SessionState.OPEN:
            raise LocalSessionError(f"cannot send in state {self._state.name}")
        if kind == FrameKind.AUTH:
            raise LocalSessionError("AUTH frames belong to the handshake")
        return self._seal(kind, body)

    def _start_macs(self, peer_nonce: bytes) -> None:
        nonce_d, nonce_a = (self._nonce, peer_nonce) if self._dialer else (peer_nonce, self._nonce)
        out_dir, in_dir = (
            (_DIALER_TO_ACCEPTOR, _ACCEPTOR_TO_DIALER)
            if self._dialer
            else (_ACCEPTOR_TO_DIALER, _DIALER_TO_ACCEPTOR)
        )
        # The common prefix is absorbed once; each frame copies the state (cheap) and adds
        # its sequence number and payload.
        self._send_mac = _c_mac(
            hmac.new(self._key, _MAC_LABEL + out_dir + nonce_d + nonce_a, hashlib.sha256)
        )
        self._recv_mac = _c_mac(
            hmac.new(self._key, _MAC_LABEL + in_dir + nonce_d + nonce_a, hashlib.sha256)
        )

    def _seal(self, kind: FrameKind, body: bytes) -> list[bytes]:
        size = 1 + len(body)
        if size > self._max_frame_size:
            raise LocalSessionError(
                f"frame of {size} bytes exceeds the limit of {self._max_frame_size} bytes"
            )
        head = _HEAD.pack(size, kind)
        mac = self._send_mac.copy()
        mac.update(_SEQ.pack(self._send_seq) + head[_LENGTH.size :])
        mac.update(body)
        self._send_seq += 1
        return [head, body, mac.digest()]

    def _take_frame(self, limit: int) -> tuple[int, bytes] | None:
        buf, pos = self._rbuf, self._rpos
        if len(buf) - pos < _LENGTH.size:
            return None
        (size,) = _LENGTH.unpack_from(buf, pos)
        # Checked before waiting for the body: a stranger cannot make us buffer 4 GiB.
        if size == 0 or size > limit:
            raise RemoteSessionError(f"frame of {size} bytes (limit {limit})")
        start = pos + _LENGTH.size
        end = start + size + _MAC_SIZE
        if len(buf) < end:
            return None
        mac = self._recv_mac.copy()
        mac.update(_SEQ.pack(self._recv_seq))
        with memoryview(buf) as view:
            mac.update(view[start : start + size])
            if not hmac.compare_digest(mac.digest(), view[start + size : end]):
                raise FrameMacError("bad frame MAC (wrong key, replayed or reordered)")
            kind = buf[start]
            body = bytes(view[start + 1 : start + size])
        self._recv_seq += 1
        self._consume(end - pos)
        return kind, body

    def _consume(self, n: int) -> None:
        # An offset instead of ``del buf[:n]`` per frame: many small frames in one read
        # would otherwise cost quadratic time; compact once the dead prefix dominates.
        self._rpos += n
        if self._rpos == len(self._rbuf):
            self._rbuf.clear()
            self._rpos = 0
        elif self._rpos > len(self._rbuf) // 2:
            del self._rbuf[: self._rpos]
            self._rpos = 0
