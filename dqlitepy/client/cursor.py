"""The PEP 249 cursor, shaped like ``sqlite3.Cursor``, and what an asyncio cursor shares.

A cursor reaches its connection's machinery through two doors only:
``Connection._check()`` (``sqlite3``'s checks: initialised, same thread, open)
and ``Connection._session`` (a :class:`~dqlitepy.client.session.Session`), of
which it uses only what :class:`CursorSession` lists, and mypy holds it to
that.  The rest is the cursor's own state: the result rows, their description
and converters, and the read position.

:class:`CursorBase` holds that state and runs statements as generators of
:mod:`dqlitepy.client.needs` (``_run_execute`` …): :class:`Cursor` drives them
with the blocking waiter, ``dqlitepy.aio``'s cursor with asyncio, so both follow
the same transaction rules.

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
from .needs import Gen
from .sqltext import ParsedSQL, parse, split_statements
from .types import PARSE_DECLTYPES
from .waiting import wait

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Cursor", "CursorBase", "CursorSession"]

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

    def begin_implicitly(self, parsed: ParsedSQL) -> Gen[None]:
        """Open the implicit transaction sqlite3 would open before ``parsed``."""

    def commit_before_script(self) -> Gen[None]:
        """Commit as ``executescript()`` does first."""

    def execute(
        self, parsed: ParsedSQL, params: ValueTuple
    ) -> Gen[list[RowsResponse] | ResultResponse]:
        """Run one statement: its ROWS batches, or its RESULT."""

    def execute_many(
        self,
        parsed: ParsedSQL,
        params: Iterable[ValueTuple],
        on_result: Callable[[ResultResponse], object],
    ) -> Gen[None]:
        """Run one DML statement once per parameter set."""

    def after_failure(self, exc: Error) -> Gen[None]:
        """Learn whether SQLite ended the transaction after a failed statement."""

    def refresh_last_insert_rowid(self) -> Gen[None]:
        """Ask the server for ``last_insert_rowid()``."""

    def decltypes(self, sql: str, count: int) -> Gen[list[str | None]]:
        """The declared types of the result columns of ``sql``."""


class _RowSource(Protocol):
    """What a cursor reads from its connection when it converts rows."""

    @property
    def text_factory(self) -> Any:
        """Turns TEXT values into Python objects (``str`` by default)."""


class CursorBase:
    """A cursor's state, and its statements as generators (shared by the sync and async APIs).

    Subclasses check their connection and drive the ``_run_*`` generators
    with their waiter.
    """

    arraysize: int
    #: True while a method runs code that may call back into Python (adapters,
    #: converters, parameter iterators): sqlite3 refuses recursive use then.
    _locked = False
    row_factory: Callable[[Any, tuple[Any, ...]], Any] | None

    def _init_state(self, row_factory: Callable[[Any, tuple[Any, ...]], Any] | None) -> None:
        self.arraysize = 1
        self.description: Description | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.row_factory = row_factory
        self._closed = False
        self._columns: Sequence[str] = ()
        self._rows: list[tuple[Value, ...]] = []
        self._row_types: list[tuple[int, ...]] = []
        self._converters: list[Converter | None] = []
        self._pos = 0

    def _row_source(self) -> _RowSource:
        """The connection whose ``text_factory`` converts TEXT values."""
        raise NotImplementedError

    def _reset(self) -> None:
        self.description = None
        self._columns = ()
        self._rows = []
        self._row_types = []
        self._converters = []
        self._pos = 0

    # ------------------------------------------------------------------ running

    def _execute_one(
        self, session: CursorSession, parsed: ParsedSQL, params: ValueTuple
    ) -> Gen[None]:
        """Run one statement; ``self.lastrowid`` follows the server session (as in sqlite3)."""
        outcome = yield from session.execute(parsed, params)
        if isinstance(outcome, ResultResponse):
            self.rowcount = outcome.rows_affected if parsed.is_dml else -1
            self.lastrowid = outcome.last_insert_id
            return
        yield from self._take_rows(session, outcome, parsed.first)
        if parsed.is_dml:
            # DML ... RETURNING yields one row per changed row, and may
            # have inserted: ask for the rowid the ROWS response lacks.
            self.rowcount = len(self._rows)
            yield from session.refresh_last_insert_rowid()
        self.lastrowid = session.last_insert_rowid

    def _take_rows(
        self, session: CursorSession, batches: list[RowsResponse], sql: str
    ) -> Gen[None]:
        rows: list[tuple[Value, ...]] = []
        types: list[tuple[int, ...]] = []
        for batch in batches:
            rows.extend(batch.rows)
            types.extend(batch.row_types)
        columns = batches[0].columns if batches else ()
        if columns:
            decltypes = None
            if rows and session.detect_types & PARSE_DECLTYPES:
                decltypes = yield from session.decltypes(sql, len(columns))
            self.description, self._converters = describe(columns, decltypes, session.detect_types)
            self._columns = tuple(columns)
        self._rows = rows
        self._row_types = types

    def _run_execute(self, session: CursorSession, sql: str, parameters: Any) -> Gen[None]:
        """``execute()``: one SQL statement with qmark or named parameters."""
        self._reset()
        self.rowcount = -1
        if not isinstance(sql, str):
            raise TypeError(f"execute() argument 1 must be str, not {type(sql).__name__}")
        parsed = session.parse_one(sql)
        params = bind(parsed, parameters)
        if parsed.is_empty:
            return
        try:
            yield from session.begin_implicitly(parsed)
            yield from self._execute_one(session, parsed, params)
        except Error as exc:
            yield from session.after_failure(exc)
            raise

    def _run_executemany(
        self, session: CursorSession, sql: str, seq_of_parameters: Iterable[Any]
    ) -> Gen[None]:
        """``executemany()``: one DML statement once per parameter set, prepared once."""
        self._reset()
        self.rowcount = -1
        parsed = session.parse_one(sql)
        if parsed.returns_rows_hint:
            raise ProgrammingError("executemany() can only execute DML statements.")
        iterator = iter(seq_of_parameters)
        if parsed.is_empty:
            return
        try:
            yield from session.begin_implicitly(parsed)
            yield from self._execute_many(session, parsed, iterator)
        except Error as exc:
            yield from session.after_failure(exc)
            raise

    def _execute_many(
        self, session: CursorSession, parsed: ParsedSQL, iterator: Iterator[Any]
    ) -> Gen[None]:
        counting = parsed.is_dml
        total = 0 if counting else -1

        def count(result: ResultResponse) -> None:
            nonlocal total
            if counting:
                total += result.rows_affected
            self.rowcount = total

        # Parameter sets are read and bound one at a time, between executions.
        values = (bind(parsed, parameters) for parameters in iterator)
        yield from session.execute_many(parsed, values, count)
        self.rowcount = total

    def _run_executescript(self, session: CursorSession, sql_script: str) -> Gen[None]:
        """``executescript()``: commit any open transaction, then run every statement."""
        session.check_sql(sql_script)
        if "\x00" in sql_script:
            raise ValueError("embedded null character")
        self._reset()
        yield from session.commit_before_script()
        # sqlite3 leaves rowcount and lastrowid as they were.
        rowcount, lastrowid = self.rowcount, self.lastrowid
        try:
            for statement in split_statements(sql_script):
                parsed = parse(statement)
                if not parsed.is_empty:
                    yield from self._execute_one(session, parsed, ValueTuple())
        except Error as exc:
            yield from session.after_failure(exc)
            raise
        finally:
            self.rowcount, self.lastrowid = rowcount, lastrowid
        self._reset()

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
                self._row_source().text_factory,
                self._columns,
            )
        finally:
            self._locked = False
        factory = self.row_factory
        return factory(self, row) if factory is not None else row

    def _fetchmany(self, size: int | None) -> list[Any]:
        n = self.arraysize if size is None else size
        out = []
        # As in sqlite3, a size of 0 or less never matches: every remaining row.
        while (row := self._next_row()) is not None:
            out.append(row)
            if len(out) == n:
                break
        return out

    def _fetchall(self) -> list[Any]:
        out = []
        while (row := self._next_row()) is not None:
            out.append(row)
        return out


class Cursor(CursorBase):
    """A cursor over one connection (``sqlite3.Cursor``-like)."""

    #: True once ``__init__`` has run; sqlite3 refuses every operation before.
    _initialized = False

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
        self._init_state(connection.row_factory)
        self._initialized = True

    def _row_source(self) -> Connection:
        return self.connection

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

    # ------------------------------------------------------------------ running

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """Execute one SQL statement with qmark or named parameters."""
        with self._in_use() as session:
            wait(self._run_execute(session, sql, parameters))
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Cursor:
        """Run one DML statement once per parameter set, as one prepared statement."""
        if not isinstance(sql, str):
            raise TypeError(f"executemany() argument 1 must be str, not {type(sql).__name__}")
        with self._in_use() as session:
            wait(self._run_executemany(session, sql, seq_of_parameters))
        return self

    def executescript(self, sql_script: str, /) -> Cursor:
        """Commit any open transaction, then run every statement of the script."""
        if not isinstance(sql_script, str):
            raise TypeError(
                f"executescript() argument must be str, not {type(sql_script).__name__}"
            )
        with self._in_use() as session:
            wait(self._run_executescript(session, sql_script))
        return self

    # ----------------------------------------------------------------- fetching

    def fetchone(self) -> Any:
        """Return the next row, or None when the result is exhausted."""
        self._check()
        return self._next_row()

    def fetchmany(self, size: int | None = None) -> list[Any]:
        """Return up to ``size`` (default ``arraysize``) further rows."""
        self._check()
        return self._fetchmany(size)

    def fetchall(self) -> list[Any]:
        """Return every remaining row."""
        self._check()
        return self._fetchall()

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
