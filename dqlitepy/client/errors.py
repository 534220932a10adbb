"""The PEP 249 exception tree of the driver and the tables that map result codes to it.

The class names and their hierarchy are those of the standard library's
:mod:`sqlite3`, so ``except sqlite3.OperationalError`` ports by changing the
import.  Every :class:`Error` carries ``sqlite_errorcode`` and
``sqlite_errorname`` like ``sqlite3`` errors do (``None`` when no code applies).

The dqlite server answers a failed request with a FAILURE carrying a code and a
message (protocol.md §5.1).  The code is an SQLite primary or extended result
code, or one of a few dqlite-specific codes; :func:`error_from_code` turns that
pair into the exception a ``sqlite3`` user expects, choosing the class by the
primary code exactly as CPython's ``sqlite3`` does, after first picking out the
dqlite codes that need their own meaning (not leader, leadership lost, ...).
"""

from __future__ import annotations

from typing import Final, Literal, TypeVar

from ..wire import ErrorCode
from . import constants as _c

__all__ = [
    "DQLITE_NOTFOUND",
    "DQLITE_PARSE",
    "ERROR_NAMES",
    "SQLITE_IOERR_LEADERSHIP_LOST",
    "SQLITE_IOERR_LEADERSHIP_LOST_LEGACY",
    "SQLITE_IOERR_NOT_LEADER",
    "SQLITE_IOERR_NOT_LEADER_LEGACY",
    "ConnectionLostError",
    "DataError",
    "DatabaseError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "LeadershipLostError",
    "NoLeaderError",
    "NotLeaderError",
    "NotSupportedError",
    "OUTCOME_NOT_RUN",
    "OUTCOME_ROLLED_BACK",
    "OUTCOME_UNKNOWN",
    "OperationalError",
    "Outcome",
    "ProgrammingError",
    "Warning",
    "error_from_code",
    "make_error",
]

#: What became of the failed request (and of the open transaction) when the
#: connection to the leader, or the leader itself, was lost; see
#: :attr:`OperationalError.outcome`.
Outcome = Literal["unknown", "rolled back", "not run"]
#: The request may or may not have taken effect; it is never re-sent.
OUTCOME_UNKNOWN: Final = "unknown"
#: The open transaction certainly did not commit: the server rolled it back.
OUTCOME_ROLLED_BACK: Final = "rolled back"
#: The request certainly did not change the database.
OUTCOME_NOT_RUN: Final = "not run"


# ---------------------------------------------------------------------------
# The exception tree
# ---------------------------------------------------------------------------


class Warning(Exception):
    """Important warnings, such as data truncation (PEP 249); never raised by SQLite itself."""


class Error(Exception):
    """Base class of every error the driver raises (PEP 249).

    Attributes:
        sqlite_errorcode: the SQLite or dqlite result code behind the error, or
            ``None`` when the error did not come from a result code.
        sqlite_errorname: the symbolic name of that code (``"SQLITE_BUSY"``), or
            ``None``.

    The constructor is that of :class:`Exception`; use :func:`make_error` or
    :func:`error_from_code` to create an error that carries a code.
    """

    # Class-level defaults keep the attributes readable on errors created with
    # a plain ``Error("message")``, which ``sqlite3`` code may still inspect.
    sqlite_errorcode: int | None = None
    sqlite_errorname: str | None = None


class InterfaceError(Error):
    """The driver was misused, or the server could not understand our request."""


class DatabaseError(Error):
    """An error reported by the database."""


class DataError(DatabaseError):
    """A value was out of range or too big (``SQLITE_TOOBIG``)."""


class OperationalError(DatabaseError):
    """An error in the database's operation, not necessarily under the caller's control.

    Examples: the database is locked, an I/O error, a syntax error (``sqlite3``
    reports those as operational too), or losing the connection to the server.

    Attributes:
        outcome: for the errors that end the server session (:class:`ConnectionLostError`,
            :class:`LeadershipLostError`, :class:`NoLeaderError`), what became of
            the request: ``"unknown"`` (it may have taken effect, e.g. a
            ``COMMIT`` whose reply was lost; it is never re-sent),
            ``"rolled back"`` (the open transaction certainly did not commit) or
            ``"not run"`` (the database certainly did not change).  ``None`` on
            errors SQLite reported, which mean what they mean in ``sqlite3``.
    """

    # A class-level default, so errors made from a result code carry it too.
    outcome: Outcome | None = None


class IntegrityError(DatabaseError):
    """A constraint failed (``UNIQUE``, ``NOT NULL``, foreign key, ...)."""


class InternalError(DatabaseError):
    """The database hit an internal inconsistency (``SQLITE_INTERNAL``, ``SQLITE_NOTFOUND``)."""


class ProgrammingError(DatabaseError):
    """The caller made a mistake: wrong number of parameters, closed cursor, empty SQL, ..."""


class NotSupportedError(DatabaseError):
    """The requested feature is not available, for example one that cannot cross a wire."""


class NotLeaderError(OperationalError):
    """The server is not the raft leader, so it refused the request before running it.

    Codes 10250 (``SQLITE_IOERR_NOT_LEADER``) and the legacy 8202.  The request
    did not run, so it is safe to retry it on the current leader: the driver
    does, and this error reaches an application only from the admin
    :class:`~dqlitepy.Client` once its timeout is over.
    """

    outcome: Outcome | None = OUTCOME_NOT_RUN


class LeadershipLostError(OperationalError):
    """The server lost leadership while a write was being replicated.

    Codes 10506 (``SQLITE_IOERR_LEADERSHIP_LOST``) and the legacy 8458.  The
    fate of the write is unknown: it may still be committed by the new leader,
    so it must not be re-sent blindly (``outcome`` is ``"unknown"``, or
    ``"rolled back"`` when the driver knows the statement could not commit).
    """

    outcome: Outcome | None = OUTCOME_UNKNOWN


class NoLeaderError(OperationalError):
    """No server of the cluster could be found that is the leader; carries no code.

    The request was not run (``outcome`` is ``"not run"``).
    """

    outcome: Outcome | None = OUTCOME_NOT_RUN


class ConnectionLostError(OperationalError):
    """The connection to the leader failed, or the leader changed, mid-conversation.

    The server session behind the connection is gone; the next call reconnects
    to the current leader.  What became of the request and of an open
    transaction is in :attr:`outcome` (and in the message): ``"unknown"`` when
    a write or a ``COMMIT`` was sent and no reply came, ``"rolled back"`` when
    the open transaction was lost before it could commit, ``"not run"`` when
    the request never reached a server.  Carries no code.

    Attributes:
        request_sent: False when the request never left this process (or a node
            that no longer leads refused it); True when it was sent, so it must
            not be re-sent blindly.
        outcome: see above; defaults to ``"unknown"`` when ``request_sent``,
            else ``"not run"``.
    """

    def __init__(self, message: str, *, request_sent: bool, outcome: Outcome | None = None) -> None:
        super().__init__(message)
        self.request_sent = request_sent
        if outcome is None:
            outcome = OUTCOME_UNKNOWN if request_sent else OUTCOME_NOT_RUN
        self.outcome = outcome


class _NoMemoryError(MemoryError):
    # CPython's sqlite3 raises a bare MemoryError for SQLITE_NOMEM; this
    # subclass still is one, but keeps the code for logs and is_disconnect().
    sqlite_errorcode: int | None = None
    sqlite_errorname: str | None = None


# ---------------------------------------------------------------------------
# Codes
# ---------------------------------------------------------------------------

# The dqlite codes under the names applications know them by: the numbers
# themselves are :class:`dqlitepy.wire.ErrorCode`'s, the one table of codes a
# FAILURE carries.

#: dqlite: the node is not the leader (protocol.md §5.1): SQLITE_IOERR | (40 << 8).
SQLITE_IOERR_NOT_LEADER: Final = ErrorCode.NOT_LEADER
#: dqlite: leadership was lost while replicating a write: SQLITE_IOERR | (41 << 8).
SQLITE_IOERR_LEADERSHIP_LOST: Final = ErrorCode.LEADERSHIP_LOST
#: Older dqlite servers sent not-leader as SQLITE_IOERR | (32 << 8).  SQLite
#: later gave that value to SQLITE_IOERR_DATA; go-dqlite still reads it as
#: not-leader, and so do we.
SQLITE_IOERR_NOT_LEADER_LEGACY: Final = ErrorCode.NOT_LEADER_LEGACY
#: Older dqlite servers' leadership lost, SQLITE_IOERR | (33 << 8); SQLite's
#: SQLITE_IOERR_CORRUPTFS has the same value.
SQLITE_IOERR_LEADERSHIP_LOST_LEGACY: Final = ErrorCode.LEADERSHIP_LOST_LEGACY
#: dqlite: the server could not parse our request (bad parameter types, unknown
#: request type or schema).
DQLITE_PARSE: Final = ErrorCode.DQLITE_PARSE
#: dqlite: the object asked for does not exist (DUMP of an unknown database).
DQLITE_NOTFOUND: Final = ErrorCode.DQLITE_NOTFOUND

#: The name of every SQLite primary and extended result code (as of SQLite
#: 3.54) and of the dqlite-specific codes.  The legacy dqlite codes 8202 and
#: 8458 keep their SQLite names here (``SQLITE_IOERR_DATA``,
#: ``SQLITE_IOERR_CORRUPTFS``) so that this table stays a faithful copy of
#: SQLite's; :func:`error_from_code` names them by their dqlite meaning instead.
ERROR_NAMES: dict[int, str] = {
    # Primary result codes.
    0: "SQLITE_OK",
    1: "SQLITE_ERROR",
    2: "SQLITE_INTERNAL",
    3: "SQLITE_PERM",
    4: "SQLITE_ABORT",
    5: "SQLITE_BUSY",
    6: "SQLITE_LOCKED",
    7: "SQLITE_NOMEM",
    8: "SQLITE_READONLY",
    9: "SQLITE_INTERRUPT",
    10: "SQLITE_IOERR",
    11: "SQLITE_CORRUPT",
    12: "SQLITE_NOTFOUND",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    15: "SQLITE_PROTOCOL",
    16: "SQLITE_EMPTY",
    17: "SQLITE_SCHEMA",
    18: "SQLITE_TOOBIG",
    19: "SQLITE_CONSTRAINT",
    20: "SQLITE_MISMATCH",
    21: "SQLITE_MISUSE",
    22: "SQLITE_NOLFS",
    23: "SQLITE_AUTH",
    24: "SQLITE_FORMAT",
    25: "SQLITE_RANGE",
    26: "SQLITE_NOTADB",
    27: "SQLITE_NOTICE",
    28: "SQLITE_WARNING",
    100: "SQLITE_ROW",
    101: "SQLITE_DONE",
    # Extended result codes: primary | (n << 8), grouped by primary code.
    0 | (1 << 8): "SQLITE_OK_LOAD_PERMANENTLY",
    0 | (2 << 8): "SQLITE_OK_SYMLINK",
    1 | (1 << 8): "SQLITE_ERROR_MISSING_COLLSEQ",
    1 | (2 << 8): "SQLITE_ERROR_RETRY",
    1 | (3 << 8): "SQLITE_ERROR_SNAPSHOT",
    1 | (4 << 8): "SQLITE_ERROR_RESERVESIZE",
    1 | (5 << 8): "SQLITE_ERROR_KEY",
    1 | (6 << 8): "SQLITE_ERROR_UNABLE",
    4 | (2 << 8): "SQLITE_ABORT_ROLLBACK",
    5 | (1 << 8): "SQLITE_BUSY_RECOVERY",
    5 | (2 << 8): "SQLITE_BUSY_SNAPSHOT",
    5 | (3 << 8): "SQLITE_BUSY_TIMEOUT",
    6 | (1 << 8): "SQLITE_LOCKED_SHAREDCACHE",
    6 | (2 << 8): "SQLITE_LOCKED_VTAB",
    8 | (1 << 8): "SQLITE_READONLY_RECOVERY",
    8 | (2 << 8): "SQLITE_READONLY_CANTLOCK",
    8 | (3 << 8): "SQLITE_READONLY_ROLLBACK",
    8 | (4 << 8): "SQLITE_READONLY_DBMOVED",
    8 | (5 << 8): "SQLITE_READONLY_CANTINIT",
    8 | (6 << 8): "SQLITE_READONLY_DIRECTORY",
    10 | (1 << 8): "SQLITE_IOERR_READ",
    10 | (2 << 8): "SQLITE_IOERR_SHORT_READ",
    10 | (3 << 8): "SQLITE_IOERR_WRITE",
    10 | (4 << 8): "SQLITE_IOERR_FSYNC",
    10 | (5 << 8): "SQLITE_IOERR_DIR_FSYNC",
    10 | (6 << 8): "SQLITE_IOERR_TRUNCATE",
    10 | (7 << 8): "SQLITE_IOERR_FSTAT",
    10 | (8 << 8): "SQLITE_IOERR_UNLOCK",
    10 | (9 << 8): "SQLITE_IOERR_RDLOCK",
    10 | (10 << 8): "SQLITE_IOERR_DELETE",
    10 | (11 << 8): "SQLITE_IOERR_BLOCKED",
    10 | (12 << 8): "SQLITE_IOERR_NOMEM",
    10 | (13 << 8): "SQLITE_IOERR_ACCESS",
    10 | (14 << 8): "SQLITE_IOERR_CHECKRESERVEDLOCK",
    10 | (15 << 8): "SQLITE_IOERR_LOCK",
    10 | (16 << 8): "SQLITE_IOERR_CLOSE",
    10 | (17 << 8): "SQLITE_IOERR_DIR_CLOSE",
    10 | (18 << 8): "SQLITE_IOERR_SHMOPEN",
    10 | (19 << 8): "SQLITE_IOERR_SHMSIZE",
    10 | (20 << 8): "SQLITE_IOERR_SHMLOCK",
    10 | (21 << 8): "SQLITE_IOERR_SHMMAP",
    10 | (22 << 8): "SQLITE_IOERR_SEEK",
    10 | (23 << 8): "SQLITE_IOERR_DELETE_NOENT",
    10 | (24 << 8): "SQLITE_IOERR_MMAP",
    10 | (25 << 8): "SQLITE_IOERR_GETTEMPPATH",
    10 | (26 << 8): "SQLITE_IOERR_CONVPATH",
    10 | (27 << 8): "SQLITE_IOERR_VNODE",
    10 | (28 << 8): "SQLITE_IOERR_AUTH",
    10 | (29 << 8): "SQLITE_IOERR_BEGIN_ATOMIC",
    10 | (30 << 8): "SQLITE_IOERR_COMMIT_ATOMIC",
    10 | (31 << 8): "SQLITE_IOERR_ROLLBACK_ATOMIC",
    10 | (32 << 8): "SQLITE_IOERR_DATA",
    10 | (33 << 8): "SQLITE_IOERR_CORRUPTFS",
    10 | (34 << 8): "SQLITE_IOERR_IN_PAGE",
    10 | (35 << 8): "SQLITE_IOERR_BADKEY",
    10 | (36 << 8): "SQLITE_IOERR_CODEC",
    11 | (1 << 8): "SQLITE_CORRUPT_VTAB",
    11 | (2 << 8): "SQLITE_CORRUPT_SEQUENCE",
    11 | (3 << 8): "SQLITE_CORRUPT_INDEX",
    14 | (1 << 8): "SQLITE_CANTOPEN_NOTEMPDIR",
    14 | (2 << 8): "SQLITE_CANTOPEN_ISDIR",
    14 | (3 << 8): "SQLITE_CANTOPEN_FULLPATH",
    14 | (4 << 8): "SQLITE_CANTOPEN_CONVPATH",
    14 | (5 << 8): "SQLITE_CANTOPEN_DIRTYWAL",
    14 | (6 << 8): "SQLITE_CANTOPEN_SYMLINK",
    19 | (1 << 8): "SQLITE_CONSTRAINT_CHECK",
    19 | (2 << 8): "SQLITE_CONSTRAINT_COMMITHOOK",
    19 | (3 << 8): "SQLITE_CONSTRAINT_FOREIGNKEY",
    19 | (4 << 8): "SQLITE_CONSTRAINT_FUNCTION",
    19 | (5 << 8): "SQLITE_CONSTRAINT_NOTNULL",
    19 | (6 << 8): "SQLITE_CONSTRAINT_PRIMARYKEY",
    19 | (7 << 8): "SQLITE_CONSTRAINT_TRIGGER",
    19 | (8 << 8): "SQLITE_CONSTRAINT_UNIQUE",
    19 | (9 << 8): "SQLITE_CONSTRAINT_VTAB",
    19 | (10 << 8): "SQLITE_CONSTRAINT_ROWID",
    19 | (11 << 8): "SQLITE_CONSTRAINT_PINNED",
    19 | (12 << 8): "SQLITE_CONSTRAINT_DATATYPE",
    23 | (1 << 8): "SQLITE_AUTH_USER",
    27 | (1 << 8): "SQLITE_NOTICE_RECOVER_WAL",
    27 | (2 << 8): "SQLITE_NOTICE_RECOVER_ROLLBACK",
    27 | (3 << 8): "SQLITE_NOTICE_RBU",
    28 | (1 << 8): "SQLITE_WARNING_AUTOINDEX",
    # dqlite-specific codes (protocol.md §5.1).
    SQLITE_IOERR_NOT_LEADER: "SQLITE_IOERR_NOT_LEADER",
    SQLITE_IOERR_LEADERSHIP_LOST: "SQLITE_IOERR_LEADERSHIP_LOST",
    DQLITE_PARSE: "DQLITE_PARSE",
    DQLITE_NOTFOUND: "DQLITE_NOTFOUND",
}

# Codes whose meaning depends on the peer being dqlite: they pick the class
# before the primary code is looked at, and (for the legacy values that
# collide with SQLite's own codes) the name that describes what they mean.
_DQLITE_CLASSES: dict[int, tuple[type[Error], str]] = {
    SQLITE_IOERR_NOT_LEADER: (NotLeaderError, "SQLITE_IOERR_NOT_LEADER"),
    SQLITE_IOERR_NOT_LEADER_LEGACY: (NotLeaderError, "SQLITE_IOERR_NOT_LEADER_LEGACY"),
    SQLITE_IOERR_LEADERSHIP_LOST: (LeadershipLostError, "SQLITE_IOERR_LEADERSHIP_LOST"),
    SQLITE_IOERR_LEADERSHIP_LOST_LEGACY: (
        LeadershipLostError,
        "SQLITE_IOERR_LEADERSHIP_LOST_LEGACY",
    ),
    # The server could not decode what we sent: a driver bug, not a database error.
    DQLITE_PARSE: (InterfaceError, "DQLITE_PARSE"),
    DQLITE_NOTFOUND: (OperationalError, "DQLITE_NOTFOUND"),
    # dqlite answers 0 "empty statement" for SQL with no statement in it; the
    # caller gave us nothing to run, which sqlite3 users know as a programming error.
    ErrorCode.EMPTY_STATEMENT: (ProgrammingError, "SQLITE_OK"),
}

# The class for each primary result code, as CPython's sqlite3 chooses it.
# Primary codes missing here (CORRUPT, NOLFS, AUTH, FORMAT, NOTADB, NOTICE,
# WARNING, ROW, DONE and anything unknown) map to DatabaseError.
_PRIMARY_CLASSES: dict[int, type[Error]] = {
    _c.SQLITE_INTERNAL: InternalError,
    _c.SQLITE_NOTFOUND: InternalError,
    _c.SQLITE_ERROR: OperationalError,
    _c.SQLITE_PERM: OperationalError,
    _c.SQLITE_ABORT: OperationalError,
    _c.SQLITE_BUSY: OperationalError,
    _c.SQLITE_LOCKED: OperationalError,
    _c.SQLITE_READONLY: OperationalError,
    _c.SQLITE_INTERRUPT: OperationalError,
    _c.SQLITE_IOERR: OperationalError,
    _c.SQLITE_FULL: OperationalError,
    _c.SQLITE_CANTOPEN: OperationalError,
    _c.SQLITE_PROTOCOL: OperationalError,
    _c.SQLITE_EMPTY: OperationalError,
    _c.SQLITE_SCHEMA: OperationalError,
    _c.SQLITE_TOOBIG: DataError,
    _c.SQLITE_CONSTRAINT: IntegrityError,
    _c.SQLITE_MISMATCH: IntegrityError,
    _c.SQLITE_MISUSE: InterfaceError,
    _c.SQLITE_RANGE: InterfaceError,
}

_E = TypeVar("_E", bound=Error)


def make_error(
    cls: type[_E], message: str, *, code: int | None = None, name: str | None = None
) -> _E:
    """Create an error that carries a result code.

    Args:
        cls: the :class:`Error` subclass to instantiate.
        message: the error message (the exception's only argument, as in ``sqlite3``).
        code: the SQLite or dqlite result code, if any.
        name: the code's symbolic name; defaults to ``ERROR_NAMES.get(code)``.

    Returns:
        The new exception, not raised.
    """
    exc = cls(message)
    if code is not None:
        exc.sqlite_errorcode = int(code)
        exc.sqlite_errorname = name if name is not None else ERROR_NAMES.get(code)
    elif name is not None:
        exc.sqlite_errorname = name
    return exc


def error_from_code(code: int, message: str) -> Error | MemoryError:
    """Turn a FAILURE response's code and message into the exception to raise.

    The dqlite-specific codes are matched first (protocol.md §5.1): 10250 and
    8202 give :class:`NotLeaderError`, 10506 and 8458 :class:`LeadershipLostError`,
    1005 (``DQLITE_PARSE``) :class:`InterfaceError`, 1002 (``DQLITE_NOTFOUND``)
    :class:`OperationalError`, and 0 ("empty statement") :class:`ProgrammingError`.
    Every other code picks its class by its primary code (``code & 0xff``) the
    way CPython's ``sqlite3`` does.  ``SQLITE_NOMEM`` gives a :class:`MemoryError`
    as in ``sqlite3``; unlike there, it still carries the code attributes.

    Args:
        code: the result code from the server.
        message: the server's message, used as the exception message.

    Returns:
        The exception, not raised, with ``sqlite_errorcode`` and ``sqlite_errorname`` set.
    """
    special = _DQLITE_CLASSES.get(code)
    if special is not None:
        cls, name = special
        return make_error(cls, message, code=code, name=name)
    primary = code & 0xFF
    if primary == ErrorCode.SQLITE_NOMEM:
        nomem = _NoMemoryError(message)
        nomem.sqlite_errorcode = int(code)
        nomem.sqlite_errorname = ERROR_NAMES.get(code)
        return nomem
    return make_error(_PRIMARY_CLASSES.get(primary, DatabaseError), message, code=code)
