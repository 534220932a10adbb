"""The SQL engine: SQLite through APSW.  The only part of dqlitepy that imports ``apsw``.

Exposes :class:`Engine` (the databases of one node's data directory) and
:class:`Session` (one SQLite connection serving one client connection), with
errors translated to :class:`EngineError` carrying SQLite's extended result code
and message, exactly what a dqlite FAILURE response needs.
"""

from __future__ import annotations

from .sqlite import (
    SQLITE_VERSION,
    Engine,
    EngineError,
    ExecResult,
    QueryResult,
    Session,
    SessionClosed,
    StatementInfo,
    database_filename,
    is_blank,
)

__all__ = [
    "SQLITE_VERSION",
    "Engine",
    "EngineError",
    "ExecResult",
    "QueryResult",
    "Session",
    "SessionClosed",
    "StatementInfo",
    "database_filename",
    "is_blank",
]
