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
before execution, to a statement or to the OPEN of a new session) makes it find
the new leader and send the request there, until ``leader_timeout``.  A request
whose fate is unknown (the connection failed after it was sent, or ``leadership
lost``) is never re-sent: it raises :class:`OperationalError`, and the next call
reconnects.  An open transaction does not survive a change of leader: the
server rolls it back.  Every such error says what became of the request, in its
message and in ``outcome`` (see :mod:`dqlitepy.client.errors`): a ``COMMIT``
whose reply was lost has an unknown outcome, not a rolled-back transaction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import operator
import os
import re
import ssl as _ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, unquote

from ..wire import (
    DEFAULT_MAX_MESSAGE_SIZE,
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
from . import types as _types
from .constants import SQLITE_LIMIT_SQL_LENGTH
from .errors import (
    OUTCOME_NOT_RUN,
    OUTCOME_ROLLED_BACK,
    OUTCOME_UNKNOWN,
    ConnectionLostError,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    LeadershipLostError,
    NoLeaderError,
    NotLeaderError,
    NotSupportedError,
    OperationalError,
    Outcome,
    ProgrammingError,
    make_error,
)
from .protocol import Protocol, find_leader, parse_address
from .sqltext import (
    ParsedSQL,
    has_more_statements,
    is_complete,
    iter_values,
    parse,
    split_statements,
)
from .tls import context_from_url
from .types import (
    PARSE_COLNAMES,
    PARSE_DECLTYPES,
    PrepareProtocol,
    adapt,
    adapters,
    converters,
)

__all__ = [
    "LEGACY_TRANSACTION_CONTROL",
    "Connection",
    "Cursor",
    "Statement",
    "complete_statement",
    "connect",
    "enable_callback_tracebacks",
    "enable_shared_cache",
    "parse_url",
]

log = logging.getLogger("dqlitepy.client")

#: ``autocommit`` value meaning "follow ``isolation_level`` as sqlite3 did before 3.12".
LEGACY_TRANSACTION_CONTROL: Final = -1

#: How long to keep looking for a leader before a call fails.
DEFAULT_LEADER_TIMEOUT = 30.0
#: The budget of one attempt through one node while looking for the leader.
DEFAULT_ATTEMPT_TIMEOUT = 2.0
#: The longest a single request may wait for its response.
DEFAULT_REQUEST_TIMEOUT = 60.0
#: The longest pause between two attempts to open the database on a new leader.
_MAX_OPEN_DELAY = 0.25

_SQLITE_BUSY = 5
_SQLITE_ERROR = 1
# A URL scheme (RFC 3986 §3.1) followed by "//".  Two characters at least, so
# that a Windows drive ("c://x") stays a file name.
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")
# The dqlite scheme and its colon or slashes: a dqlite URL, however mistyped.
_DQLITE_SCHEME = re.compile(r"dqlite(?::|//)", re.IGNORECASE)
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_ROLLBACK_TO = re.compile(r"ROLLBACK\s+(?:TRANSACTION\s+)?TO\b", re.IGNORECASE)
_SAVEPOINT_NAME = re.compile(
    r"(?:SAVEPOINT|RELEASE(?:\s+SAVEPOINT)?)\s+(\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]|'(?:[^']|'')*'|\S+)",
    re.IGNORECASE,
)
_ISOLATION_LEVELS = ("", "DEFERRED", "IMMEDIATE", "EXCLUSIVE")
# Exact types sqlite3 binds without trying adapters (unless one is registered
# for such a type).
_NOT_ADAPTED = frozenset({int, float, str, bytearray})
# Primary result codes after which SQLite may have rolled back the whole
# transaction by itself (sqlite.org/lang_transaction.html, "Response To Errors
# Within A Transaction"), and ROLLBACK conflict resolution (SQLITE_CONSTRAINT).
_MAY_END_TRANSACTION = frozenset({4, 5, 7, 9, 10, 13, 19})
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1
_RECURSIVE_USE = "Recursive use of cursors not allowed."
_DEFAULT_FACTORY: Any = object()
# "INTEGER NOT NULL" -> "INTEGER", "NUMBER(10)" -> "NUMBER", as sqlite3 splits
# declared types to find a converter.
_DECLTYPE_WORD = re.compile(r"[^ (]*")
# SQL functions a dqlitepy server adds to every session (dqlitepy/engine).
_LIMIT_FUNCTION = "dqlitepy_limit"
_LIMIT_SQL = f"SELECT {_LIMIT_FUNCTION}(?, ?)"
_DECLTYPES_FUNCTION = "dqlitepy_decltypes"
_DECLTYPES_SQL = f"SELECT {_DECLTYPES_FUNCTION}(?)"

_callback_tracebacks = False

C = TypeVar("C", bound="Cursor")


def enable_callback_tracebacks(flag: bool, /) -> None:
    """Accepted for ``sqlite3`` compatibility; callbacks run in this process only for tracing."""
    global _callback_tracebacks
    _callback_tracebacks = bool(flag)


def enable_shared_cache(enable: int, /) -> None:
    """Deprecated in ``sqlite3`` (3.10) and without effect here.

    SQLite's shared cache is a setting of the process that opens the database
    files; with dqlite that is the server, whose sessions never use it.
    """
    warnings.warn(
        "enable_shared_cache is deprecated and will be removed in Python 3.12. "
        "Shared cache is strongly discouraged by the SQLite 3 documentation, and "
        "dqlite servers never use it.",
        DeprecationWarning,
        stacklevel=2,
    )


def _no_such_function(exc: Error, name: str) -> bool:
    return str(exc).startswith(f"no such function: {name}")


def complete_statement(statement: str) -> bool:
    """Return True if ``statement`` holds at least one complete SQL statement."""
    return is_complete(statement)


def _is_url(name: str) -> bool:
    """True if the database name ``name`` is meant as a URL, not as a name.

    ``sqlite3`` takes any string as a file name, so only what no one means as
    one counts: a name that starts with the dqlite scheme and its colon or
    slashes (``dqlite:...``, ``dqlite//...``: a dqlite URL, maybe mistyped),
    or with any other scheme of two characters or more and ``://`` (a URL for
    something else, such as SQLAlchemy's ``sqlite+dqlitepy://``).  ``file:``
    names are left to ``sqlite3``'s rules (a URI with ``uri=True``, else a
    name); ``app.db``, ``dir/app.db``, ``app.db:v2`` and ``:memory:`` are names.
    """
    if _DQLITE_SCHEME.match(name):
        return True
    match = _URL_SCHEME.match(name)
    return match is not None and match.group(1).lower() != "file"


def parse_url(url: str) -> tuple[list[str], str]:
    """Split ``dqlite://h1:p1,h2:p2/db`` into the server list and the database name.

    The scheme is case-insensitive (RFC 3986); the database name is
    percent-decoded; the query string is read by the caller (its ``tls*`` parameters).

    Raises:
        ProgrammingError: ``url`` is not a dqlite URL, or has no servers, an
            invalid server address or no database.
    """
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "dqlite" or not sep:
        raise ProgrammingError(
            f"invalid dqlite URL {url!r}: expected dqlite://host:port,.../database"
        )
    hosts, sep, database = rest.partition("/")
    database = unquote(database.partition("?")[0])
    servers = [h for h in hosts.split(",") if h]
    if not sep or not database or not servers:
        raise ProgrammingError(
            f"invalid dqlite URL {url!r}: expected dqlite://host:port,.../database"
        )
    for address in servers:
        try:
            parse_address(address)
        except ValueError as exc:
            raise ProgrammingError(f"invalid dqlite URL {url!r}: {exc}") from None
    return servers, database


def _url_tls(url: str) -> _ssl.SSLContext | None:
    """The TLS context a ``dqlite://`` URL's query string asks for (``docs/driver.md``).

    Raises:
        ProgrammingError: a malformed TLS parameter or TLS files that cannot be loaded.
    """
    query = url.partition("?")[2]
    if not query:
        return None
    try:
        return context_from_url(dict(parse_qsl(query, keep_blank_values=True)))
    except ValueError as exc:
        raise ProgrammingError(f"invalid dqlite URL {url!r}: {exc}") from None


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

    #: True once ``__init__`` has succeeded; sqlite3 refuses every operation before.
    _initialized = False

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
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        if self._initialized:
            # As in sqlite3, calling __init__ again closes the connection and opens
            # a new one; until that succeeds the object is unusable.
            self.close()
            self._initialized = False
        if autocommit not in (True, False, LEGACY_TRANSACTION_CONTROL):
            raise ValueError(
                "autocommit must be True, False, or sqlite3.LEGACY_TRANSACTION_CONTROL"
            )
        level = self._check_isolation_level(isolation_level)
        name = os.fsdecode(database) if isinstance(database, bytes) else os.fspath(database)
        # A path object names a file (and cannot hold "//"): only strings are URLs.
        if isinstance(database, str | bytes) and _is_url(name):
            url = name
            url_servers, name = parse_url(url)
            if servers is None:
                servers = url_servers
            if ssl is None:
                ssl = _url_tls(url)
        elif uri and name.startswith("file:"):
            name = unquote(name[len("file:") :].partition("?")[0])
        if isinstance(servers, str):
            servers = [s for s in servers.split(",") if s]
        if servers is None:
            servers = _servers_from_env() or None
        # Run once the connection is closed (the embedded node deletes a
        # private :memory: database this way).
        self._close_callbacks: list[Callable[[], None]] = []
        self._closed = True
        self._proto: Protocol | None = None
        self._ssl = ssl
        try:
            if servers is None:
                servers, name = self._default_servers(name)
            self._setup(
                name,
                servers,
                timeout,
                detect_types,
                check_same_thread,
                leader_timeout,
                attempt_timeout,
                request_timeout,
                max_message_size,
            )
            self._autocommit: bool | int = autocommit
            self._isolation_level: str | None = level
            # Fail fast, as sqlite3.connect does when it cannot open the file.
            with self._lock:
                self._connected()
                if self._autocommit is False:
                    self._begin(None)
        except BaseException:
            self._closed = True
            self._drop()
            self._run_close_callbacks()
            raise
        self._initialized = True

    def _setup(
        self,
        name: str,
        servers: Sequence[str],
        timeout: float,
        detect_types: int,
        check_same_thread: bool,
        leader_timeout: float,
        attempt_timeout: float,
        request_timeout: float | None,
        max_message_size: int,
    ) -> None:
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
        self._max_message_size = operator.index(max_message_size)
        self._detect_types = int(detect_types)
        self._check_same_thread = bool(check_same_thread)
        self._thread_ident = threading.get_ident()
        self._lock = threading.RLock()
        self._closed = False
        self._in_txn = False
        self._savepoints: list[str] = []
        self._txn_by_savepoint = False
        self._trace: Callable[[str], object] | None = None
        self._functions: dict[tuple[str, int], Callable[..., Any]] = {}
        # The server session's sqlite3_last_insert_rowid(), as of the last result.
        self._last_insert_rowid = 0
        # Limits set with setlimit(), applied again to a new server session.
        self._limits: dict[int, int] = {}
        # SQLITE_LIMIT_SQL_LENGTH once known; like sqlite3, longer SQL is refused here.
        self._sql_length_limit: int | None = None
        self.row_factory: Callable[[Cursor, tuple[Any, ...]], Any] | None = None
        self.text_factory: Any = str

    def _default_servers(self, name: str) -> tuple[list[str], str]:
        """Where database ``name`` lives when no servers are configured.

        The driver alone knows of none; ``dqlitepy.Connection`` overrides this
        to use the process's embedded node.

        Returns:
            The servers and the database name to open there.
        """
        raise OperationalError(
            "no dqlite servers configured: pass servers=[...], use a "
            "dqlite://host:port/db URL or set DQLITEPY_SERVERS"
        )

    def _run_close_callbacks(self) -> None:
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            callback()

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _check_isolation_level(level: str | None) -> str | None:
        if level is None:
            return None
        if not isinstance(level, str):
            raise TypeError("isolation_level must be str or None")
        if "\x00" in level:
            raise ValueError("embedded null character")
        # Compared as sqlite3 does (sqlite3_stricmp): ASCII letters only, and with
        # str's own methods, whatever a subclass overrides.
        canonical = str.upper(level) if str.isascii(level) else None
        if canonical not in _ISOLATION_LEVELS:
            raise ValueError(
                "isolation_level string must be '', 'DEFERRED', 'IMMEDIATE', or 'EXCLUSIVE'"
            )
        return canonical  # sqlite3 reports the canonical spelling

    def _check_open(self) -> None:
        """sqlite3's pysqlite_check_connection: initialised and not closed."""
        if not self._initialized:
            raise ProgrammingError("Base Connection.__init__ not called.")
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed database.")

    def _check(self) -> None:
        if not self._initialized:
            raise ProgrammingError("Base Connection.__init__ not called.")
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

    def _connected(self, deadline: float | None = None) -> Protocol:
        """Return a live protocol to the leader with the database open.

        Opening a session on a new leader is retried until ``deadline``
        (default: ``leader_timeout`` from now): OPEN changes nothing in the
        database, so it is sent again whether a node that stopped leading
        refused it or the connection failed.

        Raises:
            ConnectionLostError: the connection died while a transaction was
                open; the server rolled it back.
            NoLeaderError: no leader could open the database in time.
        """
        proto = self._proto
        if proto is not None and proto.is_alive():
            return proto
        self._drop()
        if self._lose_transaction():
            # Noticed before anything was sent: nothing can have committed.
            where = proto.address if proto is not None else "the leader"
            raise ConnectionLostError(
                f"lost the connection to {where} while idle; the open transaction was rolled back",
                request_sent=False,
                outcome=OUTCOME_ROLLED_BACK,
            )
        if deadline is None:
            deadline = time.monotonic() + self._leader_timeout
        preferred = [proto.address] if proto is not None else []
        delay = 0.01
        while True:
            proto = find_leader(
                self._servers,
                attempt_timeout=self._attempt_timeout,
                total_timeout=max(0.0, deadline - time.monotonic()),
                preferred=preferred,
                # With every node refusing connections nothing will lead soon:
                # give up after `timeout`, as sqlite3.connect gives up on a
                # database it cannot open instead of waiting for leader_timeout.
                refused_timeout=self._timeout,
                ssl_context=self._ssl,
            )
            try:
                self._open_session(proto)
            except (NotLeaderError, ConnectionLostError) as exc:
                # The node found was deposed (or died) between naming itself
                # leader and the OPEN: look again.
                proto.close()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoLeaderError(
                        f"no leader could open database {self._database!r} within "
                        f"{self._leader_timeout:g}s (last: {proto.address}: {exc})"
                    ) from exc
                log.debug("opening %r on %s failed: %s", self._database, proto.address, exc)
                preferred = []
                time.sleep(min(delay, left))
                delay = min(delay * 2, _MAX_OPEN_DELAY)
                continue
            except BaseException:
                proto.close()
                raise
            self._proto = proto
            self._last_insert_rowid = 0
            return proto

    def _open_session(self, proto: Protocol) -> None:
        """Open the database in a new server session and apply this connection's settings."""
        proto.max_request_size = self._max_message_size
        flags = (int(self._timeout * 1000) + 1) << OPEN_BUSY_TIMEOUT_SHIFT
        proto.call(OpenRequest(self._database, flags), DbResponse, self._request_timeout)
        # A new server session: limits set earlier apply to it too.
        for category, value in self._limits.items():
            self._limit_on(proto, category, value)

    def _run(
        self,
        send: Callable[[Protocol], Any],
        *,
        retry_unknown: bool = False,
        may_commit: bool = False,
    ) -> Any:
        """Run one request against the leader, failing over where it is provably safe.

        Args:
            send: performs the request on a protocol and returns its result.
            retry_unknown: the request has no lasting effect (a read, or a BEGIN
                whose session dies with the connection), so it may be re-sent
                even if the connection died after sending it.
            may_commit: the request may commit the open transaction (COMMIT,
                END, RELEASE of the savepoint that opened it), so losing its
                reply leaves the transaction's outcome unknown, not rolled back.

        Raises:
            ConnectionLostError, LeadershipLostError: the request or the open
                transaction cannot be retried; ``outcome`` says what became of it.
            NoLeaderError: no leader could serve the request within ``leader_timeout``.
        """
        deadline = time.monotonic() + self._leader_timeout
        while True:
            proto = self._connected(deadline)
            try:
                return send(proto)
            except NotLeaderError as exc:
                # Refused before execution: safe to send again to the new leader.
                self._drop()
                if self._lose_transaction():
                    raise ConnectionLostError(
                        f"{proto.address} is no longer the leader and refused the statement "
                        "before running it; the open transaction was rolled back",
                        request_sent=False,
                        outcome=OUTCOME_ROLLED_BACK,
                    ) from exc
                last: Error = exc
            except LeadershipLostError as exc:
                self._drop()
                raise self._lost(exc, sent=True, may_commit=may_commit) from exc
            except ConnectionLostError as exc:
                self._drop()
                if self._in_txn or (exc.request_sent and not retry_unknown):
                    raise self._lost(exc, sent=exc.request_sent, may_commit=may_commit) from exc
                last = exc
            if time.monotonic() >= deadline:
                raise NoLeaderError(
                    f"no leader could serve the request within {self._leader_timeout:g}s "
                    f"(last: {last})"
                ) from last

    def _lost(
        self, exc: _errors.OperationalError, *, sent: bool, may_commit: bool
    ) -> _errors.OperationalError:
        """The error for a request cut off from its leader, saying what became of it.

        The server session is gone, and any open transaction with it: unless the
        request could have committed it (a COMMIT whose reply was lost may have
        run), nothing of it committed.  Outside a transaction, a request that
        was sent may have run.
        """
        had_txn = self._lose_transaction()
        outcome: Outcome
        if had_txn and sent and may_commit:
            outcome, what = OUTCOME_UNKNOWN, "the outcome of the commit is unknown"
        elif had_txn:
            outcome, what = OUTCOME_ROLLED_BACK, "the open transaction was rolled back"
        elif sent:
            outcome, what = OUTCOME_UNKNOWN, "the outcome of the statement is unknown"
        else:
            outcome, what = OUTCOME_NOT_RUN, "the statement was not run"
        message = f"{exc}; {what}"
        if isinstance(exc, ConnectionLostError):
            return ConnectionLostError(message, request_sent=sent, outcome=outcome)
        error = make_error(type(exc), message, code=exc.sqlite_errorcode, name=exc.sqlite_errorname)
        error.outcome = outcome
        return error

    def _call(
        self,
        request: Request,
        expect: type[Any],
        *,
        retry_unknown: bool = False,
        may_commit: bool = False,
    ) -> Any:
        timeout = self._request_timeout
        return self._run(
            lambda p: p.call(request, expect, timeout),
            retry_unknown=retry_unknown,
            may_commit=may_commit,
        )

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

    def _exec_text(
        self, sql: str, *, retry_unknown: bool = False, may_commit: bool = False
    ) -> ResultResponse:
        """Run a transaction-control statement, waiting out a locked database.

        ``retry_unknown`` and ``may_commit`` are :meth:`_run`'s.
        """
        self._traced(sql)
        result: ResultResponse = self._with_busy_retry(
            lambda: self._call(
                ExecSqlRequest(0, sql),
                ResultResponse,
                retry_unknown=retry_unknown,
                may_commit=may_commit,
            )
        )
        self._last_insert_rowid = result.last_insert_id
        return result

    def _ask_last_insert_rowid(self) -> int:
        """The server session's ``last_insert_rowid()`` (ROWS responses do not carry it)."""
        batches = self._query(QuerySqlRequest(0, "SELECT last_insert_rowid()"), retry_unknown=True)
        return int(batches[0].rows[0][0])  # type: ignore[arg-type]

    def _decltypes(self, sql: str, count: int) -> list[str | None]:
        """The declared types of the result columns of ``sql``, for PARSE_DECLTYPES.

        dqlite's ROWS responses carry column names only; a dqlitepy server
        offers ``sqlite3_column_decltype()`` as the SQL function
        ``dqlitepy_decltypes(sql)``, which compiles ``sql`` without running it.

        Raises:
            NotSupportedError: the server (C dqlite) does not have the function.
        """
        request = QuerySqlRequest(0, _DECLTYPES_SQL, ValueTuple.of([sql]))
        try:
            batches = self._query(request, retry_unknown=True)
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

    def _after_failure(self, exc: _errors.Error) -> None:
        """Learn whether SQLite rolled the open transaction back after a failed statement.

        SQLite ends the whole transaction by itself after some errors (a conflict
        with ``ON CONFLICT ROLLBACK``, ``RAISE(ROLLBACK)``, a full disk, an I/O
        error ...); ``sqlite3`` then sees ``sqlite3_get_autocommit()`` turn true.
        The wire does not carry that flag, so ask the server: ``BEGIN`` fails
        inside a transaction and otherwise opens one that ``ROLLBACK`` closes at
        once, in the same request.
        """
        code = exc.sqlite_errorcode
        if not self._in_txn or code is None or code & 0xFF not in _MAY_END_TRANSACTION:
            return
        try:
            self._call(ExecSqlRequest(0, "BEGIN; ROLLBACK"), ResultResponse)
        except Error:
            return  # still inside the transaction (or the connection is gone, and _run knows)
        self._lose_transaction()

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

    def _begin(self, level: str | None) -> None:
        # The statement texts sqlite3 sends (and traces): "BEGIN " + isolation
        # level for implicit transactions, plain "BEGIN" with autocommit=False.
        # A BEGIN whose reply was lost is sent again: whatever it did ended
        # with its server session.
        self._exec_text("BEGIN" if level is None else f"BEGIN {level}", retry_unknown=True)
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
        # As sqlite3: exact int, float, str and bytearray skip adaptation unless an
        # adapter was registered for one of those types; everything else goes
        # through adapt() with itself as the fallback.  (None and bytes have no
        # __conform__, so for them only a registered adapter can apply.)
        kind = type(value)
        needs_adapting = _types.base_types_adapted() or kind not in _NOT_ADAPTED
        plain = kind is bytes or value is None
        if needs_adapting and (not plain or (kind, PrepareProtocol) in adapters):
            value = adapt(value, PrepareProtocol, value)
        if value is None:
            return None
        if isinstance(value, int):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise OverflowError("Python int too large to convert to SQLite INTEGER")
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, str):
            if not value.isascii():
                value.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError, as in sqlite3
            if "\x00" in value:
                raise ProgrammingError(
                    f"Error binding parameter {index}: the dqlite protocol cannot carry "
                    "text containing NUL characters"
                )
            return str(value)
        if isinstance(value, bytes):
            return bytes(value)
        try:
            view = memoryview(value)  # type: ignore[arg-type]
        except TypeError:
            raise ProgrammingError(
                f"Error binding parameter {index}: type '{type(value).__name__}' is not supported"
            ) from None
        with view:
            if not view.c_contiguous:
                raise BufferError("memoryview: underlying buffer is not C-contiguous")
            return view.tobytes()

    def _params(self, parsed: ParsedSQL, parameters: Any) -> ValueTuple:
        # Values are taken one at a time and adapted before the next is read, as
        # sqlite3 binds them (an adapter may change the parameter list).
        return ValueTuple.of(
            self._adapt(v, i) for i, v in enumerate(iter_values(parsed, parameters), 1)
        )

    # ---------------------------------------------------------- sqlite3 surface

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open on the server."""
        self._check()
        return self._in_txn

    @property
    def isolation_level(self) -> str | None:
        """The ``BEGIN`` flavour of implicit transactions; None is autocommit."""
        self._check_open()
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        level = self._check_isolation_level(value)
        self._check()
        if level is None and self._autocommit == LEGACY_TRANSACTION_CONTROL and self._in_txn:
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
                self._exec_text("COMMIT", may_commit=True)
                self._lose_transaction()
            elif value is False and not self._in_txn:
                self._begin(None)
            self._autocommit = value

    @property
    def total_changes(self) -> int:
        """Rows changed through this connection's server session since it opened."""
        self._check()
        with self._lock:
            batches = self._query(QuerySqlRequest(0, "SELECT total_changes()"), retry_unknown=True)
        return int(batches[0].rows[0][0])  # type: ignore[arg-type]

    def cursor(self, factory: Callable[[Connection], C] | None = _DEFAULT_FACTORY) -> Cursor:
        """Return a new cursor (of ``factory`` if given)."""
        self._check()
        if factory is _DEFAULT_FACTORY:
            return Cursor(self)
        if factory is None:
            raise TypeError("'NoneType' object is not callable")
        cur = factory(self)
        # The object's real type, not what its __class__ claims (as sqlite3 checks).
        if not issubclass(type(cur), Cursor):
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
                self._exec_text("COMMIT", may_commit=True)
                self._lose_transaction()
            if self._autocommit is False:
                self._begin(None)

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
                self._begin(None)

    def close(self) -> None:
        """Close the connection; an open transaction is rolled back by the server."""
        if not self._initialized:
            raise ProgrammingError("Base Connection.__init__ not called.")
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
            self._run_close_callbacks()

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

    def getlimit(self, category: int, /) -> int:
        """Return the server session's run-time limit ``category`` (``SQLITE_LIMIT_*``).

        Needs a dqlitepy server, which offers ``sqlite3_limit()`` to its clients
        as the SQL function ``dqlitepy_limit``; C dqlite has no way to reach it.

        Raises:
            ProgrammingError: ``category`` is not a limit.
            NotSupportedError: the server is C dqlite.
        """
        self._check()
        category = operator.index(category)
        with self._lock:
            value: int = self._run(lambda p: self._limit_on(p, category, -1), retry_unknown=True)
        return value

    def setlimit(self, category: int, limit: int, /) -> int:
        """Set a run-time limit of the server session; returns the previous value.

        A negative ``limit`` changes nothing.  SQLite caps the value at its
        compile-time maximum.  The limit is set again on the session of a new
        leader after a failover.

        Raises:
            ProgrammingError: ``category`` is not a limit.
            NotSupportedError: the server is C dqlite.
        """
        self._check()
        category = operator.index(category)
        limit = operator.index(limit)
        with self._lock:
            previous: int = self._run(
                lambda p: self._limit_on(p, category, limit), retry_unknown=True
            )
            if limit >= 0:
                self._limits[category] = limit
        return previous

    def _limit_on(self, proto: Protocol, category: int, limit: int) -> int:
        """Call ``sqlite3_limit(category, limit)`` in the server session behind ``proto``."""
        if not (_INT32_MIN <= category <= _INT32_MAX and _INT32_MIN <= limit <= _INT32_MAX):
            raise OverflowError("Python int too large to convert to C int")
        request = QuerySqlRequest(0, _LIMIT_SQL, ValueTuple.of([category, limit]))
        try:
            batches = list(proto.query(request, self._request_timeout))
        except OperationalError as exc:
            if _no_such_function(exc, _LIMIT_FUNCTION):
                raise NotSupportedError(
                    "getlimit() and setlimit() need a dqlitepy server: "
                    "C dqlite gives clients no access to sqlite3_limit()"
                ) from None
            raise
        previous = int(batches[0].rows[0][0])  # type: ignore[arg-type]
        if previous < 0:
            raise ProgrammingError("'category' is out of bounds")
        if category == SQLITE_LIMIT_SQL_LENGTH:
            self._sql_length_limit = previous if limit < 0 else None
        return previous

    def _check_sql(self, sql: str) -> None:
        """Refuse SQL that sqlite3 would refuse before preparing it."""
        if not sql.isascii():
            sql.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError
        limit = self._sql_length_limit
        if self._sql_length_limit is None and SQLITE_LIMIT_SQL_LENGTH in self._limits:
            # Learn the effective limit (SQLite caps what setlimit() asked for).
            self.getlimit(SQLITE_LIMIT_SQL_LENGTH)
            limit = self._sql_length_limit
        if limit is not None and len(sql) > limit // 4 and len(sql.encode("utf-8")) > limit:
            raise DataError("query string is too large")

    def __call__(self, *args: Any, **kwargs: Any) -> Statement:
        """``conn(sql)``: compile ``sql`` on the server and return the (opaque) statement.

        ``sqlite3`` has this undocumented shortcut too; it shows whether SQL is
        valid without running it.  The statement is finalized at once.
        """
        self._check_open()  # before the arguments, as in sqlite3
        self._check()
        if kwargs:
            raise TypeError("Connection() takes no keyword arguments")
        if len(args) != 1:
            raise TypeError(f"Connection() takes exactly 1 argument ({len(args)} given)")
        sql = args[0]
        if not isinstance(sql, str):
            raise TypeError(f"argument 1 must be str, not {type(sql).__name__}")
        with self._lock:
            self._check_sql(sql)
            if "\x00" in sql:
                raise ProgrammingError("the query contains a null character")
            parsed = parse(sql)
            if has_more_statements(parsed.tail):
                raise ProgrammingError("You can only execute one statement at a time.")
            if parsed.is_empty:
                return Statement._make()  # nothing to compile, as in sqlite3
            timeout = self._request_timeout

            def compile_on(proto: Protocol) -> None:
                stmt: StmtResponse = proto.call(PrepareRequest(0, sql), StmtResponse, timeout)
                proto.call(FinalizeRequest(0, stmt.stmt_id), EmptyResponse, timeout)

            self._run(compile_on, retry_unknown=True)
        return Statement._make()

    def _not_over_the_wire(self, what: str) -> _errors.NotSupportedError:
        return _errors.NotSupportedError(
            f"{what} is not supported: dqlite runs SQL on the cluster's leader, "
            "which cannot call back into this process"
        )

    def create_aggregate(self, name: str, n_arg: int, aggregate_class: Any) -> None:
        """Not supported over a network connection."""
        self._check()  # misuse is reported first, as by sqlite3
        raise self._not_over_the_wire("create_aggregate()")

    def create_window_function(self, name: str, num_params: int, aggregate_class: Any) -> None:
        """Not supported over a network connection."""
        self._check()  # misuse is reported first, as by sqlite3
        raise self._not_over_the_wire("create_window_function()")

    def create_collation(self, name: str, callable: Any, /) -> None:
        """Not supported over a network connection."""
        self._check()  # misuse is reported first, as by sqlite3
        raise self._not_over_the_wire("create_collation()")

    def set_authorizer(self, authorizer_callback: Any) -> None:
        """Not supported over a network connection."""
        self._check()  # misuse is reported first, as by sqlite3
        raise self._not_over_the_wire("set_authorizer()")

    def set_progress_handler(self, progress_handler: Any, n: int) -> None:
        """Not supported over a network connection."""
        self._check()  # misuse is reported first, as by sqlite3
        raise self._not_over_the_wire("set_progress_handler()")

    def enable_load_extension(self, enabled: bool, /) -> None:
        """Not supported: extensions would load into the server."""
        self._check()  # misuse is reported first, as by sqlite3
        raise NotSupportedError("loading extensions is not supported by dqlite")

    def load_extension(self, name: str, /, **kwargs: Any) -> None:
        """Not supported: extensions would load into the server."""
        self._check()  # misuse is reported first, as by sqlite3
        raise NotSupportedError("loading extensions is not supported by dqlite")

    def blobopen(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: the protocol has no incremental blob I/O."""
        self._check()  # misuse is reported first, as by sqlite3
        raise NotSupportedError("blobopen() is not supported: the dqlite protocol has no blob I/O")

    def backup(self, target: Any, **kwargs: Any) -> None:
        """Not supported: use :meth:`dqlitepy.Client.dump` to fetch a database's files."""
        self._check()  # misuse is reported first, as by sqlite3
        raise NotSupportedError("backup() is not supported; use dqlitepy.Client.dump()")

    def serialize(self, **kwargs: Any) -> bytes:
        """Not supported: use :meth:`dqlitepy.Client.dump`."""
        self._check()  # misuse is reported first, as by sqlite3
        raise NotSupportedError("serialize() is not supported; use dqlitepy.Client.dump()")

    def deserialize(self, data: bytes, /, **kwargs: Any) -> None:
        """Not supported: a replicated database cannot be replaced from one client."""
        self._check()  # misuse is reported first, as by sqlite3
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
    #: True once ``__init__`` has run; sqlite3 refuses every operation before.
    _initialized = False
    #: True while a method runs code that may call back into Python (adapters,
    #: converters, parameter iterators): sqlite3 refuses recursive use then.
    _locked = False

    def __init__(self, connection: Connection, /) -> None:
        if self._locked:
            raise ProgrammingError(_RECURSIVE_USE)
        if not issubclass(type(connection), Connection):
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
        self._columns: Sequence[str] = ()
        self._rows: list[tuple[Value, ...]] = []
        self._row_types: list[tuple[int, ...]] = []
        self._converters: list[Callable[[bytes], Any] | None] = []
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
    def _in_use(self) -> Iterator[Connection]:
        """Check the cursor, then hold it (and its connection) for one operation."""
        conn = self._check()
        self._locked = True
        try:
            with conn._lock:
                yield conn
        finally:
            self._locked = False

    def _reset(self) -> None:
        self.description = None
        self._columns = ()
        self._rows = []
        self._row_types = []
        self._converters = []
        self._pos = 0

    def _set_columns(self, columns: Sequence[str], decltypes: Sequence[str | None] | None) -> None:
        detect = self.connection._detect_types
        names: list[str] = []
        convs: list[Callable[[bytes], Any] | None] = []
        for i, column in enumerate(columns):
            conv = None
            name = column
            if detect & PARSE_COLNAMES:
                # The converter named by the last "[" before the first "]" after it;
                # the name ends before the first "[" (and one blank before it).
                type_start = -1
                for pos, char in enumerate(column):
                    if char == "[":
                        type_start = pos + 1
                    elif char == "]" and type_start >= 0:
                        conv = converters.get(column[type_start:pos].upper())
                        break
                open_at = column.find("[")
                if open_at >= 0:
                    if column[open_at - 1 : open_at] == " ":
                        open_at -= 1
                    name = column[:open_at]
            if conv is None and decltypes is not None and decltypes[i]:
                # "INTEGER NOT NULL" is "INTEGER", "NUMBER(10)" is "NUMBER".
                decltype = _DECLTYPE_WORD.match(decltypes[i] or "")
                if decltype is not None:
                    conv = converters.get(decltype.group().upper())
            names.append(name)
            convs.append(conv)
        self._columns = tuple(columns)
        self.description = tuple((n, None, None, None, None, None, None) for n in names)
        self._converters = convs if any(c is not None for c in convs) else []

    def _prepare(self, sql: object, parameters: Any) -> tuple[ParsedSQL, ValueTuple]:
        if not isinstance(sql, str):
            raise TypeError(f"execute() argument 1 must be str, not {type(sql).__name__}")
        self.connection._check_sql(sql)
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
        """Run one statement; ``self.lastrowid`` follows the server session (as in sqlite3)."""
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
                conn._note_statement(parsed)
                self._take_rows(batches, sql)
                if parsed.is_dml:
                    # DML ... RETURNING yields one row per changed row, and may
                    # have inserted: ask for the rowid the ROWS response lacks.
                    self.rowcount = len(self._rows)
                    conn._last_insert_rowid = conn._ask_last_insert_rowid()
                self.lastrowid = conn._last_insert_rowid
                return
        keyword = parsed.keyword
        # A transaction opened outside one dies with its session, so a lost
        # reply to it is harmless; a COMMIT (or what commits as one) that lost
        # its reply may have committed.
        opens = keyword in ("BEGIN", "SAVEPOINT") and not conn._in_txn
        commits = keyword in ("COMMIT", "END") or (keyword == "RELEASE" and conn._txn_by_savepoint)
        result: ResultResponse = conn._with_busy_retry(
            lambda: conn._call(
                ExecSqlRequest(0, sql, params),
                ResultResponse,
                retry_unknown=opens,
                may_commit=commits,
            )
        )
        conn._note_statement(parsed)
        conn._last_insert_rowid = result.last_insert_id
        self.rowcount = result.rows_affected if parsed.is_dml else -1
        self.lastrowid = result.last_insert_id

    def _take_rows(self, batches: list[RowsResponse], sql: str) -> None:
        rows: list[tuple[Value, ...]] = []
        types: list[tuple[int, ...]] = []
        for batch in batches:
            rows.extend(batch.rows)
            types.extend(batch.row_types)
        columns = batches[0].columns if batches else ()
        if columns:
            decltypes = None
            if rows and self.connection._detect_types & PARSE_DECLTYPES:
                decltypes = self.connection._decltypes(sql, len(columns))
            self._set_columns(columns, decltypes)
        self._rows = rows
        self._row_types = types

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """Execute one SQL statement with qmark or named parameters."""
        with self._in_use() as conn:
            self._reset()
            self.rowcount = -1
            parsed, params = self._prepare(sql, parameters)
            if parsed.is_empty:
                return self
            try:
                self._before(parsed)
                self._execute_one(parsed, params)
            except Error as exc:
                conn._after_failure(exc)
                raise
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Cursor:
        """Run one DML statement once per parameter set, as one prepared statement."""
        if not isinstance(sql, str):
            raise TypeError(f"executemany() argument 1 must be str, not {type(sql).__name__}")
        with self._in_use() as conn:
            self._reset()
            self.rowcount = -1
            conn._check_sql(sql)
            if "\x00" in sql:
                raise ProgrammingError("the query contains a null character")
            parsed = parse(sql)
            if has_more_statements(parsed.tail):
                raise ProgrammingError("You can only execute one statement at a time.")
            if parsed.returns_rows_hint:
                raise ProgrammingError("executemany() can only execute DML statements.")
            iterator = iter(seq_of_parameters)
            total = 0 if parsed.is_dml else -1
            if parsed.is_empty:
                return self
            try:
                self._before(parsed)
                conn._traced(parsed.first)
                self._execute_many(conn, parsed, iterator, total)
            except Error as exc:
                conn._after_failure(exc)
                raise
            conn._note_statement(parsed)
        return self

    def _execute_many(
        self, conn: Connection, parsed: ParsedSQL, iterator: Iterator[Any], total: int
    ) -> None:
        # The statement as prepared in one server session: (protocol, statement id).
        prepared: list[tuple[Protocol, int]] = []
        timeout = conn._request_timeout

        def prepare_on(proto: Protocol) -> int:
            if not prepared or prepared[0][0] is not proto:
                # First use, or a new session after a failover that lost nothing
                # (outside a transaction, before this request was sent): the old
                # statement id died with the old session.
                stmt: StmtResponse = proto.call(
                    PrepareRequest(0, parsed.first), StmtResponse, timeout
                )
                prepared[:] = [(proto, stmt.stmt_id)]
            return prepared[0][1]

        def exec_on(proto: Protocol, params: ValueTuple) -> ResultResponse:
            try:
                stmt_id = prepare_on(proto)
            except ConnectionLostError as exc:
                # Only a PREPARE was lost, which changes nothing: the EXEC was
                # never sent, so it may be sent to the next leader.
                raise ConnectionLostError(str(exc), request_sent=False) from exc
            request = ExecRequest(0, stmt_id, params)
            result: ResultResponse = proto.call(request, ResultResponse, timeout)
            return result

        # Prepared before the first parameter set is read, so that bad SQL fails
        # even with no parameters, as in sqlite3.
        conn._run(prepare_on, retry_unknown=True)
        try:
            for parameters in iterator:
                params = conn._params(parsed, parameters)
                result: ResultResponse = conn._with_busy_retry(
                    lambda params=params: conn._run(  # type: ignore[misc]
                        lambda p: exec_on(p, params)
                    )
                )
                conn._last_insert_rowid = result.last_insert_id
                if parsed.is_dml:
                    total += result.rows_affected
                self.rowcount = total
        finally:
            if prepared and conn._proto is prepared[0][0] and not prepared[0][0].closed:
                with contextlib.suppress(Error):
                    prepared[0][0].call(FinalizeRequest(0, prepared[0][1]), EmptyResponse, timeout)
        self.rowcount = total

    def executescript(self, sql_script: str, /) -> Cursor:
        """Commit any open transaction, then run every statement of the script."""
        if not isinstance(sql_script, str):
            raise TypeError(
                f"executescript() argument must be str, not {type(sql_script).__name__}"
            )
        with self._in_use() as conn:
            conn._check_sql(sql_script)
            if "\x00" in sql_script:
                raise ValueError("embedded null character")
            self._reset()
            if conn._autocommit == LEGACY_TRANSACTION_CONTROL and conn._in_txn:
                conn._exec_text("COMMIT", may_commit=True)
                conn._lose_transaction()
            # sqlite3 leaves rowcount and lastrowid as they were.
            rowcount, lastrowid = self.rowcount, self.lastrowid
            try:
                for statement in split_statements(sql_script):
                    parsed = parse(statement)
                    if parsed.is_empty:
                        continue
                    self._execute_one(parsed, ValueTuple())
            except Error as exc:
                conn._after_failure(exc)
                raise
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
            if conv is not None:
                # As sqlite3: NULL and empty values (no blob pointer) give None.
                raw = _as_bytes(value) if value is not None else b""
                out.append(conv(raw) if raw else None)
            elif isinstance(value, str):
                if text_factory is str:
                    if not value.isascii():
                        self._check_utf8(value, i)
                    out.append(value)
                else:
                    raw = value.encode("utf-8", "surrogateescape")
                    out.append(raw if text_factory is bytes else text_factory(raw))
            else:
                out.append(value)
        return tuple(out)

    def _check_utf8(self, value: str, column: int) -> None:
        # Text arrives decoded with surrogateescape: TEXT that is not UTF-8 keeps
        # its bytes as lone surrogates, which only text_factory can accept.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "surrogateescape")
            name = self._columns[column] if column < len(self._columns) else str(column)
            raise OperationalError(
                f"Could not decode to UTF-8 column '{name}' with text "
                f"'{raw.decode('utf-8', 'replace')}'"
            ) from None

    def _next_row(self) -> Any | None:
        if self._pos >= len(self._rows):
            return None
        i = self._pos
        self._pos += 1
        # Converters and text factories are user code: the cursor is in use.
        self._locked = True
        try:
            row = self._convert(self._rows[i], self._row_types[i])
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


class Statement:
    """What ``conn(sql)`` returns: a statement the server compiled (``sqlite3.Statement``).

    Opaque, as in ``sqlite3``, and not to be created directly.
    """

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Statement:
        raise TypeError(f"cannot create '{cls.__module__}.{cls.__name__}' instances")

    @classmethod
    def _make(cls) -> Statement:
        statement: Statement = object.__new__(cls)
        return statement


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
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ssl: _ssl.SSLContext | None = None,
) -> Connection:
    """Open a connection to a database of a dqlite cluster.

    Args:
        database: the database name, or a ``dqlite://h1:p1,h2:p2/name`` URL.
        timeout: how long a statement waits for a locked database; also how
            long to keep trying while every server refuses the connection.
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
        max_message_size: the largest request body sent; a statement or value
            that would make a bigger one raises ``DataError`` before anything is
            sent (a dqlitepy server refuses messages over 64 MiB by default).
        ssl: connect with TLS using this context (e.g. from
            :func:`dqlitepy.client.tls.client_context`); it wins over a URL's
            ``tls*`` parameters.

    Raises:
        ProgrammingError: ``database`` is a URL that is not a valid dqlite URL,
            or a server address is invalid.
        NoLeaderError: no leader could be reached within ``leader_timeout``, or
            every server refused the connection for ``timeout``.
        OperationalError: the database could not be opened.
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
        max_message_size=max_message_size,
        ssl=ssl,
    )
