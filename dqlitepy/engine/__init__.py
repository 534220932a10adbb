"""The SQL engine: SQLite through APSW.  The only part of dqlitepy that imports ``apsw``.

Exposes :class:`Engine` (the databases of one node's data directory) and
:class:`Session` (one SQLite connection serving one client connection), with
errors translated to :class:`EngineError` carrying SQLite's extended result code
and message, exactly what a dqlite FAILURE response needs.

Modules: :mod:`.session` (sessions, statements and the SQL safety rules),
:mod:`.database` (the data directory's files: :class:`Engine`), :mod:`.wal`
(reading and writing WAL frames, no SQLite involved) and :mod:`.errors`.
"""

from __future__ import annotations

from .database import Engine, database_filename
from .errors import EngineError, SessionClosed
from .session import SQLITE_VERSION, ExecResult, QueryResult, Session, StatementInfo, is_blank

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
