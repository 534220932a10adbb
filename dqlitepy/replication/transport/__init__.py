"""PySyncObj's Raft messages over the node's one dqlite address: authenticated, never pickled.

Why this exists (``libraries.md`` defect 4, ``docs/replication.md`` rule 8): PySyncObj's stock
``TCPTransport`` pickles every message, so one frame sent to its Raft port runs arbitrary
code, and it needs a second port.  :class:`SecureTransport` replaces it.

**One address per node.**  As in dqlite (``protocol.md`` §2.2 CONNECT, capture G15), a peer
connects to a node's ordinary dqlite address, sends the protocol version (u64 LE 1) and a
CONNECT request carrying the *sender's* node id and address; after that the socket carries
only Raft traffic.  The node server hands such sockets over with :meth:`SecureTransport.adopt`
(from any thread, with the bytes it already read past the CONNECT message).  Outgoing
connections are dialled by the transport itself.  PySyncObj names a node by its address
("host:port"): :class:`RaftNode` is such a node.

Theory of operation, one part per module:

* ``session.py`` — the session protocol, sans I/O: HELLOs, AUTH, HMAC'd frames and their
  format (:class:`SecureSession`);
* ``messages.py`` — PySyncObj's message shapes and their cbor2 codec, and how large
  AppendEntries are split (:func:`encode_raft_message`, :func:`decode_raft_message`);
* ``link.py`` — one connection on a non-blocking socket, TLS included, and the small
  interface it has to its owner;
* ``adapter.py`` — the PySyncObj transport: threads, dialling, duplicate links, strangers
  (:class:`SecureTransport`, :func:`secure_transport_class`);
* ``keycheck.py`` — the blocking check a joining node runs (:func:`check_cluster_key`);
* ``addresses.py`` — ``host:port`` parsing and :class:`RaftNode`.

PySyncObj's admin ("utility") messages and read-only nodes are not supported: the first are an
unauthenticated remote control in the stock transport, the second do not exist in dqlite
(standby and spare nodes are members).
"""

from __future__ import annotations

from .adapter import SecureTransport, keep_newer_link, secure_transport_class
from .addresses import RaftNode, split_address
from .keycheck import check_cluster_key
from .messages import (
    APPEND_CHUNK_TARGET,
    RaftMessageError,
    decode_raft_message,
    encode_raft_message,
)
from .session import (
    DEFAULT_MAX_FRAME_SIZE,
    MAX_HANDSHAKE_FRAME,
    MIN_KEY_SIZE,
    ClusterMismatch,
    FrameKind,
    FrameMacError,
    LocalSessionError,
    RemoteSessionError,
    SecureSession,
    SessionError,
    SessionEvent,
    SessionState,
)

__all__ = [
    "APPEND_CHUNK_TARGET",
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_HANDSHAKE_FRAME",
    "MIN_KEY_SIZE",
    "ClusterMismatch",
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
