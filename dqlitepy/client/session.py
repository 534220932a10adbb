"""The server session behind a :class:`~dqlitepy.client.connection.Connection`.

A :class:`Session` is what a connection and its cursors run statements
through: it owns the :class:`~dqlitepy.client.failover.Link` to the leader, the
:class:`~dqlitepy.client.transaction.Transaction` state, the lock that
serialises their use, and what belongs to the server session (its
``last_insert_rowid()``, its run-time limits, the trace callback).  Its public
methods are the whole interface a cursor uses; the connection adds
``sqlite3``'s checks and surface on top.

Statements are sent as EXEC_SQL or QUERY_SQL with their parameters bound by
position, so one statement costs one round trip; ``executemany`` prepares its
statement once per server session.  A locked database (``SQLITE_BUSY``) is
waited out for ``timeout`` seconds: BUSY means the statement did not run, so
sending it again is safe (this plays the part of SQLite's busy handler against
C dqlite, which answers "locked" at once).
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from ..wire import (
    EmptyResponse,
    ErrorCode,
    ExecRequest,
    ExecSqlRequest,
    FinalizeRequest,
    PrepareRequest,
    QuerySqlRequest,
    Request,
    Response,
    ResultResponse,
    RowsResponse,
    StmtResponse,
    ValueTuple,
)
from .constants import SQLITE_LIMIT_SQL_LENGTH
from .errors import (
    ConnectionLostError,
    DataError,
    Error,
    InterfaceError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)
from .failover import Link, Settings
from .needs import Gen, Sleep
from .protocol import Protocol
from .sqltext import ParsedSQL, has_more_statements, parse
from .transaction import Transaction

__all__ = ["Session", "enable_callback_tracebacks"]

T = TypeVar("T")
R = TypeVar("R", bound=Response)

# Primary result codes after which SQLite may have rolled back the whole
# transaction by itself (sqlite.org/lang_transaction.html, "Response To Errors
# Within A Transaction"), and ROLLBACK conflict resolution (SQLITE_CONSTRAINT).
_MAY_END_TRANSACTION = frozenset(
    {
        ErrorCode.SQLITE_ABORT,
        ErrorCode.SQLITE_BUSY,
        ErrorCode.SQLITE_NOMEM,
        ErrorCode.SQLITE_INTERRUPT,
        ErrorCode.SQLITE_IOERR,
        ErrorCode.SQLITE_FULL,
        ErrorCode.SQLITE_CONSTRAINT,
    }
)
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1
# SQL functions a dqlitepy server adds to every session (dqlitepy/engine).
_LIMIT_FUNCTION = "dqlitepy_limit"
_LIMIT_SQL = f"SELECT {_LIMIT_FUNCTION}(?, ?)"
_DECLTYPES_FUNCTION = "dqlitepy_decltypes"
_DECLTYPES_SQL = f"SELECT {_DECLTYPES_FUNCTION}(?)"

_callback_tracebacks = False


def enable_callback_tracebacks(flag: bool, /) -> None:
    """Accepted for ``sqlite3`` compatibility; callbacks run in this process only for tracing."""
    global _callback_tracebacks
    _callback_tracebacks = bool(flag)


def _no_such_function(exc: Error, name: str) -> bool:
    return str(exc).startswith(f"no such function: {name}")


def _first_int(batches: list[RowsResponse], what: str) -> int:
    """The integer in the first column of the first row of a one-value result."""
    value = batches[0].rows[0][0] if batches and batches[0].rows else None
    if not isinstance(value, int):
        raise InterfaceError(f"unexpected answer to {what}: {value!r}")
    return int(value)


class _Prepared:
    """One statement prepared in one server session; prepared again in the next one.

    After a failover that lost nothing (outside a transaction, before the
    request was sent) the old statement id died with the old session.
    """

    def __init__(self, sql: str, timeout: float | None) -> None:
        self._sql = sql
        self._timeout = timeout
        self._proto: Protocol | None = None
        self._stmt_id = 0

    def on(self, proto: Protocol) -> Gen[int]:
        """The statement's id in ``proto``'s session, preparing it there if needed."""
        if self._proto is not proto:
            request = PrepareRequest(0, self._sql)
            stmt = yield from proto.call(request, StmtResponse, self._timeout)
            self._proto, self._stmt_id = proto, stmt.stmt_id
        return self._stmt_id

    def exec_on(self, proto: Protocol, params: ValueTuple) -> Gen[ResultResponse]:
        """Run the statement with ``params`` in ``proto``'s session."""
        try:
            stmt_id = yield from self.on(proto)
        except ConnectionLostError as exc:
            # Only a PREPARE was lost, which changes nothing: the EXEC was
            # never sent, so it may be sent to the next leader.
            raise ConnectionLostError(str(exc), request_sent=False) from exc
        request = ExecRequest(0, stmt_id, params)
        return (yield from proto.call(request, ResultResponse, self._timeout))

    def finalize(self, current: Protocol | None) -> Gen[None]:
        """Finalize the statement if its session is still the current one (and in step)."""
        proto = self._proto
        if proto is not None and proto is current and not proto.closed and proto.idle:
            with contextlib.suppress(Error):
                request = FinalizeRequest(0, self._stmt_id)
                yield from proto.call(request, EmptyResponse, self._timeout)


class Session:
    """Statements, transaction control and session state over one :class:`Link`.

    Every method expects :attr:`lock` held by the caller (it is re-entrant).

    Args:
        settings: what the connection reaches.
        txn: the transaction state and the transaction control asked for.
        detect_types: ``PARSE_DECLTYPES``/``PARSE_COLNAMES`` flags.
    """

    def __init__(self, settings: Settings, txn: Transaction, detect_types: int) -> None:
        self.settings = settings
        self.txn = txn
        self.detect_types = detect_types
        #: Serialises the use of the session by the connection's threads.
        self.lock = threading.RLock()
        #: Called with the text of every SQL statement sent (``set_trace_callback``).
        self.trace: Callable[[str], object] | None = None
        #: The server session's ``sqlite3_last_insert_rowid()``, as of the last result.
        self.last_insert_rowid = 0
        #: User functions recorded by ``create_function`` (see :meth:`record_function`).
        self.functions: dict[tuple[str, int], Callable[..., object]] = {}
        # Limits set with setlimit(), applied again to a new server session.
        self._limits: dict[int, int] = {}
        # SQLITE_LIMIT_SQL_LENGTH once known; like sqlite3, longer SQL is refused here.
        self._sql_length_limit: int | None = None
        self._link = Link(settings, txn, self._on_open)

    # ----------------------------------------------------------------- the link

    def connect(self) -> Gen[Protocol]:
        """Make sure a session on the leader is open (``connect()`` fails fast)."""
        return self._link.connected()

    def start(self) -> Gen[None]:
        """What ``connect()`` does once settings are checked: open the session, and
        with ``autocommit=False`` the first transaction."""
        yield from self._link.connected()
        if self.txn.autocommit is False:
            yield from self.begin(None)

    @property
    def linked(self) -> bool:
        """True while a server session is open (until a failure drops it)."""
        return self._link.proto is not None

    def close(self) -> Gen[None]:
        """End the server session; with ``autocommit=False`` roll back first, as sqlite3 does."""
        if self.txn.autocommit is False and self.txn.active and self.linked:
            with contextlib.suppress(Error):
                yield from self._exec_text("ROLLBACK")
        self.txn.lose()
        self._link.drop()

    def abandon(self) -> None:
        """Close the socket without a request: what a finalizer may do.

        The server rolls back a transaction left open when the connection
        drops, which is all a ``ROLLBACK`` would have done.
        """
        self._link.drop()

    def interrupt(self) -> None:
        """From another thread (or task): stop the query in flight (never a write)."""
        self._link.interrupt()

    @property
    def proto(self) -> Protocol | None:
        """The protocol of the current server session, if one is open."""
        return self._link.proto

    def _on_open(self, proto: Protocol) -> Gen[None]:
        # A new server session: limits set earlier apply to it too.
        for category, value in self._limits.items():
            yield from self._limit_on(proto, category, value)
        self.last_insert_rowid = 0

    def _call(
        self,
        request: Request,
        expect: type[R],
        *,
        retry_unknown: bool = False,
        may_commit: bool = False,
    ) -> Gen[R]:
        timeout = self.settings.request_timeout
        return self._link.run(
            lambda p: p.call(request, expect, timeout),
            retry_unknown=retry_unknown,
            may_commit=may_commit,
        )

    def _query(self, request: Request, *, retry_unknown: bool = False) -> Gen[list[RowsResponse]]:
        timeout = self.settings.request_timeout
        return self._link.run(lambda p: p.query(request, timeout), retry_unknown=retry_unknown)

    def _busy_retry(self, fn: Callable[[], Gen[T]]) -> Gen[T]:
        """Retry ``fn`` while the database is locked, up to ``timeout`` seconds."""
        deadline = time.monotonic() + self.settings.timeout
        delay = 0.001
        while True:
            try:
                return (yield from fn())
            except OperationalError as exc:
                if exc.sqlite_errorcode != ErrorCode.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            yield Sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.05)

    # ------------------------------------------------------- transaction control

    def traced(self, sql: str) -> None:
        """Show ``sql`` to the trace callback, if any."""
        if self.trace is not None:
            try:
                self.trace(sql)
            except Exception:
                if _callback_tracebacks:
                    raise

    def _exec_text(
        self, sql: str, *, retry_unknown: bool = False, may_commit: bool = False
    ) -> Gen[ResultResponse]:
        """Run a transaction-control statement, waiting out a locked database.

        ``retry_unknown`` and ``may_commit`` are :meth:`Link.run`'s.
        """
        self.traced(sql)
        result = yield from self._busy_retry(
            lambda: self._call(
                ExecSqlRequest(0, sql),
                ResultResponse,
                retry_unknown=retry_unknown,
                may_commit=may_commit,
            )
        )
        self.last_insert_rowid = result.last_insert_id
        return result

    def begin(self, level: str | None) -> Gen[None]:
        """Open a transaction: plain ``BEGIN``, or ``BEGIN <level>`` (implicit ones)."""
        # The statement texts sqlite3 sends (and traces): "BEGIN " + isolation
        # level for implicit transactions, plain "BEGIN" with autocommit=False.
        # A BEGIN whose reply was lost is sent again: whatever it did ended
        # with its server session.
        sql = "BEGIN" if level is None else f"BEGIN {level}"
        yield from self._exec_text(sql, retry_unknown=True)
        self.txn.begun()

    def begin_implicitly(self, parsed: ParsedSQL) -> Gen[None]:
        """Open the implicit transaction ``sqlite3`` would open before ``parsed``."""
        if self.txn.needs_implicit_begin(parsed.is_dml):
            yield from self.begin(self.txn.isolation_level)

    def commit(self) -> Gen[None]:
        """Commit the open transaction, if any."""
        if self.txn.active:
            yield from self._exec_text("COMMIT", may_commit=True)
            self.txn.lose()

    def commit_before_script(self) -> Gen[None]:
        """Commit as ``executescript()`` does first: under the legacy control only."""
        if self.txn.legacy:
            yield from self.commit()

    def rollback(self) -> Gen[None]:
        """Roll back the open transaction, if any."""
        if self.txn.active:
            try:
                yield from self._exec_text("ROLLBACK")
            finally:
                self.txn.lose()

    def connection_commit(self) -> Gen[None]:
        """``Connection.commit()``: commit, and with ``autocommit=False`` begin the next one."""
        if self.txn.autocommit is True:
            return
        yield from self.commit()
        if self.txn.autocommit is False:
            yield from self.begin(None)

    def connection_rollback(self) -> Gen[None]:
        """``Connection.rollback()``: roll back, and with ``autocommit=False`` begin again."""
        if self.txn.autocommit is True:
            return
        yield from self.rollback()
        if self.txn.autocommit is False:
            yield from self.begin(None)

    def set_autocommit(self, value: bool | int) -> Gen[None]:
        """Python 3.12's ``autocommit`` setter: commit or begin as the new value asks."""
        if value is True:
            yield from self.commit()
        elif value is False and not self.txn.active:
            yield from self.begin(None)
        self.txn.autocommit = value

    def note(self, parsed: ParsedSQL) -> None:
        """Follow the transaction state a successful statement leaves behind."""
        self.txn.note(parsed.keyword, parsed.first)

    def after_failure(self, exc: Error) -> Gen[None]:
        """Learn whether SQLite rolled the open transaction back after a failed statement.

        SQLite ends the whole transaction by itself after some errors (a conflict
        with ``ON CONFLICT ROLLBACK``, ``RAISE(ROLLBACK)``, a full disk, an I/O
        error ...); ``sqlite3`` then sees ``sqlite3_get_autocommit()`` turn true.
        The wire does not carry that flag, so ask the server: ``BEGIN`` fails
        inside a transaction and otherwise opens one that ``ROLLBACK`` closes at
        once, in the same request.
        """
        code = exc.sqlite_errorcode
        if not self.txn.active or code is None or code & 0xFF not in _MAY_END_TRANSACTION:
            return
        try:
            yield from self._call(ExecSqlRequest(0, "BEGIN; ROLLBACK"), ResultResponse)
        except Error:
            return  # still inside the transaction (or the connection is gone, and the link knows)
        self.txn.lose()

    # ---------------------------------------------------------------- statements

    def parse_one(self, sql: str) -> ParsedSQL:
        """Check and parse SQL that must hold one statement, as sqlite3 does before preparing.

        Raises:
            ProgrammingError: a NUL character, or more than one statement.
            DataError: over ``SQLITE_LIMIT_SQL_LENGTH``.
        """
        self.check_sql(sql)
        if "\x00" in sql:
            raise ProgrammingError("the query contains a null character")
        parsed = parse(sql)
        if has_more_statements(parsed.tail):
            raise ProgrammingError("You can only execute one statement at a time.")
        return parsed

    def execute(
        self, parsed: ParsedSQL, params: ValueTuple
    ) -> Gen[list[RowsResponse] | ResultResponse]:
        """Run one statement (traced): its ROWS batches, or its RESULT.

        A statement that may return rows goes as QUERY_SQL, anything else (or
        one that turns out to have no result columns) as EXEC_SQL.
        """
        sql = parsed.first
        self.traced(sql)
        if parsed.returns_rows_hint:
            batches = yield from self._query_statement(parsed, params)
            if batches is not None:
                self.note(parsed)
                return batches
        keyword = parsed.keyword
        # A transaction opened outside one dies with its session, so a lost
        # reply to it is harmless; a COMMIT (or what commits as one) that lost
        # its reply may have committed.
        opens = self.txn.opens(keyword)
        commits = self.txn.may_commit(keyword)
        result = yield from self._busy_retry(
            lambda: self._call(
                ExecSqlRequest(0, sql, params),
                ResultResponse,
                retry_unknown=opens,
                may_commit=commits,
            )
        )
        self.note(parsed)
        self.last_insert_rowid = result.last_insert_id
        return result

    def _query_statement(
        self, parsed: ParsedSQL, params: ValueTuple
    ) -> Gen[list[RowsResponse] | None]:
        read_only = parsed.keyword in ("SELECT", "VALUES", "EXPLAIN") and not self.txn.active
        request = QuerySqlRequest(0, parsed.first, params)
        try:
            return (
                yield from self._busy_retry(lambda: self._query(request, retry_unknown=read_only))
            )
        except OperationalError as exc:
            # dqlite answers QUERY of a statement without result columns with
            # "not an error" *before* running it (protocol.md §6.1).
            if exc.sqlite_errorcode != ErrorCode.SQLITE_ERROR or str(exc) != "not an error":
                raise
        return None

    def execute_many(
        self,
        parsed: ParsedSQL,
        params: Iterable[ValueTuple],
        on_result: Callable[[ResultResponse], object],
    ) -> Gen[None]:
        """Run one DML statement (traced) once per parameter set; give each RESULT to ``on_result``.

        The statement is prepared once per server session, at the first
        ``next()``: before the first parameter set is read, so that bad SQL
        fails even with no parameters, as in sqlite3.  Once every set has run,
        the transaction state follows the statement.
        """
        self.traced(parsed.first)
        prepared = _Prepared(parsed.first, self.settings.request_timeout)
        yield from self._link.run(prepared.on, retry_unknown=True)
        try:
            for values in params:
                result = yield from self._busy_retry(
                    functools.partial(self._exec_prepared, prepared, values)
                )
                self.last_insert_rowid = result.last_insert_id
                on_result(result)
        finally:
            yield from prepared.finalize(self._link.proto)
        self.note(parsed)

    def _exec_prepared(self, prepared: _Prepared, values: ValueTuple) -> Gen[ResultResponse]:
        return self._link.run(lambda p: prepared.exec_on(p, values))

    def compile(self, sql: str) -> Gen[None]:
        """Prepare ``sql`` on the server and finalize it at once (``conn(sql)``)."""
        timeout = self.settings.request_timeout

        def compile_on(proto: Protocol) -> Gen[None]:
            stmt = yield from proto.call(PrepareRequest(0, sql), StmtResponse, timeout)
            yield from proto.call(FinalizeRequest(0, stmt.stmt_id), EmptyResponse, timeout)

        yield from self._link.run(compile_on, retry_unknown=True)

    def refresh_last_insert_rowid(self) -> Gen[None]:
        """Ask the server for ``last_insert_rowid()``, which ROWS responses do not carry."""
        request = QuerySqlRequest(0, "SELECT last_insert_rowid()")
        batches = yield from self._query(request, retry_unknown=True)
        self.last_insert_rowid = _first_int(batches, "last_insert_rowid()")

    def total_changes(self) -> Gen[int]:
        """Rows changed through this server session since it opened."""
        request = QuerySqlRequest(0, "SELECT total_changes()")
        batches = yield from self._query(request, retry_unknown=True)
        return _first_int(batches, "total_changes()")

    def decltypes(self, sql: str, count: int) -> Gen[list[str | None]]:
        """The declared types of the result columns of ``sql``, for PARSE_DECLTYPES.

        dqlite's ROWS responses carry column names only; a dqlitepy server
        offers ``sqlite3_column_decltype()`` as the SQL function
        ``dqlitepy_decltypes(sql)``, which compiles ``sql`` without running it.

        Raises:
            NotSupportedError: the server (C dqlite) does not have the function.
        """
        request = QuerySqlRequest(0, _DECLTYPES_SQL, ValueTuple.of([sql]))
        try:
            batches = yield from self._query(request, retry_unknown=True)
        except OperationalError as exc:
            if _no_such_function(exc, _DECLTYPES_FUNCTION):
                raise NotSupportedError(
                    "detect_types=PARSE_DECLTYPES needs a dqlitepy server: "
                    "C dqlite does not tell clients the declared types of columns"
                ) from None
            raise
        decoded = json.loads(str(batches[0].rows[0][0]))
        if not isinstance(decoded, list) or len(decoded) != count:
            # The schema changed between running the query and asking.
            return [None] * count
        return [d if isinstance(d, str) else None for d in decoded]

    def record_function(self, name: str, narg: int, func: Callable[..., object] | None) -> None:
        """``create_function``: record ``func`` (None removes it); it runs nowhere.

        SQL runs on the leader, which cannot call back into this process, so
        SQL that uses the function fails there with ``no such function``.  It
        is accepted (not refused) because libraries such as SQLAlchemy register
        functions on every new connection.
        """
        key = (name.casefold(), narg)
        if func is None:
            self.functions.pop(key, None)
        else:
            self.functions[key] = func

    # -------------------------------------------------------------------- limits

    def getlimit(self, category: int) -> Gen[int]:
        """``sqlite3_limit(category, -1)`` in the server session (dqlitepy servers only)."""
        return self._link.run(lambda p: self._limit_on(p, category, -1), retry_unknown=True)

    def setlimit(self, category: int, limit: int) -> Gen[int]:
        """Set a run-time limit, here and in every later server session; returns the old one."""
        previous = yield from self._link.run(
            lambda p: self._limit_on(p, category, limit), retry_unknown=True
        )
        if limit >= 0:
            self._limits[category] = limit
        return previous

    def _limit_on(self, proto: Protocol, category: int, limit: int) -> Gen[int]:
        """Call ``sqlite3_limit(category, limit)`` in the server session behind ``proto``."""
        if not (_INT32_MIN <= category <= _INT32_MAX and _INT32_MIN <= limit <= _INT32_MAX):
            raise OverflowError("Python int too large to convert to C int")
        request = QuerySqlRequest(0, _LIMIT_SQL, ValueTuple.of([category, limit]))
        try:
            batches = yield from proto.query(request, self.settings.request_timeout)
        except OperationalError as exc:
            if _no_such_function(exc, _LIMIT_FUNCTION):
                raise NotSupportedError(
                    "getlimit() and setlimit() need a dqlitepy server: "
                    "C dqlite gives clients no access to sqlite3_limit()"
                ) from None
            raise
        previous = _first_int(batches, _LIMIT_FUNCTION)
        if previous < 0:
            raise ProgrammingError("'category' is out of bounds")
        if category == SQLITE_LIMIT_SQL_LENGTH:
            if limit < 0:
                self._sql_length_limit = previous
            else:
                # Learn the effective limit now (SQLite caps what was asked for), so
                # that check_sql() needs no request of its own.
                yield from self._limit_on(proto, category, -1)
        return previous

    def check_sql(self, sql: str) -> None:
        """Refuse SQL that sqlite3 would refuse before preparing it."""
        if not sql.isascii():
            sql.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError
        limit = self._sql_length_limit
        if limit is not None and len(sql) > limit // 4 and len(sql.encode("utf-8")) > limit:
            raise DataError("query string is too large")
