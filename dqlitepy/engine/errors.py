"""SQLite's failures as a dqlite FAILURE carries them: :class:`EngineError`.

Every ``apsw.Error`` the engine meets is translated here (:func:`translate`) into an
:class:`EngineError` holding SQLite's extended result code and message, so no APSW
exception leaves the engine.
"""

from __future__ import annotations

import contextlib
import errno

import apsw

__all__ = [
    "SQLITE_CORRUPT",
    "SQLITE_ERROR",
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_MISUSE",
    "SQLITE_RANGE",
    "SQLITE_ROW",
    "EngineError",
    "SessionClosed",
    "translate",
]

# SQLite's primary result codes the engine raises itself.
SQLITE_ERROR = 1
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_MISUSE = 21
SQLITE_RANGE = 25
SQLITE_ROW = 100
#: OS errors meaning "no room" (SQLITE_FULL), as opposed to a failing device.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class EngineError(Exception):
    """A SQLite failure: the extended result code and ``sqlite3_errmsg`` text.

    Attributes:
        code: SQLite's (extended) result code, or a dqlite code.
        message: the message as SQLite words it.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SessionClosed(EngineError):
    """The session was closed (possibly by another thread) before this call."""

    def __init__(self) -> None:
        super().__init__(SQLITE_MISUSE, "the session is closed")


def translate(exc: apsw.Error, db: apsw.Connection | None = None) -> EngineError:
    """SQLite's error as an :class:`EngineError`; ``db``: the connection it came from.

    SQLite reports a full disk as ``SQLITE_FULL`` only where it expected one (writing
    pages); elsewhere the same ``ENOSPC`` (or ``EDQUOT``) is an ``SQLITE_IOERR_*`` code,
    e.g. ``SQLITE_IOERR_SHMSIZE`` when the WAL index cannot grow.  The OS error of the
    connection's last failed call tells them apart: a full disk is reported as one.
    """
    code = getattr(exc, "extendedresult", None) or getattr(exc, "result", None) or SQLITE_ERROR
    if db is not None and int(code) & 0xFF == SQLITE_IOERR:
        with contextlib.suppress(apsw.Error):
            if db.system_errno in _FULL_ERRNOS:
                return EngineError(SQLITE_FULL, "database or disk is full")
    return EngineError(int(code), str(exc))
