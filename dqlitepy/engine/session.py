"""Sessions: one SQLite connection (through APSW) serving one client connection.

A :class:`Session` is one APSW connection opened for one client connection, as
dqlite opens one SQLite connection per client.  Statements run one at a time:
:meth:`Session.statement` splits the first statement off a text (with SQLite's
own parser, through ``apsw.ext.query_info``) and caches what it learned, so the
gateway can implement PREPARE, EXEC_SQL's statement loop and QUERY_SQL's tail
rule without parsing SQL itself.

Every client stays inside its database (``docs/server.md``, "Safety"): an authorizer refuses
ATTACH of any file (which also covers ``VACUUM INTO``), ``load_extension`` and the
pragmas that would change the journal, durability, locking or schema writing.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol, TypeVar

import apsw
import apsw.ext

from .errors import SQLITE_ERROR, SQLITE_RANGE, SQLITE_ROW, EngineError, SessionClosed, translate

__all__ = [
    "DECLTYPES_FUNCTION",
    "LIMIT_FUNCTION",
    "SQLITE_VERSION",
    "ExecResult",
    "QueryResult",
    "Session",
    "StatementInfo",
    "is_blank",
]

#: SQL functions every session offers its client (see :class:`Session`).
LIMIT_FUNCTION = "dqlitepy_limit"
DECLTYPES_FUNCTION = "dqlitepy_decltypes"

#: The version of the SQLite library APSW carries.
SQLITE_VERSION: str = apsw.sqlite_lib_version()

# The wire layer keeps text that is not UTF-8 as surrogate escapes; dqlite would pass
# such bytes to SQLite as they are, but APSW takes and gives only valid UTF-8.
_T = TypeVar("_T")


class RowsFiller(Protocol):
    """What takes a result's rows batch by batch (the server's ROWS encoder)."""

    def fill(self, rows: Iterator[tuple[Any, ...]]) -> bool:
        """Take rows up to a batch; True if they ran out."""


_F = TypeVar("_F", bound=RowsFiller)

_NOT_UTF8 = "text value is not valid UTF-8"
_SQL_NOT_UTF8 = "SQL text is not valid UTF-8"
_PARAM_NOT_UTF8 = "text parameter is not valid UTF-8"

# Pragmas a client may read but never set: they belong to the server.
_GUARDED_PRAGMAS = frozenset(
    {
        "journal_mode",
        "synchronous",
        "writable_schema",
        "locking_mode",
        "wal_autocheckpoint",
        "wal_checkpoint",
        "journal_size_limit",
        "schema_version",
        "temp_store_directory",
        "data_store_directory",
        "mmap_size",
    }
)
# Pragmas refused even without a value, because reading them acts.
_FORBIDDEN_PRAGMAS = frozenset({"wal_checkpoint", "temp_store_directory", "data_store_directory"})

_STATEMENT_CACHE_SIZE = 256
# A result's column names and declared types from its description (C, no generator).
_first, _second = itemgetter(0), itemgetter(1)
# Longer texts are not cached: EXEC_SQL walks a script through ever shorter tails, and
# keeping 256 of a big script's tails would hold hundreds of megabytes per session.
_MAX_CACHED_SQL = 8192


_BLANK = re.compile(r"(?:\s|;|--[^\n]*(?:\n|$)|/\*(?:[^*]|\*(?!/))*(?:\*/|$))*\Z")


def is_blank(sql: str) -> bool:
    """True if ``sql`` holds only white space, comments and semicolons."""
    return _BLANK.match(sql) is not None


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """What SQLite's parser says about the first statement of a text."""

    #: The first statement's text (empty if the text holds no statement).
    sql: str
    #: Everything after it.
    tail: str
    #: ``sqlite3_bind_parameter_count``: the highest parameter index.
    param_count: int
    #: The number of result columns (0 for statements that return no rows).
    column_count: int
    #: True when the text holds no statement at all (only comments or blanks).
    empty: bool
    #: True when the statement cannot write.
    readonly: bool
    #: False when the statement opens no transaction on the database (``BEGIN``,
    #: ``SELECT last_insert_rowid()``, ``SELECT 1``): it reads no page, so it
    #: needs neither a read snapshot nor a leadership check.
    reads_database: bool = True

    @property
    def tail_offset(self) -> int:
        """Byte offset of the tail inside the UTF-8 text (STMT schema 1)."""
        return len(self.sql.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, slots=True)
class ExecResult:
    """The outcome of a statement that returned no rows."""

    last_insert_id: int
    rows_affected: int


class QueryResult:
    """Rows of a running statement; iterate to step it.

    Attributes:
        columns: the result column names.
        decltypes: each column's declared type, or None.
    """

    def __init__(
        self,
        session: Session,
        cursor: apsw.Cursor,
        columns: tuple[str, ...],
        decltypes: tuple[str | None, ...],
        rows: Iterator[tuple[Any, ...]],
    ) -> None:
        self._session = session
        self._cursor = cursor
        self.columns = columns
        self.decltypes = decltypes
        self._rows = rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self

    def __next__(self) -> tuple[Any, ...]:
        with self._session._using():
            return self._consume(next)

    def feed(self, consume: Callable[[Iterator[tuple[Any, ...]]], _T]) -> _T:
        """Call ``consume`` with the rows as SQLite steps them, holding the session.

        Faster than iterating the result: one lock for all the steps ``consume``
        takes (a batch of a ROWS response), not one per row.  Errors met while
        stepping are translated as ``__next__`` translates them.
        """
        with self._session._using():
            return self._consume(consume)

    def close(self) -> None:
        """Stop the statement (resetting it) before all rows were read."""
        with self._session._lock:
            self._reset()

    def _consume(self, consume: Callable[[Iterator[tuple[Any, ...]]], _T]) -> _T:
        # Holding the session.
        try:
            return consume(self._rows)
        except apsw.Error as exc:
            raise translate(exc, self._session._db) from exc
        except UnicodeDecodeError as exc:
            # Fail the query rather than the connection (CPython's sqlite3 raises
            # OperationalError too).
            raise EngineError(SQLITE_ERROR, _NOT_UTF8) from exc

    def _reset(self) -> None:
        # Holding the session's lock.
        try:  # noqa: SIM105 - suppress() would cost an object per query
            self._cursor.close(True)
        except apsw.Error:
            pass  # the statement's error was reported when it was stepped


def _authorizer(
    action: int, arg1: str | None, arg2: str | None, dbname: str | None, trigger: str | None
) -> int:
    if action == apsw.SQLITE_ATTACH:
        # Plain VACUUM attaches a private temporary database (empty name); any
        # named file would be outside the data directory (ATTACH, VACUUM INTO).
        return apsw.SQLITE_OK if arg1 in ("", ":memory:") else apsw.SQLITE_DENY
    if action == apsw.SQLITE_PRAGMA and arg1 is not None:
        pragma = arg1.lower()
        if pragma in _FORBIDDEN_PRAGMAS or (pragma in _GUARDED_PRAGMAS and arg2 is not None):
            return apsw.SQLITE_DENY
    if action == apsw.SQLITE_FUNCTION and arg2 is not None and arg2.lower() == "load_extension":
        return apsw.SQLITE_DENY
    return apsw.SQLITE_OK


class _Held:
    """``with session._using():``, a class rather than a generator: a read takes it
    several times, and ``contextlib.contextmanager`` costs a generator each time."""

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    def __enter__(self) -> None:
        session = self._session
        session._lock.acquire()
        if session._closed:
            session._lock.release()
            raise SessionClosed()

    def __exit__(self, *exc: object) -> None:
        self._session._lock.release()


class Session:
    """One SQLite connection to one database, used by one thread at a time.

    Every call into SQLite holds the session's lock (``interrupt`` excepted), so
    another thread may :meth:`close` the session at any moment: the close waits
    for the call in progress (which :meth:`interrupt` shortens) and every later
    call raises :class:`SessionClosed`.  The lock is held only across SQLite's
    own work, never while waiting for another thread of dqlitepy.

    Args:
        path: the database file.
        busy_timeout_ms: how long a writer waits for another writer's lock.
        synchronous: SQLite's ``synchronous`` setting for this connection.
        checkpoint_on_close: let SQLite fold the WAL into the database file
            when the last connection closes (its default).  A replicated node
            turns it off: its WAL may hold a commit Raft has not accepted yet,
            which must stay where it can be cut off.
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_ms: int,
        synchronous: str,
        checkpoint_on_close: bool = True,
    ) -> None:
        self._lock = threading.Lock()
        try:
            self._db = apsw.Connection(
                str(path),
                flags=apsw.SQLITE_OPEN_READWRITE
                | apsw.SQLITE_OPEN_CREATE
                | apsw.SQLITE_OPEN_NOFOLLOW,
            )
            self._db.set_busy_timeout(busy_timeout_ms)
            if not checkpoint_on_close:
                self._db.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
            self._db.execute("PRAGMA journal_mode=WAL").fetchall()
            self._db.execute(f"PRAGMA synchronous={synchronous}").fetchall()
            # dqlite turns foreign key enforcement on for every connection it opens.
            self._db.execute("PRAGMA foreign_keys=1").fetchall()
            self._db.enable_load_extension(False)
        except apsw.Error as exc:
            db = getattr(self, "_db", None)
            error = translate(exc, db)
            if db is not None:
                with contextlib.suppress(apsw.Error):
                    db.close(True)
            raise error from exc
        # Set last: the pragmas above are the server's own and must not be refused.
        self._db.authorizer = _authorizer
        # What sqlite3's API offers and the dqlite protocol has no request for,
        # as SQL functions the driver calls: sqlite3_limit() (getlimit/setlimit)
        # and sqlite3_column_decltype() (detect_types=PARSE_DECLTYPES).
        self._db.create_scalar_function(LIMIT_FUNCTION, self._limit, 2)
        self._db.create_scalar_function(DECLTYPES_FUNCTION, self._decltypes, 1)
        self._statements: OrderedDict[str, StatementInfo] = OrderedDict()
        self._closed = False

    def _using(self) -> _Held:
        """Hold the session for one call into SQLite; refuse if it was closed."""
        return _Held(self)

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open on this connection (False once closed)."""
        with self._lock:
            return not self._closed and not self._db.get_autocommit()

    def _limit(self, *args: Any) -> int:
        """``dqlitepy_limit(category, value)``: ``sqlite3_limit()`` of this session.

        Returns the previous value, or -1 for an unknown category; a negative
        value only reads the limit.  SQLite caps values at its compile-time
        maxima, so a client can only shrink what it may do.
        """
        category, value = args
        if type(category) is not int or type(value) is not int:
            raise TypeError("dqlitepy_limit() takes two integers")
        limit: int = self._db.limit(category, value)
        return limit

    def _decltypes(self, *args: Any) -> str:
        """``dqlitepy_decltypes(sql)``: the declared types of ``sql``'s result columns.

        A JSON array with one string (or null) per column.  The statement is
        compiled, under the same authorizer, and never run.
        """
        (sql,) = args
        if not isinstance(sql, str):
            raise TypeError("dqlitepy_decltypes() takes the text of a statement")
        description = apsw.ext.query_info(self._db, sql).description or ()
        return json.dumps([decltype for _name, decltype in description])

    def set_interrupt_check(self, check: Callable[[], bool] | None, every: int = 20000) -> None:
        """Call ``check`` every ``every`` VM steps of a running statement.

        When it returns True the statement stops with SQLITE_INTERRUPT; this is
        how a long query notices a client's INTERRUPT while it runs.
        """
        with self._using():
            if check is None:
                self._db.set_progress_handler(None)
            else:
                self._db.set_progress_handler(check, every)

    def set_busy_timeout(self, milliseconds: int) -> None:
        """How long a writer waits for another writer's lock before SQLITE_BUSY."""
        with self._using():
            self._db.set_busy_timeout(milliseconds)

    def changes(self) -> ExecResult:
        """Last insert rowid and changes as they stand now."""
        with self._using():
            return self._changes()

    def _changes(self) -> ExecResult:
        return ExecResult(self._db.last_insert_rowid(), self._db.changes())

    def statement(self, sql: str) -> StatementInfo:
        """Describe the first statement of ``sql`` (cached).

        Raises:
            EngineError: the statement does not compile.
        """
        with self._using():
            return self._describe(sql)

    def cached(self, sql: str) -> StatementInfo | None:
        """What :meth:`statement` said about ``sql`` before, if it is still cached.

        Compiles nothing and takes no lock: call it on the thread that owns the
        session (the cache is that thread's alone).
        """
        info = self._statements.get(sql)
        if info is not None:
            self._statements.move_to_end(sql)
        return info

    def _describe(self, sql: str) -> StatementInfo:
        info = self._statements.get(sql)
        if info is not None:
            self._statements.move_to_end(sql)
            return info
        try:
            details = apsw.ext.query_info(self._db, sql)
        except apsw.Error as exc:
            raise translate(exc, self._db) from exc
        except UnicodeEncodeError as exc:
            raise EngineError(SQLITE_ERROR, _SQL_NOT_UTF8) from exc
        first = details.first_query or ""
        columns = len(details.description or ())
        readonly = bool(details.is_readonly)
        info = StatementInfo(
            sql=first,
            tail=details.query_remaining or "",
            param_count=details.bindings_count,
            column_count=columns,
            empty=not details.has_vdbe,
            readonly=readonly,
            reads_database=not readonly or self._opens_transaction(first),
        )
        if len(sql) <= _MAX_CACHED_SQL:
            self._statements[sql] = info
            if len(self._statements) > _STATEMENT_CACHE_SIZE:
                self._statements.popitem(last=False)
        return info

    def _opens_transaction(self, sql: str) -> bool:
        """Whether ``sql``'s program begins a transaction (an ``OP_Transaction``): reads pages."""
        try:
            details = apsw.ext.query_info(self._db, sql, explain=True)
        except (apsw.Error, UnicodeDecodeError):
            # The first compile succeeded: assume the worst.  EXPLAIN shows the
            # statement's literals, which may be text that is not UTF-8 (x'ff').
            return True
        return any(step.opcode == "Transaction" for step in details.explain or ())

    def _bindings(self, info: StatementInfo, params: Sequence[Any]) -> Sequence[Any]:
        n = info.param_count
        if len(params) > n:
            raise EngineError(SQLITE_RANGE, "column index out of range")
        if len(params) < n:
            # dqlite leaves unbound parameters NULL rather than failing.
            return [*params, *([None] * (n - len(params)))]
        return params

    def execute(self, info: StatementInfo, params: Sequence[Any] = ()) -> ExecResult:
        """Run one statement that should return no rows.

        Raises:
            EngineError: SQLite failed, or the statement yielded a row (code 100
                "another row available", as dqlite 1.11 answers EXEC of a SELECT).
        """
        bindings = self._bindings(info, params)
        with self._using():
            return self._execute(info, bindings)

    def _execute(self, info: StatementInfo, bindings: Sequence[Any]) -> ExecResult:
        cursor = self._db.cursor()
        try:
            rows = cursor.execute(info.sql, bindings)
            row_came = next(rows, None) is not None
        except apsw.Error as exc:
            raise translate(exc, self._db) from exc
        except UnicodeEncodeError as exc:
            raise EngineError(SQLITE_ERROR, _PARAM_NOT_UTF8) from exc
        except UnicodeDecodeError:
            row_came = True  # a row whose text is not UTF-8 is a row all the same
        finally:
            with contextlib.suppress(apsw.Error):
                cursor.close(True)
        if row_came:
            raise EngineError(SQLITE_ROW, "another row available")
        return self._changes()

    def query(self, info: StatementInfo, params: Sequence[Any] = ()) -> QueryResult:
        """Start one statement and return its rows, to be stepped by iterating."""
        bindings = self._bindings(info, params)
        with self._using():
            return self._query(info, bindings)

    def _query(self, info: StatementInfo, bindings: Sequence[Any]) -> QueryResult:
        cursor = self._db.cursor()
        try:
            rows = cursor.execute(info.sql, bindings)
            try:
                description = cursor.get_description()
            except apsw.ExecutionCompleteError:
                # No row came: ask the parser, so an empty result keeps its columns.
                description = apsw.ext.query_info(self._db, info.sql).description or ()
        except apsw.Error as exc:
            cursor.close(True)
            raise translate(exc, self._db) from exc
        except UnicodeEncodeError as exc:
            cursor.close(True)
            raise EngineError(SQLITE_ERROR, _PARAM_NOT_UTF8) from exc
        columns = tuple(map(_first, description))
        decltypes = tuple(map(_second, description))
        return QueryResult(self, cursor, columns, decltypes, rows)

    def query_first(
        self,
        info: StatementInfo,
        bindings: Sequence[Any],
        filler: Callable[[tuple[str, ...], tuple[str | None, ...]], _F],
    ) -> tuple[QueryResult, _F, bool]:
        """Start ``info`` and step its first batch, in one hold of the session.

        The read fast path's call: ``bindings`` are exactly ``info.param_count``
        values; ``filler(columns, decltypes)`` gives what takes the rows, whose
        ``fill(rows)`` steps as many as one batch holds and says whether they ran
        out, in which case the statement is reset too.  Returns the result (for
        :meth:`QueryResult.feed`, unless done), the filler and whether done.
        Errors are translated as :meth:`QueryResult.feed` translates them, and
        the statement is reset after one.
        """
        with self._lock:
            if self._closed:
                raise SessionClosed()
            result = self._query(info, bindings)
            try:
                taker = filler(result.columns, result.decltypes)
                done = result._consume(taker.fill)
            except BaseException:
                result._reset()
                raise
            if done:
                result._reset()
            return result, taker, done

    def interrupt(self) -> None:
        """Make the running statement fail with SQLITE_INTERRUPT (any thread, no lock)."""
        if not self._closed:
            with contextlib.suppress(apsw.Error):
                self._db.interrupt()

    def release_memory(self) -> None:
        """Free the page cache pages nothing uses now (``sqlite3_db_release_memory``).

        Safe mid-query: the pages a running statement holds stay.  The server calls
        it when a client stops taking in a result (and every 256 KiB of one), so that
        a stalled response holds a few pages, not up to ``cache_size`` of them.  A
        closed session is left alone.
        """
        with self._lock:
            if not self._closed:
                with contextlib.suppress(apsw.Error):
                    self._db.release_memory()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (possibly on another thread)."""
        return self._closed

    @property
    def in_write_transaction(self) -> bool:
        """True while this connection holds the database's write lock."""
        with self._lock:
            return not self._closed and self._db.txn_state("main") == apsw.SQLITE_TXN_WRITE

    def set_wal_hook(self, hook: Callable[[int], None]) -> None:
        """Call ``hook(frames in the WAL)`` after each commit (replication's capture point).

        Installing a WAL hook turns SQLite's automatic checkpoints off: the
        server checkpoints only frames that Raft has committed.
        """

        def wal_hook(conn: apsw.Connection, name: str, frames: int) -> int:
            hook(frames)
            return int(apsw.SQLITE_OK)

        with self._using():
            self._db.set_wal_hook(wal_hook)

    def checkpoint(self, guard: threading.Lock | None = None) -> bool:
        """Copy committed WAL frames into the database file without blocking anyone.

        With ``guard``, only if that lock is free at once (it is held while the
        file is copied elsewhere); returns whether a checkpoint ran.
        """
        with self._lock:
            if self._closed:
                return False
            if guard is not None and not guard.acquire(blocking=False):
                return False
            try:
                with contextlib.suppress(apsw.Error):
                    self._db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
                return True
            finally:
                if guard is not None:
                    guard.release()

    @contextlib.contextmanager
    def read_transaction(self) -> Iterator[None]:
        """Hold a read transaction: it pins the WAL, so no checkpoint rewrites the files.

        Raises:
            EngineError: SQLite failed to begin or end it.
        """
        try:
            with self._using():
                self._db.execute("BEGIN").fetchall()
                self._db.execute("SELECT count(*) FROM sqlite_master").fetchall()
            yield
            with self._using():
                self._db.execute("COMMIT").fetchall()
        except apsw.Error as exc:
            raise translate(exc, self._db) from exc

    def close(self) -> None:
        """Roll back any open transaction and close the connection (any thread).

        Waits for the SQLite call in progress on the owner's thread, if any.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(apsw.Error):
                self._db.close(True)
