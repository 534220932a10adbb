"""The PEP 249 cursor, shaped like ``sqlite3.Cursor``.

A cursor reaches its connection's machinery through two doors only:
``Connection._check()`` (``sqlite3``'s checks: initialised, same thread, open)
and ``Connection._session`` (a :class:`~dqlitepy.client.session.Session`), of
which it uses only what :class:`CursorSession` lists, and mypy holds it to
that.  The rest is the cursor's own state: the result rows, their description
and converters, and the read position.

Results are read whole when a statement runs: a dqlite server streams every
batch of a result without waiting, so the connection is free again at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from ..wire import ResultResponse, RowsResponse, Value, ValueTuple
from .convert import Converter, Description, bind, convert_row, describe
from .errors import Error, ProgrammingError
from .sqltext import ParsedSQL, parse, split_statements
from .types import PARSE_DECLTYPES

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Cursor"]

_RECURSIVE_USE = "Recursive use of cursors not allowed."


class CursorSession(Protocol):
    """What a cursor may ask of its connection's server session (``session.Session``)."""

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """Held for the whole of each cursor operation."""

    @property
    def detect_types(self) -> int:
        """The connection's ``PARSE_DECLTYPES``/``PARSE_COLNAMES`` flags."""

    @property
    def last_insert_rowid(self) -> int:
        """The server session's ``last_insert_rowid()``, as of the last result."""

    def parse_one(self, sql: str) -> ParsedSQL:
        """Check and parse SQL that must hold one statement."""

    def check_sql(self, sql: str) -> None:
        """Refuse SQL that sqlite3 would refuse before preparing it."""

    def begin_implicitly(self, parsed: ParsedSQL) -> None:
        """Open the implicit transaction sqlite3 would open before ``parsed``."""

    def commit_before_script(self) -> None:
        """Commit as ``executescript()`` does first."""

    def execute(self, parsed: ParsedSQL, params: ValueTuple) -> list[RowsResponse] | ResultResponse:
        """Run one statement: its ROWS batches, or its RESULT."""

    def execute_many(
        self, parsed: ParsedSQL, params: Iterable[ValueTuple]
    ) -> Iterator[ResultResponse]:
        """Run one DML statement once per parameter set."""

    def after_failure(self, exc: Error) -> None:
        """Learn whether SQLite ended the transaction after a failed statement."""

    def refresh_last_insert_rowid(self) -> None:
        """Ask the server for ``last_insert_rowid()``."""

    def decltypes(self, sql: str, count: int) -> list[str | None]:
        """The declared types of the result columns of ``sql``."""


class Cursor:
    """A cursor over one connection (``sqlite3.Cursor``-like)."""

    arraysize: int
    #: True once ``__init__`` has run; sqlite3 refuses every operation before.
    _initialized = False
    #: True while a method runs code that may call back into Python (adapters,
    #: converters, parameter iterators): sqlite3 refuses recursive use then.
    _locked = False

    def __init__(self, connection: Connection, /) -> None:
        # Imported here: the connection module imports this one to make cursors.
        from .connection import Connection

        if self._locked:
            raise ProgrammingError(_RECURSIVE_USE)
        if not issubclass(type(connection), Connection):
            raise TypeError(
                "argument 1 must be dqlitepy.Connection, not " + type(connection).__name__
            )
        self.connection = connection
        self.arraysize = 1
        self.description: Description | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.row_factory: Callable[[Cursor, tuple[Any, ...]], Any] | None = connection.row_factory
        self._closed = False
        self._columns: Sequence[str] = ()
        self._rows: list[tuple[Value, ...]] = []
        self._row_types: list[tuple[int, ...]] = []
        self._converters: list[Converter | None] = []
        self._pos = 0
        self._initialized = True

    def _check(self) -> Connection:
        if not self._initialized:
            raise ProgrammingError("Base Cursor.__init__ not called.")
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        if self._locked:
            raise ProgrammingError(_RECURSIVE_USE)
        conn = self.connection
        conn._check()
        return conn

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[CursorSession]:
        """Check the cursor, then hold it (and its connection's session) for one operation."""
        session: CursorSession = self._check()._session
        self._locked = True
        try:
            with session.lock:
                yield session
        finally:
            self._locked = False

    def _reset(self) -> None:
        self.description = None
        self._columns = ()
        self._rows = []
        self._row_types = []
        self._converters = []
        self._pos = 0

    # ------------------------------------------------------------------ running

    def _execute_one(self, session: CursorSession, parsed: ParsedSQL, params: ValueTuple) -> None:
        """Run one statement; ``self.lastrowid`` follows the server session (as in sqlite3)."""
        outcome = session.execute(parsed, params)
        if isinstance(outcome, ResultResponse):
            self.rowcount = outcome.rows_affected if parsed.is_dml else -1
            self.lastrowid = outcome.last_insert_id
            return
        self._take_rows(session, outcome, parsed.first)
        if parsed.is_dml:
            # DML ... RETURNING yields one row per changed row, and may
            # have inserted: ask for the rowid the ROWS response lacks.
            self.rowcount = len(self._rows)
            session.refresh_last_insert_rowid()
        self.lastrowid = session.last_insert_rowid

    def _take_rows(self, session: CursorSession, batches: list[RowsResponse], sql: str) -> None:
        rows: list[tuple[Value, ...]] = []
        types: list[tuple[int, ...]] = []
        for batch in batches:
            rows.extend(batch.rows)
            types.extend(batch.row_types)
        columns = batches[0].columns if batches else ()
        if columns:
            decltypes = None
            if rows and session.detect_types & PARSE_DECLTYPES:
                decltypes = session.decltypes(sql, len(columns))
            self.description, self._converters = describe(columns, decltypes, session.detect_types)
            self._columns = tuple(columns)
        self._rows = rows
        self._row_types = types

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """Execute one SQL statement with qmark or named parameters."""
        with self._in_use() as session:
            self._reset()
            self.rowcount = -1
            if not isinstance(sql, str):
                raise TypeError(f"execute() argument 1 must be str, not {type(sql).__name__}")
            parsed = session.parse_one(sql)
            params = bind(parsed, parameters)
            if parsed.is_empty:
                return self
            try:
                session.begin_implicitly(parsed)
                self._execute_one(session, parsed, params)
            except Error as exc:
                session.after_failure(exc)
                raise
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Cursor:
        """Run one DML statement once per parameter set, as one prepared statement."""
        if not isinstance(sql, str):
            raise TypeError(f"executemany() argument 1 must be str, not {type(sql).__name__}")
        with self._in_use() as session:
            self._reset()
            self.rowcount = -1
            parsed = session.parse_one(sql)
            if parsed.returns_rows_hint:
                raise ProgrammingError("executemany() can only execute DML statements.")
            iterator = iter(seq_of_parameters)
            if parsed.is_empty:
                return self
            try:
                session.begin_implicitly(parsed)
                self._execute_many(session, parsed, iterator)
            except Error as exc:
                session.after_failure(exc)
                raise
        return self

    def _execute_many(
        self, session: CursorSession, parsed: ParsedSQL, iterator: Iterator[Any]
    ) -> None:
        total = 0 if parsed.is_dml else -1
        # Parameter sets are read and bound one at a time, between executions.
        values = (bind(parsed, parameters) for parameters in iterator)
        for result in session.execute_many(parsed, values):
            if parsed.is_dml:
                total += result.rows_affected
            self.rowcount = total
        self.rowcount = total

    def executescript(self, sql_script: str, /) -> Cursor:
        """Commit any open transaction, then run every statement of the script."""
        if not isinstance(sql_script, str):
            raise TypeError(
                f"executescript() argument must be str, not {type(sql_script).__name__}"
            )
        with self._in_use() as session:
            session.check_sql(sql_script)
            if "\x00" in sql_script:
                raise ValueError("embedded null character")
            self._reset()
            session.commit_before_script()
            # sqlite3 leaves rowcount and lastrowid as they were.
            rowcount, lastrowid = self.rowcount, self.lastrowid
            try:
                for statement in split_statements(sql_script):
                    parsed = parse(statement)
                    if not parsed.is_empty:
                        self._execute_one(session, parsed, ValueTuple())
            except Error as exc:
                session.after_failure(exc)
                raise
            finally:
                self.rowcount, self.lastrowid = rowcount, lastrowid
            self._reset()
        return self

    # ----------------------------------------------------------------- fetching

    def _next_row(self) -> Any | None:
        if self._pos >= len(self._rows):
            return None
        i = self._pos
        self._pos += 1
        # Converters and text factories are user code: the cursor is in use.
        self._locked = True
        try:
            row = convert_row(
                self._rows[i],
                self._row_types[i],
                self._converters,
                self.connection.text_factory,
                self._columns,
            )
        finally:
            self._locked = False
        factory = self.row_factory
        return factory(self, row) if factory is not None else row

    def fetchone(self) -> Any:
        """Return the next row, or None when the result is exhausted."""
        self._check()
        return self._next_row()

    def fetchmany(self, size: int | None = None) -> list[Any]:
        """Return up to ``size`` (default ``arraysize``) further rows."""
        self._check()
        n = self.arraysize if size is None else size
        out = []
        # As in sqlite3, a size of 0 or less never matches: every remaining row.
        while (row := self._next_row()) is not None:
            out.append(row)
            if len(out) == n:
                break
        return out

    def fetchall(self) -> list[Any]:
        """Return every remaining row."""
        self._check()
        out = []
        while (row := self._next_row()) is not None:
            out.append(row)
        return out

    def __iter__(self) -> Cursor:
        return self

    def __next__(self) -> Any:
        self._check()
        row = self._next_row()
        if row is None:
            raise StopIteration
        return row

    def close(self) -> None:
        """Close the cursor; further use raises ``ProgrammingError``."""
        if self._locked:
            raise ProgrammingError(_RECURSIVE_USE)
        if not self._initialized:
            raise ProgrammingError("Base Cursor.__init__ not called.")
        self.connection._check()
        self._closed = True
        self._reset()

    def setinputsizes(self, sizes: Any, /) -> None:
        """Does nothing (PEP 249)."""

    def setoutputsize(self, size: Any, column: Any = None, /) -> None:
        """Does nothing (PEP 249)."""
