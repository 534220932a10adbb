"""The PEP 249 driver, shaped like the standard library's ``sqlite3``.

A :class:`Connection` talks to the cluster's leader over one wire connection and
opens one database there.  Statements are sent as EXEC_SQL or QUERY_SQL with
their parameters bound by position (named parameters are resolved here, with
SQLite's own numbering), so one statement costs one round trip.

Transactions follow ``sqlite3``'s rules: in the legacy mode (the default) a
``BEGIN`` is sent before the first INSERT/UPDATE/DELETE/REPLACE outside a
transaction; ``isolation_level=None`` is autocommit; ``autocommit=True/False``
behaves as in Python 3.12.

Failover (``design.md`` §1): before each request the connection checks that its
socket is still open; a dead leader or a ``not leader`` answer (which comes
before execution) makes it find the new leader and send the request there.  A
request whose fate is unknown (the connection failed after it was sent, or
``leadership lost``) is never re-sent: it raises :class:`OperationalError`, and
the next call reconnects.  An open transaction does not survive a change of
leader: the server rolls it back, and the connection says so.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import unquote

from ..wire import (
    OPEN_BUSY_TIMEOUT_SHIFT,
    DbResponse,
    EmptyResponse,
    ExecRequest,
    ExecSqlRequest,
    FinalizeRequest,
    OpenRequest,
    PrepareRequest,
    QuerySqlRequest,
    Request,
    ResultResponse,
    RowsResponse,
    StmtResponse,
    Value,
    ValueTuple,
    ValueType,
)
from . import errors as _errors
from .errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    LeadershipLostError,
    NotLeaderError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)
from .protocol import ConnectionLostError, Protocol, find_leader, parse_address
from .sqltext import (
    ParsedSQL,
    bind_values,
    has_more_statements,
    is_complete,
    parse,
    split_statements,
)
from .types import PARSE_COLNAMES, PARSE_DECLTYPES, PrepareProtocol, adapters, converters

__all__ = [
    "LEGACY_TRANSACTION_CONTROL",
    "Connection",
    "Cursor",
    "complete_statement",
    "connect",
    "enable_callback_tracebacks",
    "parse_url",
]

#: ``autocommit`` value meaning "follow ``isolation_level`` as sqlite3 did before 3.12".
LEGACY_TRANSACTION_CONTROL: Final = -1

#: How long to keep looking for a leader before a call fails.
DEFAULT_LEADER_TIMEOUT = 30.0
#: The budget of one attempt through one node while looking for the leader.
DEFAULT_ATTEMPT_TIMEOUT = 2.0
#: The longest a single request may wait for its response.
DEFAULT_REQUEST_TIMEOUT = 60.0

_SQLITE_BUSY = 5
_SQLITE_ERROR = 1
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_ROLLBACK_TO = re.compile(r"ROLLBACK\s+(?:TRANSACTION\s+)?TO\b", re.IGNORECASE)
_SAVEPOINT_NAME = re.compile(
    r"(?:SAVEPOINT|RELEASE(?:\s+SAVEPOINT)?)\s+(\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]|'(?:[^']|'')*'|\S+)",
    re.IGNORECASE,
)
_ISOLATION_LEVELS = ("", "DEFERRED", "IMMEDIATE", "EXCLUSIVE")
_BASE_TYPES = (int, float, str, bytes)

_callback_tracebacks = False

C = TypeVar("C", bound="Cursor")


def enable_callback_tracebacks(flag: bool, /) -> None:
    """Accepted for ``sqlite3`` compatibility; callbacks run in this process only for tracing."""
    global _callback_tracebacks
    _callback_tracebacks = bool(flag)


def complete_statement(statement: str) -> bool:
    """Return True if ``statement`` holds at least one complete SQL statement."""
    return is_complete(statement)


def parse_url(url: str) -> tuple[list[str], str]:
    """Split ``dqlite://h1:p1,h2:p2/db`` into the server list and the database name.

    Raises:
        ProgrammingError: the URL has no servers or no database.
    """
    rest = url[len("dqlite://") :]
    hosts, sep, database = rest.partition("/")
    database = unquote(database.partition("?")[0])
    servers = [h for h in hosts.split(",") if h]
    if not sep or not database or not servers:
        raise ProgrammingError(f"invalid dqlite URL {url!r}: expected dqlite://host:port,.../db")
    return servers, database


def _servers_from_env() -> list[str]:
    raw = os.environ.get("DQLITEPY_SERVERS", "")
    return [s.strip() for s in raw.split(",") if s.strip()]


def _float_text(value: float) -> str:
    # The text SQLite gives a REAL ("%!.15g"): always with a decimal point.
    text = f"{value:.15g}"
    if not any(c in text for c in ".eni"):
        text += ".0"
    return text


def _as_bytes(value: Value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, float):
        return _float_text(value).encode()
    return str(value).encode()


class Connection:
    """A connection to one database of a dqlite cluster (``sqlite3.Connection``-like).

    Use :func:`connect` to make one.  The exception classes are also available as
    attributes (``conn.Error`` …), as in ``sqlite3``.
    """

    Warning = _errors.Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    def __init__(
        self,
        database: str | bytes | os.PathLike[str],
        timeout: float = 5.0,
        detect_types: int = 0,
        isolation_level: str | None = "",
        check_same_thread: bool = True,
        factory: Any = None,
        cached_statements: int = 128,
        uri: bool = False,
        *,
        autocommit: bool | int = LEGACY_TRANSACTION_CONTROL,
        servers: Sequence[str] | str | None = None,
        leader_timeout: float = DEFAULT_LEADER_TIMEOUT,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        name = os.fsdecode(database) if isinstance(database, bytes) else os.fspath(database)
        if name.startswith("dqlite://"):
            url_servers, name = parse_url(name)
            if servers is None:
                servers = url_servers
        elif uri and name.startswith("file:"):
            name = unquote(name[len("file:") :].partition("?")[0])
        if isinstance(servers, str):
            servers = [s for s in servers.split(",") if s]
        if servers is None:
            servers = _servers_from_env()
        if not servers:
            raise OperationalError(
                "no dqlite servers configured: pass servers=[...], use a "
                "dqlite://host:port/db URL or set DQLITEPY_SERVERS"
            )
        for address in servers:
            try:
                parse_address(address)
            except ValueError as exc:
                # Fail now rather than retrying an unusable address for leader_timeout.
                raise ProgrammingError(str(exc)) from None
        if name == ":memory:" or not name:
            raise NotSupportedError(
                f"database name {name!r} is private to a process: connect without servers "
                "to get it from the embedded node"
            )
        self._servers = list(servers)
        self._database = name
        self._timeout = float(timeout)
        self._leader_timeout = float(leader_timeout)
        self._attempt_timeout = float(attempt_timeout)
        self._request_timeout = request_timeout
        self._detect_types = int(detect_types)
        self._check_same_thread = bool(check_same_thread)
        self._thread_ident = threading.get_ident()
        self._lock = threading.RLock()
        self._proto: Protocol | None = None
        self._closed = False
        self._in_txn = False
        self._savepoints: list[str] = []
        self._txn_by_savepoint = False
        self._trace: Callable[[str], object] | None = None
        self._functions: dict[tuple[str, int], Callable[..., Any]] = {}
        # Run once the connection is closed (the embedded node deletes a
        # private :memory: database this way).
        self._close_callbacks: list[Callable[[], None]] = []
        self.row_factory: Callable[[Cursor, tuple[Any, ...]], Any] | None = None
        self.text_factory: Any = str
        if autocommit not in (True, False, LEGACY_TRANSACTION_CONTROL):
            raise ValueError(
                "autocommit must be True, False, or sqlite3.LEGACY_TRANSACTION_CONTROL"
            )
        self._autocommit: bool | int = autocommit
        self._isolation_level: str | None = self._check_isolation_level(isolation_level)
        # Fail fast, as sqlite3.connect does when it cannot open the file.
        with self._lock:
            self._connected()
            if self._autocommit is False:
                self._begin("")

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _check_isolation_level(level: str | None) -> str | None:
        if level is None:
            return None
        if not isinstance(level, str):
            raise TypeError("isolation_level must be str or None")
        if level.upper() not in _ISOLATION_LEVELS:
            raise ValueError(
                "isolation_level string must be '', 'DEFERRED', 'IMMEDIATE', or 'EXCLUSIVE'"
            )
        return level.upper()  # sqlite3 reports the canonical spelling

    def _check(self) -> None:
        if self._check_same_thread and threading.get_ident() != self._thread_ident:
            raise ProgrammingError(
                "SQLite objects created in a thread can only be used in that same thread. "
                f"The object was created in thread id {self._thread_ident} and this is "
                f"thread id {threading.get_ident()}."
            )
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed database.")

    def _drop(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.close()

    def _lose_transaction(self) -> bool:
        """Forget the open transaction (the server rolls it back); True if there was one."""
        had = self._in_txn
        self._in_txn = False
        self._savepoints.clear()
        self._txn_by_savepoint = False
        return had

    def _connected(self) -> Protocol:
        """Return a live protocol to the leader with the database open."""
        proto = self._proto
        if proto is not None and proto.is_alive():
            return proto
        self._drop()
        if self._lose_transaction():
            raise OperationalError(
                "the connection to the leader was lost and the open transaction was rolled back"
            )
        preferred = [proto.address] if proto is not None else []
        proto = find_leader(
            self._servers,
            attempt_timeout=self._attempt_timeout,
            total_timeout=self._leader_timeout,
            preferred=preferred,
        )
        try:
            flags = (int(self._timeout * 1000) + 1) << OPEN_BUSY_TIMEOUT_SHIFT
            proto.call(OpenRequest(self._database, flags), DbResponse, self._request_timeout)
        except BaseException:
            proto.close()
            raise
        self._proto = proto
        return proto

    def _run(self, send: Callable[[Protocol], Any], *, retry_unknown: bool = False) -> Any:
        """Run one request against the leader, failing over where it is provably safe.

        Args:
            send: performs the request on a protocol and returns its result.
            retry_unknown: the request has no side effects, so it may be re-sent
                even if the connection died after sending it.
        """
        deadline = time.monotonic() + self._leader_timeout
        while True:
            proto = self._connected()
            try:
                return send(proto)
            except NotLeaderError:
                # Rejected before execution: safe to send again to the new leader.
                self._drop()
                if self._lose_transaction():
                    raise OperationalError(
                        "leadership moved to another node; the open transaction was rolled back"
                    ) from None
            except LeadershipLostError:
                self._drop()
                self._lose_transaction()
                raise
            except ConnectionLostError as exc:
                self._drop()
                had_txn = self._lose_transaction()
                if had_txn:
                    raise OperationalError(
                        f"{exc}; the open transaction was rolled back"
                    ) from exc
                if exc.request_sent and not retry_unknown:
                    raise OperationalError(
                        f"{exc}; the outcome of the statement is unknown"
                    ) from exc
            if time.monotonic() >= deadline:
                raise OperationalError("no leader could serve the request in time")

    def _call(self, request: Request, expect: type[Any], *, retry_unknown: bool = False) -> Any:
        timeout = self._request_timeout
        return self._run(lambda p: p.call(request, expect, timeout), retry_unknown=retry_unknown)

    def _query(self, request: Request, *, retry_unknown: bool = False) -> list[RowsResponse]:
        timeout = self._request_timeout
        batches: list[RowsResponse] = self._run(
            lambda p: list(p.query(request, timeout)), retry_unknown=retry_unknown
        )
        return batches

    def _traced(self, sql: str) -> None:
        if self._trace is not None:
            try:
                self._trace(sql)
            except Exception:
                if _callback_tracebacks:
                    raise

    def _exec_text(self, sql: str) -> ResultResponse:
        """Run a transaction-control statement, waiting out a locked database."""
        self._traced(sql)
        result: ResultResponse = self._with_busy_retry(
            lambda: self._call(ExecSqlRequest(0, sql), ResultResponse)
        )
        return result

    def _with_busy_retry(self, fn: Callable[[], Any]) -> Any:
        """Retry ``fn`` while the database is locked, up to ``timeout`` seconds.

        SQLITE_BUSY means the statement did not run, so sending it again is safe;
        this plays the part of SQLite's busy handler.
        """
        deadline = time.monotonic() + self._timeout
        delay = 0.001
        while True:
            try:
                return fn()
            except OperationalError as exc:
                if exc.sqlite_errorcode != _SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.05)

    def _begin(self, level: str) -> None:
        self._exec_text(f"BEGIN {level}".rstrip())
        self._in_txn = True

    def _note_statement(self, parsed: ParsedSQL) -> None:
        """Track the transaction state a successful statement leaves behind."""
        keyword = parsed.keyword
        if keyword == "BEGIN":
            self._in_txn = True
        elif keyword in ("COMMIT", "END"):
            self._lose_transaction()
        elif keyword == "ROLLBACK":
            if not _ROLLBACK_TO.match(parsed.first.lstrip()):
                self._lose_transaction()
        elif keyword == "SAVEPOINT":
            match = _SAVEPOINT_NAME.search(parsed.first)
            if not self._in_txn:
                self._in_txn = True
                self._txn_by_savepoint = True
            self._savepoints.append(match.group(1).casefold() if match else "")
        elif keyword == "RELEASE":
            match = _SAVEPOINT_NAME.search(parsed.first)
            name = match.group(1).casefold() if match else ""
            if name in self._savepoints:
                del self._savepoints[self._savepoints.index(name) :]
            if not self._savepoints and self._txn_by_savepoint:
                self._lose_transaction()

    def _adapt(self, value: object, index: int) -> Value:
        if adapters and type(value) not in (int, float, str, bytes, type(None)):
            adapter = adapters.get((type(value), PrepareProtocol))
            if adapter is not None:
                value = adapter(value)
            else:
                conform = getattr(value, "__conform__", None)
                if conform is not None:
                    conformed = conform(PrepareProtocol)
                    if conformed is not None:
                        value = conformed
        if value is None or isinstance(value, _BASE_TYPES):
            if isinstance(value, int):
                if not _INT64_MIN <= value <= _INT64_MAX:
                    raise OverflowError("Python int too large to convert to SQLite INTEGER")
                return int(value)
            if isinstance(value, str) and "\x00" in value:
                raise ProgrammingError(
                    f"Error binding parameter {index}: the dqlite protocol cannot carry "
                    "text containing NUL characters"
                )
            if isinstance(value, float):
                return float(value)
            if isinstance(value, str):
                return str(value)
            return value
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        raise ProgrammingError(
            f"Error binding parameter {index}: type '{type(value).__name__}' is not supported"
        )

    def _params(self, parsed: ParsedSQL, parameters: Any) -> ValueTuple:
        values = bind_values(parsed, parameters)
        return ValueTuple.of(self._adapt(v, i + 1) for i, v in enumerate(values))

    # ---------------------------------------------------------- sqlite3 surface

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open on the server."""
        self._check()
        return self._in_txn

    @property
    def isolation_level(self) -> str | None:
        """The ``BEGIN`` flavour of implicit transactions; None is autocommit."""
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        level = self._check_isolation_level(value)
        self._check()
        if (
            level is None
            and self._autocommit == LEGACY_TRANSACTION_CONTROL
            and self._in_txn
        ):
            self.commit()
        self._isolation_level = level

    @property
    def autocommit(self) -> bool | int:
        """Python 3.12's transaction control: True, False or LEGACY_TRANSACTION_CONTROL."""
        self._check()
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool | int) -> None:
        self._check()
        if value not in (True, False, LEGACY_TRANSACTION_CONTROL):
            raise ValueError(
                "autocommit must be True, False, or sqlite3.LEGACY_TRANSACTION_CONTROL"
            )
        with self._lock:
            if value is True and self._in_txn:
                self._exec_text("COMMIT")
                self._lose_transaction()
            elif value is False and not self._in_txn:
                self._begin("")
            self._autocommit = value

    @property
    def total_changes(self) -> int:
        """Rows changed through this connection's server session since it opened."""
        self._check()
        with self._lock:
            batches = self._query(QuerySqlRequest(0, "SELECT total_changes()"), retry_unknown=True)
        return int(batches[0].rows[0][0])  # type: ignore[arg-type]

    def cursor(self, factory: Callable[[Connection], C] | None = None) -> Cursor:
        """Return a new cursor (of ``factory`` if given)."""
        self._check()
        cur = (factory or Cursor)(self)
        if not isinstance(cur, Cursor):
            raise TypeError("factory must return a cursor, not " + type(cur).__name__)
        return cur

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """Create a cursor, execute one statement on it and return it."""
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor:
        """Create a cursor and run one DML statement for each parameter set."""
        return self.cursor().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> Cursor:
        """Create a cursor and run every statement of a script."""
        return self.cursor().executescript(sql_script)

    def commit(self) -> None:
        """Commit the open transaction, if any."""
        self._check()
        with self._lock:
            if self._autocommit is True:
                return
            if self._in_txn:
                self._exec_text("COMMIT")
                self._lose_transaction()
            if self._autocommit is False:
                self._begin("")

    def rollback(self) -> None:
        """Roll back the open transaction, if any."""
        self._check()
        with self._lock:
            if self._autocommit is True:
                return
            if self._in_txn:
                try:
                    self._exec_text("ROLLBACK")
                finally:
                    self._lose_transaction()
            if self._autocommit is False:
                self._begin("")

    def close(self) -> None:
        """Close the connection; an open transaction is rolled back by the server."""
        if self._check_same_thread and threading.get_ident() != self._thread_ident:
            self._check()
        with self._lock:
            if self._closed:
                return
            if self._autocommit is False and self._in_txn and self._proto is not None:
                with contextlib.suppress(Error):
                    self._exec_text("ROLLBACK")
            self._closed = True
            self._lose_transaction()
            self._drop()
            callbacks, self._close_callbacks = self._close_callbacks, []
            for callback in callbacks:
                callback()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            with contextlib.suppress(Error):
                self.rollback()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self._closed = True
            self._drop()

    def set_trace_callback(self, trace_callback: Callable[[str], object] | None, /) -> None:
        """Call ``trace_callback`` with the text of every SQL statement sent."""
        self._check()
        self._trace = trace_callback

    def create_function(
        self,
        name: str,
        narg: int,
        func: Callable[..., Any] | None,
        *,
        deterministic: bool = False,
    ) -> None:
        """Record a user function.

        The function runs nowhere: SQL is executed on the leader, which cannot
        call back into this process, so SQL that uses it fails there with
        ``no such function``.  It is accepted (not refused) because libraries
        such as SQLAlchemy register functions on every new connection.
        """
        self._check()
        if func is None:
            self._functions.pop((name.casefold(), narg), None)
        else:
            self._functions[(name.casefold(), narg)] = func

    def _not_over_the_wire(self, what: str) -> _errors.NotSupportedError:
        return _errors.NotSupportedError(
            f"{what} is not supported: dqlite runs SQL on the cluster's leader, "
            "which cannot call back into this process"
        )

    def create_aggregate(self, name: str, n_arg: int, aggregate_class: Any) -> None:
        """Not supported over a network connection."""
        raise self._not_over_the_wire("create_aggregate()")

    def create_window_function(self, name: str, num_params: int, aggregate_class: Any) -> None:
        """Not supported over a network connection."""
        raise self._not_over_the_wire("create_window_function()")

    def create_collation(self, name: str, callable: Any, /) -> None:
        """Not supported over a network connection."""
        raise self._not_over_the_wire("create_collation()")

    def set_authorizer(self, authorizer_callback: Any) -> None:
        """Not supported over a network connection."""
        raise self._not_over_the_wire("set_authorizer()")

    def set_progress_handler(self, progress_handler: Any, n: int) -> None:
        """Not supported over a network connection."""
        raise self._not_over_the_wire("set_progress_handler()")

    def enable_load_extension(self, enabled: bool, /) -> None:
        """Not supported: extensions would load into the server."""
        raise NotSupportedError("loading extensions is not supported by dqlite")

    def load_extension(self, name: str, /, **kwargs: Any) -> None:
        """Not supported: extensions would load into the server."""
        raise NotSupportedError("loading extensions is not supported by dqlite")

    def blobopen(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: the protocol has no incremental blob I/O."""
        raise NotSupportedError("blobopen() is not supported: the dqlite protocol has no blob I/O")

    def backup(self, target: Any, **kwargs: Any) -> None:
        """Not supported: use :meth:`dqlitepy.Client.dump` to fetch a database's files."""
        raise NotSupportedError("backup() is not supported; use dqlitepy.Client.dump()")

    def serialize(self, **kwargs: Any) -> bytes:
        """Not supported: use :meth:`dqlitepy.Client.dump`."""
        raise NotSupportedError("serialize() is not supported; use dqlitepy.Client.dump()")

    def deserialize(self, data: bytes, /, **kwargs: Any) -> None:
        """Not supported: a replicated database cannot be replaced from one client."""
        raise NotSupportedError("deserialize() is not supported by dqlite")

    def interrupt(self) -> None:
        """Stop a query running on this connection (call it from another thread).

        The query fails with ``OperationalError: interrupted``.  A dqlitepy
        server stops at once; a C dqlite server reads the INTERRUPT only after it
        has sent the whole result, which is then discarded.  Writes are never
        interrupted: their outcome would be lost.
        """
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed database.")
        proto = self._proto
        if proto is not None:
            proto.interrupt()

    def iterdump(self) -> Iterator[str]:
        """Yield the SQL text that recreates the database, like ``sqlite3``'s ``iterdump``."""
        self._check()
        return _iterdump(self)


class Cursor:
    """A cursor over one connection (``sqlite3.Cursor``-like).

    Results are read whole when a statement runs: a dqlite server streams every
    batch of a result without waiting, so the connection is free again at once.
    """

    arraysize: int

    def __init__(self, connection: Connection, /) -> None:
        if not isinstance(connection, Connection):
            raise TypeError(
                "argument 1 must be dqlitepy.Connection, not " + type(connection).__name__
            )
        self.connection = connection
        self.arraysize = 1
        self.description: tuple[tuple[str, None, None, None, None, None, None], ...] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.row_factory: Callable[[Cursor, tuple[Any, ...]], Any] | None = connection.row_factory
        self._closed = False
        self._rows: list[tuple[Value, ...]] = []
        self._row_types: list[tuple[int, ...]] = []
        self._converters: list[Callable[[bytes], Any] | None] = []
        self._pos = 0

    def _check(self) -> Connection:
        conn = self.connection
        conn._check()
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        return conn

    def _reset(self) -> None:
        self.description = None
        self._rows = []
        self._row_types = []
        self._converters = []
        self._pos = 0

    def _set_columns(self, columns: Sequence[str]) -> None:
        conn = self.connection
        names: list[str] = []
        convs: list[Callable[[bytes], Any] | None] = []
        for column in columns:
            conv = None
            name = column
            if conn._detect_types & PARSE_COLNAMES:
                open_at = column.find("[")
                if open_at >= 0:
                    close_at = column.find("]", open_at)
                    if close_at > open_at:
                        conv = converters.get(column[open_at + 1 : close_at].upper())
                    name = column[:open_at]
                    if name.endswith(" "):
                        name = name[:-1]
            names.append(name)
            convs.append(conv)
        self.description = tuple((n, None, None, None, None, None, None) for n in names)
        if conn._detect_types & (PARSE_COLNAMES | PARSE_DECLTYPES) and any(convs):
            self._converters = convs
        else:
            self._converters = []

    def _prepare(self, sql: object, parameters: Any) -> tuple[ParsedSQL, ValueTuple]:
        if not isinstance(sql, str):
            raise TypeError(f"execute() argument 1 must be str, not {type(sql).__name__}")
        if "\x00" in sql:
            raise ProgrammingError("the query contains a null character")
        parsed = parse(sql)
        if has_more_statements(parsed.tail):
            raise ProgrammingError("You can only execute one statement at a time.")
        return parsed, self.connection._params(parsed, parameters)

    def _before(self, parsed: ParsedSQL) -> None:
        """Open the implicit transaction ``sqlite3`` would open for this statement."""
        conn = self.connection
        # With autocommit=False, sqlite3 (3.12) opens transactions only in
        # connect(), commit() and rollback(), never before a statement.
        if (
            not conn._in_txn
            and conn._autocommit == LEGACY_TRANSACTION_CONTROL
            and conn._isolation_level is not None
            and parsed.is_dml
        ):
            conn._begin(conn._isolation_level)

    def _execute_one(self, parsed: ParsedSQL, params: ValueTuple) -> None:
        conn = self.connection
        sql = parsed.first
        conn._traced(sql)
        if parsed.returns_rows_hint:
            read_only = parsed.keyword in ("SELECT", "VALUES", "EXPLAIN") and not conn._in_txn
            try:
                batches: list[RowsResponse] = conn._with_busy_retry(
                    lambda: conn._query(QuerySqlRequest(0, sql, params), retry_unknown=read_only)
                )
            except OperationalError as exc:
                # dqlite answers QUERY of a statement without result columns with
                # "not an error" *before* running it (protocol.md §6.1).
                if exc.sqlite_errorcode != _SQLITE_ERROR or str(exc) != "not an error":
                    raise
            else:
                self._take_rows(batches)
                if parsed.is_dml:
                    # DML ... RETURNING yields one row per changed row.
                    self.rowcount = len(self._rows)
                conn._note_statement(parsed)
                return
        result: ResultResponse = conn._with_busy_retry(
            lambda: conn._call(ExecSqlRequest(0, sql, params), ResultResponse)
        )
        self.rowcount = result.rows_affected if parsed.is_dml else -1
        self.lastrowid = result.last_insert_id
        conn._note_statement(parsed)

    def _take_rows(self, batches: list[RowsResponse]) -> None:
        columns = batches[0].columns if batches else ()
        if columns:
            self._set_columns(columns)
        rows: list[tuple[Value, ...]] = []
        types: list[tuple[int, ...]] = []
        for batch in batches:
            rows.extend(batch.rows)
            types.extend(batch.row_types)
        self._rows = rows
        self._row_types = types

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """Execute one SQL statement with qmark or named parameters."""
        conn = self._check()
        with conn._lock:
            self._reset()
            self.rowcount = -1
            parsed, params = self._prepare(sql, parameters)
            if parsed.is_empty:
                return self
            self._before(parsed)
            self._execute_one(parsed, params)
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Cursor:
        """Run one DML statement once per parameter set, as one prepared statement."""
        conn = self._check()
        if not isinstance(sql, str):
            raise TypeError(f"executemany() argument 1 must be str, not {type(sql).__name__}")
        with conn._lock:
            self._reset()
            self.rowcount = -1
            parsed = parse(sql)
            if has_more_statements(parsed.tail):
                raise ProgrammingError("You can only execute one statement at a time.")
            if parsed.returns_rows_hint:
                raise ProgrammingError("executemany() can only execute DML statements.")
            iterator = iter(seq_of_parameters)
            total = 0 if parsed.is_dml else -1
            if parsed.is_empty:
                return self
            self._before(parsed)
            conn._traced(parsed.first)
            proto_holder: list[Protocol] = []

            def prepare(proto: Protocol) -> StmtResponse:
                proto_holder[:] = [proto]
                stmt: StmtResponse = proto.call(
                    PrepareRequest(0, parsed.first), StmtResponse, conn._request_timeout
                )
                return stmt

            stmt: StmtResponse = conn._run(prepare)
            proto = proto_holder[0]
            try:
                for parameters in iterator:
                    params = conn._params(parsed, parameters)
                    request = ExecRequest(0, stmt.stmt_id, params)
                    result: ResultResponse = conn._with_busy_retry(
                        lambda request=request: conn._run(  # type: ignore[misc]
                            lambda p: self._exec_on(p, proto, request, conn._request_timeout)
                        )
                    )
                    if parsed.is_dml:
                        total += result.rows_affected
                    self.rowcount = total
            finally:
                if conn._proto is proto and not proto.closed:
                    with contextlib.suppress(Error):
                        proto.call(
                            FinalizeRequest(0, stmt.stmt_id), EmptyResponse, conn._request_timeout
                        )
            self.rowcount = total
            conn._note_statement(parsed)
        return self

    @staticmethod
    def _exec_on(
        current: Protocol, prepared_on: Protocol, request: ExecRequest, timeout: float | None
    ) -> ResultResponse:
        if current is not prepared_on:
            # The statement id belongs to a server session that is gone.
            raise OperationalError(
                "the connection to the leader was lost during executemany(); "
                "the statement was not run for the remaining parameters"
            )
        result: ResultResponse = current.call(request, ResultResponse, timeout)
        return result

    def executescript(self, sql_script: str, /) -> Cursor:
        """Commit any open transaction, then run every statement of the script."""
        conn = self._check()
        if not isinstance(sql_script, str):
            raise ValueError("script argument must be unicode.")
        if "\x00" in sql_script:
            raise ValueError("embedded null character")
        with conn._lock:
            self._reset()
            if conn._autocommit == LEGACY_TRANSACTION_CONTROL and conn._in_txn:
                conn._exec_text("COMMIT")
                conn._lose_transaction()
            # sqlite3 leaves rowcount and lastrowid as they were.
            rowcount, lastrowid = self.rowcount, self.lastrowid
            try:
                for statement in split_statements(sql_script):
                    parsed = parse(statement)
                    if parsed.is_empty:
                        continue
                    self._execute_one(parsed, ValueTuple())
            finally:
                self.rowcount, self.lastrowid = rowcount, lastrowid
            self._reset()
        return self

    # ----------------------------------------------------------------- fetching

    def _convert(self, values: tuple[Value, ...], types: tuple[int, ...]) -> tuple[Any, ...]:
        text_factory = self.connection.text_factory
        out: list[Any] = []
        convs = self._converters
        for i, (value, type_) in enumerate(zip(values, types, strict=True)):
            if type_ == ValueType.ISO8601 and value == "":
                # dqlite sends NULL in a DATETIME column as empty ISO8601 (§4.2).
                value = None
            conv = convs[i] if convs else None
            if conv is not None and value is not None:
                out.append(conv(_as_bytes(value)))
            elif isinstance(value, str) and text_factory is not str:
                raw = value.encode("utf-8", "surrogateescape")
                out.append(raw if text_factory is bytes else text_factory(raw))
            else:
                out.append(value)
        return tuple(out)

    def _next_row(self) -> Any | None:
        if self._pos >= len(self._rows):
            return None
        i = self._pos
        self._pos += 1
        row = self._convert(self._rows[i], self._row_types[i])
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
        if self.connection._check_same_thread:
            self.connection._check()
        self._closed = True
        self._reset()

    def setinputsizes(self, sizes: Any, /) -> None:
        """Does nothing (PEP 249)."""

    def setoutputsize(self, size: Any, column: Any = None, /) -> None:
        """Does nothing (PEP 249)."""


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _iterdump(conn: Connection) -> Iterator[str]:
    cur = conn.cursor()
    yield "BEGIN TRANSACTION;"
    tables = cur.execute(
        "SELECT name, type, sql FROM sqlite_master "
        "WHERE sql NOT NULL AND type == 'table' ORDER BY name"
    ).fetchall()
    # sqlite_sequence is restored last, once the AUTOINCREMENT tables that
    # create it exist (as sqlite3 does since gh-79009).
    sequence: list[str] = []
    writable_schema = False
    for name, _type, sql in tables:
        if name == "sqlite_sequence":
            sequence.append('DELETE FROM "sqlite_sequence";')
            sequence.extend(
                f'INSERT INTO "sqlite_sequence" VALUES({_quote_literal(seq_name)},{seq});'
                for seq_name, seq in cur.execute('SELECT * FROM "sqlite_sequence"').fetchall()
            )
            continue
        if name == "sqlite_stat1":
            yield 'ANALYZE "sqlite_master";'
        elif name.startswith("sqlite_"):
            continue
        elif sql.startswith("CREATE VIRTUAL TABLE"):
            if not writable_schema:
                writable_schema = True
                yield "PRAGMA writable_schema=ON;"
            yield (
                "INSERT INTO sqlite_master(type,name,tbl_name,rootpage,sql)"
                f"VALUES('table',{_quote_literal(name)},{_quote_literal(name)},0,"
                f"{_quote_literal(sql)});"
            )
        else:
            yield f"{sql};"
        table = _quote_identifier(name)
        columns = [row[1] for row in cur.execute(f"PRAGMA table_info({table})").fetchall()]
        if not columns:
            continue
        values = "||','||".join(f"quote({_quote_identifier(c)})" for c in columns)
        query = (
            f"SELECT 'INSERT INTO ' || {_quote_literal(table)} || ' VALUES(' || {values} || ')' "
            f"FROM {table}"
        )
        for (row,) in cur.execute(query).fetchall():
            yield f"{row};"
    # In creation order (as sqlite3): a trigger must follow the view it is on.
    others = cur.execute(
        "SELECT name, type, sql FROM sqlite_master "
        "WHERE sql NOT NULL AND type IN ('index', 'trigger', 'view')"
    ).fetchall()
    for _name, _type, sql in others:
        yield f"{sql};"
    if writable_schema:
        yield "PRAGMA writable_schema=OFF;"
    yield from sequence
    yield "COMMIT;"


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(
    database: str | bytes | os.PathLike[str],
    timeout: float = 5.0,
    detect_types: int = 0,
    isolation_level: str | None = "",
    check_same_thread: bool = True,
    factory: type[Connection] | None = None,
    cached_statements: int = 128,
    uri: bool = False,
    *,
    autocommit: bool | int = LEGACY_TRANSACTION_CONTROL,
    servers: Sequence[str] | str | None = None,
    leader_timeout: float = DEFAULT_LEADER_TIMEOUT,
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
) -> Connection:
    """Open a connection to a database of a dqlite cluster.

    Args:
        database: the database name, or a ``dqlite://h1:p1,h2:p2/name`` URL.
        timeout: how long a statement waits for a locked database.
        detect_types: ``PARSE_COLNAMES`` (and ``PARSE_DECLTYPES``) as in sqlite3.
        isolation_level: ``""``, ``"DEFERRED"``, ``"IMMEDIATE"``, ``"EXCLUSIVE"``
            or None for autocommit (legacy transaction control).
        check_same_thread: refuse use from other threads, as sqlite3 does.
        factory: a :class:`Connection` subclass to instantiate.
        cached_statements: accepted for compatibility.
        uri: accept ``file:name`` database names.
        autocommit: Python 3.12's transaction control.
        servers: node addresses (``host:port`` or ``@abstract``); otherwise from
            the URL, then ``DQLITEPY_SERVERS``.
        leader_timeout: how long to look for a leader before failing.
        attempt_timeout: the budget of one attempt through one node.
        request_timeout: the longest one request may wait for its response
            (None: no limit).

    Raises:
        OperationalError: no leader could be reached.
    """
    cls = factory or Connection
    return cls(
        database,
        timeout,
        detect_types,
        isolation_level,
        check_same_thread,
        None,
        cached_statements,
        uri,
        autocommit=autocommit,
        servers=servers,
        leader_timeout=leader_timeout,
        attempt_timeout=attempt_timeout,
        request_timeout=request_timeout,
    )

