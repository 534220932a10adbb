"""PySyncObj's Raft messages over the node's one dqlite address: authenticated, never pickled.

Why this exists (``libraries.md`` defect 4, ``design.md`` §3 rule 8): PySyncObj's stock
``TCPTransport`` pickles every message, so one frame sent to its Raft port runs arbitrary
code, and it needs a second port.  :class:`SecureTransport` replaces it.

Theory of operation
===================

**One address per node.**  As in dqlite (``protocol.md`` §2.2 CONNECT, capture G15), a peer
connects to a node's ordinary dqlite address, sends the protocol version (u64 LE 1) and a
CONNECT request carrying the *sender's* node id and address; after that the socket carries
only Raft traffic.  The node server hands such sockets over with :meth:`SecureTransport.adopt`
(from any thread, with the bytes it already read past the CONNECT message).  Outgoing
connections are dialled by the transport itself.  PySyncObj names a node by its address
("host:port"): :class:`RaftNode` is such a node.

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
produce it is a stranger.  A RAFT body is one cbor2-encoded PySyncObj message; a PING body is
empty (keeps idle follower↔follower links provably alive).

A bad HELLO, a bad MAC, an oversized length (:data:`MAX_HANDSHAKE_FRAME` before
authentication, ``max_frame_size`` after) or garbage closes the connection *before* anything
but the length prefix is looked at.  Only a frame whose MAC verified reaches the cbor2
decoder, which rejects every tag (no datetime, set, bignum, regex... construction) and
indefinite lengths, duplicate keys, non-string keys and trailing bytes; the result must then
match one of PySyncObj's message shapes exactly (:func:`decode_raft_message`) or the
connection is dropped.  Frames are not encrypted: the cluster key authenticates, it does not
hide the database pages (use a private network or a tunnel when that matters).

**Threads.**  Everything that touches PySyncObj state or a Raft socket runs on PySyncObj's
tick thread, driven by its poller (``syncObj._poller``) and its tick callbacks.  ``adopt``
only queues the socket and writes a byte to a pipe registered in that poller.  Dialling is a
non-blocking ``connect`` completed by a writable event, so no helper thread and no lock is
needed around PySyncObj (the only price: a host *name* is resolved on the tick thread, through
PySyncObj's cache; IP addresses cost nothing).  Writes are queued and flushed with ``sendmsg``
on writable events: the tick thread never blocks on a slow peer.  Frame parts are sent as
separate buffers (no copy of a multi-MiB body), and a per-peer high-water mark drops whole
messages (Raft tolerates loss) rather than buffering without bound.

**Identity and duplicates.**  A peer counts as connected for PySyncObj (``_onNodeConnected``)
only once its AUTH frame verified.  Both sides dial (a restarted node reconnects at once); if
two authenticated connections exist between a pair, both ends keep the one dialled by the
smaller address (or, for two dialled by the same side, the newer: its dialer only redials
after giving the old one up).  Lost peers are redialled every ``connectionRetryTime``.

**Large entries** (defect 5).  PySyncObj sends a single entry of ``appendEntriesBatchSizeBytes``
or more through a chunked "transmission" path that is buggy and unpickles what it receives;
the caller raises that setting above the largest entry, and this transport refuses to send or
accept "transmission" messages at all.  A raised batch size lets PySyncObj put many entries in
one message; an AppendEntries larger than :data:`APPEND_CHUNK_TARGET` is split here into
consecutive AppendEntries (each one's ``prevLogIdx``/``prevLogTerm`` is the previous one's
last entry), which Raft treats exactly like the original, so the frame limit only bounds a
single entry.

**Strangers and key checks.**  A voter accepts Raft traffic only from the members of its
configuration.  A stranger (a CONNECT naming another address) still gets the acceptor's HELLO
and AUTH frame, and is disconnected right after: that is how a node about to join proves to
itself that the cluster holds its key before it asks to be added
(:func:`check_cluster_key`).  The AUTH frame is bound to both nonces and to the direction,
so it is worth nothing in any other session (a claim of a member's address gets as much).

**TLS** (``server/tls.py``).  On a TLS node the sockets handed over by ``adopt`` are
:class:`ssl.SSLSocket` objects whose handshake the server already ran, and dialled links
run the client handshake themselves, without blocking, before sending the dqlite
handshake: CONNECTING → TLS_HANDSHAKE (``do_handshake`` on each poller event) → ACTIVE.
The session above (HELLO, AUTH, MACs) is unchanged: the cluster key is checked inside TLS
too.  Three things differ for a TLS socket in non-blocking use, all handled in
:class:`_Link`: "no data yet" is :class:`ssl.SSLWantReadError` (or, for a write,
:class:`ssl.SSLWantWriteError`) rather than :class:`BlockingIOError`; decrypted bytes
can wait inside OpenSSL where the level-triggered poller cannot see them, so a read drains
until OpenSSL itself wants more (and ``pending()`` is emptied); and ``sendmsg`` does not
exist, while a write that OpenSSL could not finish must be retried with the same bytes, so
the queue is sent in chunks of at most :data:`_TLS_CHUNK` bytes kept until written.

PySyncObj's admin ("utility") messages and read-only nodes are not supported: the first are an
unauthenticated remote control in the stock transport, the second do not exist in dqlite
(standby and spare nodes are members).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import hashlib
import hmac
import io
import ipaddress
import itertools
import logging
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import cbor2
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.node import Node
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.transport import Transport

from ..wire import PROTOCOL_VERSION, ConnectRequest, encode_message

__all__ = [
    "APPEND_CHUNK_TARGET",
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_HANDSHAKE_FRAME",
    "MIN_KEY_SIZE",
    "FrameKind",
    "FrameMacError",
    "LocalSessionError",
    "RaftMessageError",
    "RaftNode",
    "RemoteSessionError",
    "SecureSession",
    "SecureTransport",
    "SessionError",
    "SessionEvent",
    "SessionState",
    "check_cluster_key",
    "decode_raft_message",
    "encode_raft_message",
    "keep_newer_link",
    "secure_transport_class",
    "split_address",
]

log = logging.getLogger("dqlitepy.replication")

#: Largest frame payload accepted from an authenticated peer (the wire layer's message limit).
DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024 * 1024
#: Largest frame accepted before authentication: an AUTH frame is two addresses.
MAX_HANDSHAKE_FRAME: Final = 1024
#: A shorter cluster key is refused: HMAC-SHA256 is only as strong as its key.
MIN_KEY_SIZE: Final = 16
#: An AppendEntries whose commands add up to more than this is split (see the module docstring).
APPEND_CHUNK_TARGET: Final = 8 * 1024 * 1024

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
_VERSION = struct.Struct("<Q")
_MAX_ADDRESS: Final = 255
_MAX_U63: Final = (1 << 63) - 1

# How much one readable event may pull in: enough for a big frame in few passes through the
# poller, bounded so that other peers are served in between; a stranger gets far less.
_RECV_CHUNK: Final = 256 * 1024
_READ_BUDGET_OPEN: Final = 8 * 1024 * 1024
_READ_BUDGET_HANDSHAKE: Final = 64 * 1024
# Rejection warnings are rate-limited per claimed address.
_WARNING_INTERVAL: Final = 60
# sendmsg takes at most IOV_MAX (1024 on Linux) buffers; a frame is three.
_MAX_IOV: Final = 192
# A TLS link writes its queue in copies of at most this size (16 TLS records).
_TLS_CHUNK: Final = 256 * 1024


# ----------------------------------------------------------------------------- errors


# Snapshot chunks queue up to this much before the sender waits for the socket,
# and it waits at most this long before giving the link up.
_RELIABLE_HIGH_WATER = 16 * 1024 * 1024
_RELIABLE_WAIT = 1.0


class SessionError(Exception):
    """Base of the session protocol's errors."""


class RemoteSessionError(SessionError):
    """The peer broke the session protocol (bad hello, bad MAC, replay, oversized frame...)."""


class FrameMacError(RemoteSessionError):
    """A frame failed its MAC: the peer holds another key, or the frame was replayed or altered."""


class LocalSessionError(SessionError):
    """This side misused the session (sealing before authentication, a body too large...)."""


class RaftMessageError(ValueError):
    """A payload that is not one of PySyncObj's messages, or a message we refuse to carry."""


# ----------------------------------------------------------------------------- addresses


def split_address(address: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[v6]:port"`` too) into host and port.

    Args:
        address: the address.
        allow_port_zero: accept port 0 (a listener asking for any free port).

    Raises:
        ValueError: not a ``host:port`` string with a port in 1..65535.
    """
    if not isinstance(address, str) or not 0 < len(address) <= _MAX_ADDRESS:
        raise ValueError(f"address {address!r} is not a host:port string")
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    lowest = 0 if allow_port_zero else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError(f"address {address!r} is not host:port")
    return host, int(port)


class RaftNode(Node):  # type: ignore[misc]  # PySyncObj is untyped
    """A Raft peer; as PySyncObj wants, its id is its dqlite address ("host:port").

    The transport accepts any PySyncObj node whose id is such an address; this class only
    checks the address up front and names its parts.
    """

    def __init__(self, address: str) -> None:
        host, port = split_address(address)
        super().__init__(address)
        self._host = host
        self._port = port

    @property
    def address(self) -> str:
        """The node's dqlite address, also its PySyncObj id."""
        address: str = self.id
        return address

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port


# ----------------------------------------------------------------------------- messages

# PySyncObj's messages (syncobj.py 0.3.17), field by field.  Every key set below is exact:
# a message with a missing or an extra key is not one PySyncObj sends.


def _is_index(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_U63


def _is_index_or_none(value: object) -> bool:
    return value is None or _is_index(value)


def _is_bool(value: object) -> bool:
    return type(value) is bool


def _is_command(value: object) -> bool:
    # PySyncObj reads the command type from the first byte (``ord(command[:1])``).
    return type(value) is bytes and len(value) > 0


def _is_fail_reason(value: object) -> bool:
    return type(value) is int and 0 <= value <= 255


def _is_entries(value: object) -> bool:
    # Lists on the wire (cbor2 has no tuples); PySyncObj's journal turns each back into a tuple.
    if type(value) is not list and type(value) is not tuple:
        return False
    for entry in value:
        if (type(entry) is not list and type(entry) is not tuple) or len(entry) != 3:
            return False
        command, index, term = entry
        if not (_is_command(command) and _is_index(index) and _is_index(term)):
            return False
    return True


def _is_snapshot_chunk(value: object) -> bool:
    # serializer.getTransmissionData(): None while no snapshot is ready, else
    # (data, isFirst, isLast); the last chunk is empty.
    if value is None:
        return True
    if (type(value) is not list and type(value) is not tuple) or len(value) != 3:
        return False
    data, first, last = value
    return type(data) is bytes and _is_bool(first) and _is_bool(last)


_Shape = Mapping[str, Callable[[object], bool]]

_APPEND_ENTRIES: Final[_Shape] = {
    "term": _is_index,
    "commit_index": _is_index,
    "entries": _is_entries,
    # None when the leader no longer has the previous entry (the follower resets).
    "prevLogIdx": _is_index_or_none,
    "prevLogTerm": _is_index_or_none,
}
_INSTALL_SNAPSHOT: Final[_Shape] = {
    "term": _is_index,
    "commit_index": _is_index,
    "serialized": _is_snapshot_chunk,
}
_NEXT_NODE_IDX: Final[_Shape] = {"next_node_idx": _is_index, "reset": _is_bool, "success": _is_bool}

# HardenedSyncObj's additions for linearizable reads (raft.py, "Linearizable reads"): a
# leader tags every append_entries with its current read round; a follower's answer echoes
# the tag (None when the request had none) and carries its term, as Raft's responses do.
_READ_ROUND: Final[_Shape] = {"read_round": _is_index}
_ANSWER: Final[_Shape] = {"term": _is_index, "read_round": _is_index_or_none}

_SHAPES: Final[Mapping[str, tuple[_Shape, ...]]] = {
    "request_vote": ({"term": _is_index, "last_log_index": _is_index, "last_log_term": _is_index},),
    "response_vote": ({"term": _is_index},),
    "timeout_now": ({"term": _is_index},),
    "append_entries": (
        _APPEND_ENTRIES,
        _INSTALL_SNAPSHOT,
        {**_APPEND_ENTRIES, **_READ_ROUND},
        {**_INSTALL_SNAPSHOT, **_READ_ROUND},
    ),
    "next_node_idx": (_NEXT_NODE_IDX, {**_NEXT_NODE_IDX, **_ANSWER}),
    "apply_command": (
        {"command": _is_command},
        {"command": _is_command, "request_id": _is_index},
    ),
    "apply_command_response": (
        {"request_id": _is_index, "log_idx": _is_index, "log_term": _is_index},
        {"request_id": _is_index, "error": _is_fail_reason},
    ),
}


def _check_shape(message: object) -> dict[str, Any]:
    if type(message) is not dict:
        raise RaftMessageError(f"a raft message is a map, not {type(message).__name__}")
    kind = message.get("type")
    if type(kind) is not str:
        raise RaftMessageError("a raft message has no 'type'")
    if "transmission" in message:
        # Only produced for an entry >= appendEntriesBatchSizeBytes (defect 5); the receiver
        # would unpickle the reassembled chunks.  The caller must raise the batch size.
        raise RaftMessageError(
            "PySyncObj's chunked 'transmission' path is refused: an entry reached "
            "appendEntriesBatchSizeBytes; raise that setting above the largest entry"
        )
    shapes = _SHAPES.get(kind)
    if shapes is None:
        raise RaftMessageError(f"unknown raft message type {kind!r}")
    keys = message.keys() - {"type"}
    for shape in shapes:
        if keys == shape.keys():
            for field, valid in shape.items():
                if not valid(message[field]):
                    raise RaftMessageError(f"bad field {field!r} in a {kind!r} message")
            return message
    raise RaftMessageError(f"unexpected fields {sorted(keys)!r} in a {kind!r} message")


def encode_raft_message(message: Mapping[str, Any]) -> bytes:
    """Check one of PySyncObj's messages and encode it with cbor2 (tuples become arrays).

    Raises:
        RaftMessageError: not a message PySyncObj sends, or one we refuse to carry.
    """
    checked = _check_shape(dict(message) if type(message) is not dict else message)
    return cbor2.dumps(checked)


class _RejectEveryTag(Mapping[int, Callable[..., object]]):
    """cbor2's ``semantic_decoders``: looked up for every tag, it answers "reject" for all.

    cbor2 builds datetimes, sets, bignums, decimals, regexes, UUIDs, IP addresses and shared
    references from tags on its own; PySyncObj's messages contain none, so none may be built.
    """

    def __getitem__(self, tag: int) -> Callable[..., object]:
        return _reject_tag

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _reject_tag(*args: object) -> object:
    raise RaftMessageError("cbor tags are not allowed in raft messages")


_REJECT_EVERY_TAG: Final = _RejectEveryTag()


def decode_raft_message(body: bytes) -> dict[str, Any]:
    """Decode a RAFT frame's body (its MAC already verified) and check its shape.

    Returns:
        The message as PySyncObj expects it (lists where PySyncObj sent tuples).

    Raises:
        RaftMessageError: not exactly one well-formed cbor item of a known message shape.
    """
    stream = io.BytesIO(body)
    decoder = cbor2.CBORDecoder(
        stream,
        tag_hook=_reject_tag,
        semantic_decoders=_REJECT_EVERY_TAG,
        max_depth=3,  # message → entries → entry
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
    )
    try:
        message = decoder.decode()
    except Exception as exc:  # cbor2 raises several types; all mean "not a message"
        raise RaftMessageError(f"undecodable raft message: {exc}") from exc
    if stream.tell() != len(body):
        raise RaftMessageError("trailing bytes after a raft message")
    return _check_shape(message)


def _split_append_entries(message: dict[str, Any], target: int) -> list[dict[str, Any]]:
    """Split a large AppendEntries into consecutive ones (see the module docstring)."""
    entries = message.get("entries")
    if not entries or len(entries) < 2:
        return [message]
    costs = [len(entry[0]) + 64 for entry in entries]  # 64: cbor overhead of idx/term/arrays
    if sum(costs) <= target:
        return [message]
    parts: list[dict[str, Any]] = []
    prev_idx, prev_term = message["prevLogIdx"], message["prevLogTerm"]
    current: list[Any] = []
    size = 0
    for entry, cost in zip(entries, costs, strict=True):
        if current and size + cost > target:
            parts.append(
                {**message, "entries": current, "prevLogIdx": prev_idx, "prevLogTerm": prev_term}
            )
            prev_idx, prev_term = current[-1][1], current[-1][2]
            current, size = [], 0
        current.append(entry)
        size += cost
    parts.append({**message, "entries": current, "prevLogIdx": prev_idx, "prevLogTerm": prev_term})
    return parts


# ----------------------------------------------------------------------------- session


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
    ) -> None:
        if len(cluster_key) < MIN_KEY_SIZE:
            raise LocalSessionError(f"the cluster key must have at least {MIN_KEY_SIZE} bytes")
        self._key = bytes(cluster_key)
        self._dialer = dialer
        self._nonce = os.urandom(_NONCE_SIZE) if nonce is None else bytes(nonce)
        if len(self._nonce) != _NONCE_SIZE:
            raise LocalSessionError(f"a nonce has {_NONCE_SIZE} bytes")
        self._auth_body = dialer_address.encode() + b"\0" + acceptor_address.encode()
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
        if kind != FrameKind.AUTH or body != self._auth_body:
            raise RemoteSessionError("the peer's identity does not match its CONNECT")
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
        self._send_mac = hmac.new(
            self._key, _MAC_LABEL + out_dir + nonce_d + nonce_a, hashlib.sha256
        )
        self._recv_mac = hmac.new(
            self._key, _MAC_LABEL + in_dir + nonce_d + nonce_a, hashlib.sha256
        )

    def _seal(self, kind: FrameKind, body: bytes) -> list[bytes]:
        size = 1 + len(body)
        if size > self._max_frame_size:
            raise LocalSessionError(
                f"frame of {size} bytes exceeds the limit of {self._max_frame_size} bytes"
            )
        head = _HEAD.pack(size, kind)
        mac = self._send_mac.copy()
        mac.update(_SEQ.pack(self._send_seq))
        mac.update(head[_LENGTH.size :])
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


# ----------------------------------------------------------------------------- links


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


def _tune_socket(sock: socket.socket, keepalive: tuple[int, int, int] | None) -> None:
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


class _Link:
    """One Raft connection: a socket, its :class:`SecureSession` and its write queue.

    Runs on the tick thread only.  Reports to its transport: opened, payload, closed.
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        transport: SecureTransport,
        sock: socket.socket,
        session: SecureSession,
        *,
        address: str,
        peer_id: int | None,
        connecting: bool,
        stranger: bool = False,
    ) -> None:
        self.id = next(self._ids)
        self.transport = transport
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
        transport._poller.subscribe(self.fd, self._on_event, self._mask())

    def __repr__(self) -> str:
        direction = "to" if self.dialed else "from"
        return f"<raft link #{self.id} {direction} {self.address} {self.state.name}>"

    @property
    def dialed(self) -> bool:
        return self.session.dialer

    @property
    def dialer_address(self) -> str:
        return self.transport.self_address if self.dialed else self.address

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
            self.transport._poller.subscribe(self.fd, self._on_event, self._mask())

    # -- events from the poller

    def _on_event(self, fd: int, mask: int) -> None:
        # PySyncObj's PollPoller keeps callbacks of closed descriptors and may deliver an
        # event read for an old socket to a new one with the same number: every branch
        # below checks the socket's real state instead of trusting the mask.
        if fd != self.fd or self.closed:
            return
        if self.state is _LinkState.CONNECTING:
            if mask & (_WRITE | _ERROR):
                self._finish_connect()
            return
        if self.state is _LinkState.TLS_HANDSHAKE:
            self._tls_handshake()
            return
        if mask & (_READ | _ERROR):
            self._read()
        if mask & _WRITE and not self.closed:
            self._flush()

    def _finish_connect(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.close(f"connect failed: {os.strerror(err)}")
            return
        try:
            self.sock.getpeername()
        except OSError:
            return  # not connected yet: a stale event
        context = self.transport._ssl_context
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
        transport = self.transport
        preamble = _VERSION.pack(PROTOCOL_VERSION) + encode_message(
            ConnectRequest(transport.node_id, transport.self_address)
        )
        self._queue([preamble, *self.session.data_to_send()])

    def feed(self, data: bytes) -> None:
        """Process bytes received before the link existed (adopted sockets)."""
        if data:
            self.session.receive_data(data)
        self._process()

    def _read(self) -> None:
        budget = _READ_BUDGET_OPEN if self.authenticated else _READ_BUDGET_HANDSHAKE
        # One reusable buffer per transport (tick thread only): ``recv(256 KiB)`` would
        # allocate, and for glibc mmap and unmap, 256 KiB on every call.
        view = self.transport._recv_view
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
        transport = self.transport
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
                transport._on_link_authenticated(self)
            else:
                assert isinstance(event, bytes)
                transport._on_payload(self, event)

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
                select.select([], [self.sock], [], min(left, 0.05))
                self._flush()
            if self.closed:
                return False
        elif self._wbytes > self.transport.max_frame_size:
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
        """Close the socket and tell the transport (idempotent)."""
        if self.closed:
            return
        self._set_state(_LinkState.CLOSED)
        self.transport._poller.unsubscribe(self.fd)
        self.sock.close()
        self._wqueue.clear()
        self._wbytes = 0
        self.transport._on_link_closed(self, reason, rejected=rejected)


# ----------------------------------------------------------------------------- transport


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
        self._ssl_context = settings.ssl_context
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
        self._last_warning: dict[str, float] = {}
        self._recv_view = memoryview(bytearray(_RECV_CHUNK))

        self._nodes: dict[str, Any] = {}  # address -> PySyncObj's node object
        self._open: dict[str, _Link] = {}  # address -> the authenticated link in use
        self._dialing: dict[str, _Link] = {}  # address -> our dial not yet authenticated
        self._links: set[_Link] = set()
        self._last_dial: dict[str, float] = {}

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
            parts = _split_append_entries(_check_shape(message), APPEND_CHUNK_TARGET)
            bodies = [cbor2.dumps(part) for part in parts]
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
        # A stranger is still answered (then closed, see _Link._process): a node about
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
        )
        try:
            _tune_socket(sock, self._keepalive)
            link = _Link(
                self,
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
        if link.tls and not link.closed and sock.pending():  # type: ignore[attr-defined]
            # Decrypted bytes the server read past ``initial`` wait inside OpenSSL,
            # where the poller cannot see them.
            link._read()

    # -- dialling and timers (tick thread)

    def _on_tick(self) -> None:
        now = time.monotonic()
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
            _tune_socket(sock, self._keepalive)
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
        )
        link = _Link(self, sock, session, address=address, peer_id=None, connecting=True)
        self._links.add(link)
        self._dialing[address] = link
        if err == 0:
            link._finish_connect()

    # -- reports from links (tick thread)

    def _on_link_authenticated(self, link: _Link) -> None:
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

    def _on_payload(self, link: _Link, body: bytes) -> None:
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

    def _on_link_closed(self, link: _Link, reason: str, *, rejected: bool) -> None:
        self._links.discard(link)
        address = link.address
        if rejected:
            self._rejected(address, f"rejected raft connection {link!r}: {reason}")
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

    def _rejected(self, address: str, text: str) -> None:
        self.rejected_connections += 1
        # A wrong key or a stranger retrying must not flood the log: one warning per claimed
        # address per interval, the rest at debug level.
        now = time.monotonic()
        if now - self._last_warning.get(address, -_WARNING_INTERVAL) >= _WARNING_INTERVAL:
            self._last_warning[address] = now
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

    Raises:
        ValueError: a short key, a node id outside u64, or a frame limit below 64 KiB.
    """
    if not isinstance(cluster_key, bytes) or len(cluster_key) < MIN_KEY_SIZE:
        raise ValueError(f"the cluster key must be at least {MIN_KEY_SIZE} bytes")
    if not 0 <= node_id < 1 << 64:
        raise ValueError(f"node id {node_id!r} is not a u64")
    if not 64 * 1024 <= max_frame_size < 1 << 32:
        raise ValueError(f"max_frame_size {max_frame_size!r} is out of range")
    bound_settings = _Settings(cluster_key, node_id, max_frame_size, on_created, ssl_context)

    class BoundSecureTransport(SecureTransport):
        _settings = bound_settings

    return BoundSecureTransport


# ----------------------------------------------------------------------------- key check


def check_cluster_key(
    address: str,
    cluster_key: bytes,
    *,
    node_id: int,
    own_address: str,
    timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Check that the member at ``address`` holds ``cluster_key``, without joining anything.

    Dials ``address`` as a Raft peer does (handshake, CONNECT naming ``own_address``, HELLO)
    and verifies the member's AUTH frame, then hangs up without sending its own: the member
    learns nothing and adds nothing; this side learns whether its key is the cluster's.

    Args:
        address: a member's address, as it names itself (the leader's, from LEADER).
        cluster_key: the key to check.
        node_id: this node's id, sent in CONNECT.
        own_address: this node's address, sent in CONNECT.
        timeout: for connecting and for each read.
        ssl_context: dial with TLS using this client context.

    Raises:
        FrameMacError: the member's AUTH frame failed its MAC: it holds another key.
        RemoteSessionError: the member broke the session protocol.
        OSError: it could not be reached, timed out, or hung up first (no Raft there).
    """
    host, port = split_address(address)
    session = SecureSession(
        cluster_key, dialer=True, dialer_address=own_address, acceptor_address=address
    )
    preamble = _VERSION.pack(PROTOCOL_VERSION) + encode_message(
        ConnectRequest(node_id, own_address)
    )
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout))
        if ssl_context is not None:
            sock = stack.enter_context(ssl_context.wrap_socket(sock, server_hostname=host))
        sock.sendall(preamble + b"".join(session.data_to_send()))
        while session.next_event() is not SessionEvent.AUTHENTICATED:
            data = sock.recv(MAX_HANDSHAKE_FRAME)
            if not data:
                raise ConnectionError(f"{address} hung up before proving the cluster key")
            session.receive_data(data)
