"""Numbers of the dqlite client wire protocol (see ``protocol.md`` §1–§5)."""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "DEFAULT_HEARTBEAT_TIMEOUT_MS",
    "HEADER_SIZE",
    "MARKER_DONE",
    "MARKER_PART",
    "OPEN_BUSY_TIMEOUT_SHIFT",
    "PROTOCOL_VERSION",
    "PROTOCOL_VERSION_LEGACY",
    "ROWS_BATCH_SIZE",
    "WORD_SIZE",
    "ErrorCode",
    "NodeRole",
    "RequestType",
    "ResponseType",
    "ValueType",
]

#: The handshake word of the current protocol (§1.2).
PROTOCOL_VERSION = 1
#: The handshake word of the pre-1.0 protocol; it changes only the SERVER body.
PROTOCOL_VERSION_LEGACY = 0x86104DD760433FE5

#: Every message starts with an 8-byte header: words (u32), type, schema, extra (u16).
HEADER_SIZE = 8
#: Bodies are made of 8-byte words.
WORD_SIZE = 8

#: Ends the last ROWS batch of a result.
MARKER_DONE = 0xFFFF_FFFF_FFFF_FFFF
#: Ends a ROWS batch that is followed by another.
MARKER_PART = 0xEEEE_EEEE_EEEE_EEEE

#: OPEN's ``flags`` word is ignored by dqlite servers.  dqlitepy clients carry
#: their lock timeout in its upper half: ``(busy_timeout_ms + 1) << 32``, 0
#: meaning "the server's default".  A dqlitepy server waits that long for a
#: locked database; a C dqlite server ignores it, and the client waits instead.
OPEN_BUSY_TIMEOUT_SHIFT = 32

#: What dqlite advertises in WELCOME; neither side enforces it (§2.4).
DEFAULT_HEARTBEAT_TIMEOUT_MS = 15000

#: dqlite closes a ROWS batch once the message, header included, reaches a page (§3.8).
ROWS_BATCH_SIZE = 4096


class RequestType(IntEnum):
    """Request codes (§2.1). They share no number space with responses."""

    LEADER = 0
    CLIENT = 1
    HEARTBEAT = 2
    OPEN = 3
    PREPARE = 4
    EXEC = 5
    QUERY = 6
    FINALIZE = 7
    EXEC_SQL = 8
    QUERY_SQL = 9
    INTERRUPT = 10
    CONNECT = 11
    ADD = 12
    ASSIGN = 13
    REMOVE = 14
    DUMP = 15
    CLUSTER = 16
    TRANSFER = 17
    DESCRIBE = 18
    WEIGHT = 19
    # dqlitepy's own requests, far from dqlite's range (0-19) so that dqlite's future ones
    # cannot collide.  Only dqlitepy clients send them, and only to a node that asked for
    # proof (FAILURE 23 "not authorized"); see ``wire/auth.py``.
    AUTH_CHALLENGE = 208
    AUTH_PROOF = 209


class ResponseType(IntEnum):
    """Response codes (§3)."""

    FAILURE = 0
    SERVER = 1
    WELCOME = 2
    SERVERS = 3
    DB = 4
    STMT = 5
    RESULT = 6
    ROWS = 7
    EMPTY = 8
    FILES = 9
    METADATA = 10
    # dqlitepy's own: the answer to AUTH_CHALLENGE (see ``wire/auth.py``).
    CHALLENGE = 208


class ValueType(IntEnum):
    """Type codes of values in parameter and row tuples (§4.1)."""

    INTEGER = 1
    FLOAT = 2
    TEXT = 3
    BLOB = 4
    NULL = 5
    UNIXTIME = 9
    ISO8601 = 10
    BOOLEAN = 11


class NodeRole(IntEnum):
    """Roles of a cluster member (§5.5)."""

    VOTER = 0
    STANDBY = 1
    SPARE = 2


class ErrorCode(IntEnum):
    """Codes a FAILURE response carries (§5.1): the one table client and server use.

    dqlite's own codes, and the SQLite result codes this package's server
    sends or its client interprets (the full SQLite list, for applications,
    is ``dqlitepy.client.constants``).
    """

    EMPTY_STATEMENT = 0  # also a SQL text with no statement in it
    SQLITE_ERROR = 1
    SQLITE_ABORT = 4
    SQLITE_BUSY = 5
    SQLITE_NOMEM = 7
    SQLITE_INTERRUPT = 9
    SQLITE_IOERR = 10
    SQLITE_NOTFOUND = 12
    SQLITE_FULL = 13
    SQLITE_PROTOCOL = 15
    SQLITE_TOOBIG = 18
    SQLITE_CONSTRAINT = 19
    #: Refused: membership change without the cluster key, or a plain-text
    #: client at a TLS node.
    SQLITE_AUTH = 23
    SQLITE_RANGE = 25
    DQLITE_NOTFOUND = 1002
    DQLITE_PARSE = 1005
    NOT_LEADER = 10250  # SQLITE_IOERR_NOT_LEADER: refused before running, retry elsewhere
    LEADERSHIP_LOST = 10506  # SQLITE_IOERR_LEADERSHIP_LOST: the outcome is unknown
    NOT_LEADER_LEGACY = 8202
    LEADERSHIP_LOST_LEGACY = 8458
