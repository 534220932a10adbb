"""The PEP 249 connection, shaped like the standard library's ``sqlite3.Connection``.

A :class:`Connection` talks to the cluster's leader over one wire connection
and opens one database there.  It is ``sqlite3``'s surface and checks
(initialised, same thread, open) over a :class:`~dqlitepy.client.session.Session`,
which runs the statements, follows the transaction
(:mod:`dqlitepy.client.transaction`) and keeps the session on the leader
(:mod:`dqlitepy.client.failover`).  Where the servers come from is
:mod:`dqlitepy.client.url`'s business.

Transactions follow ``sqlite3``'s rules: in the legacy mode (the default) a
``BEGIN`` is sent before the first INSERT/UPDATE/DELETE/REPLACE outside a
transaction; ``isolation_level=None`` is autocommit; ``autocommit=True/False``
behaves as in Python 3.12.
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ..wire import DEFAULT_MAX_MESSAGE_SIZE
from . import errors as _errors
from .cursor import Cursor
from .dump import iterdump
from .errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)
from .failover import Settings
from .session import Session
from .transaction import (
    LEGACY_TRANSACTION_CONTROL,
    Transaction,
    check_autocommit,
    check_isolation_level,
)
from .url import resolve_target
from .waiting import wait

if TYPE_CHECKING:
    import ssl as _ssl

__all__ = [
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_LEADER_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "NO_BACKUP",
    "NO_EXTENSIONS",
    "Connection",
    "ConnectionErrors",
    "Statement",
    "connect",
    "not_over_the_wire",
]

#: How long to keep looking for a leader before a call fails.
DEFAULT_LEADER_TIMEOUT = 30.0
#: The budget of one attempt through one node while looking for the leader.
DEFAULT_ATTEMPT_TIMEOUT = 2.0
#: The longest a single request may wait for its response.
DEFAULT_REQUEST_TIMEOUT = 60.0

_DEFAULT_FACTORY: Any = object()

C = TypeVar("C", bound=Cursor)

#: Why ``enable_load_extension()`` and ``load_extension()`` fail (both drivers).
NO_EXTENSIONS = "loading extensions is not supported by dqlite"
#: Why ``backup()`` fails (both drivers).
NO_BACKUP = "backup() is not supported; use dqlitepy.Client.dump()"


def not_over_the_wire(what: str) -> NotSupportedError:
    """The error of a ``sqlite3`` feature that would need the server to call this process."""
    return NotSupportedError(
        f"{what} is not supported: dqlite runs SQL on the cluster's leader, "
        "which cannot call back into this process"
    )


class ConnectionErrors:
    """The exception classes as attributes of a connection (``conn.Error`` …), as in sqlite3.

    Shared by the blocking and the asyncio connection.
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


class Connection(ConnectionErrors):
    """A connection to one database of a dqlite cluster (``sqlite3.Connection``-like).

    Use :func:`connect` to make one.  The exception classes are also available as
    attributes (``conn.Error`` …), as in ``sqlite3``.
    """

    #: True once ``__init__`` has succeeded; sqlite3 refuses every operation before.
    _initialized = False
    #: Everything below sqlite3's surface; what cursors use (see ``cursor.py``).
    _session: Session

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
        check_autocommit(autocommit)
        level = check_isolation_level(isolation_level)
        name, server_list, ssl = resolve_target(database, uri=uri, servers=servers, ssl=ssl)
        # Run once the connection is closed (the embedded node deletes a
        # private :memory: database this way).
        self._close_callbacks: list[Callable[[], None]] = []
        self._closed = True
        try:
            if server_list is None:
                server_list, name = self._default_servers(name)
            settings = Settings.checked(
                name,
                server_list,
                timeout=timeout,
                leader_timeout=leader_timeout,
                attempt_timeout=attempt_timeout,
                request_timeout=request_timeout,
                max_message_size=max_message_size,
                ssl=ssl,
            )
            self._session = Session(settings, Transaction(autocommit, level), int(detect_types))
            self._check_same_thread = bool(check_same_thread)
            self._thread_ident = threading.get_ident()
            self._closed = False
            self.row_factory: Callable[[Cursor, tuple[Any, ...]], Any] | None = None
            self.text_factory: Any = str
            # Fail fast, as sqlite3.connect does when it cannot open the file.
            with self._session.lock:
                wait(self._session.start())
        except BaseException:
            self._closed = True
            with contextlib.suppress(AttributeError):
                self._session.abandon()
            self._run_close_callbacks()
            raise
        self._initialized = True

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

    def _check_open(self) -> None:
        """sqlite3's pysqlite_check_connection: initialised and not closed."""
        if not self._initialized:
            raise ProgrammingError("Base Connection.__init__ not called.")
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed database.")

    def _check(self) -> None:
        """sqlite3's checks before any use: initialised, same thread, not closed."""
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

    # ---------------------------------------------------------- sqlite3 surface

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open on the server."""
        self._check()
        return self._session.txn.active

    @property
    def isolation_level(self) -> str | None:
        """The ``BEGIN`` flavour of implicit transactions; None is autocommit."""
        self._check_open()
        return self._session.txn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        level = check_isolation_level(value)
        self._check()
        txn = self._session.txn
        if level is None and txn.legacy and txn.active:
            self.commit()
        txn.isolation_level = level

    @property
    def autocommit(self) -> bool | int:
        """Python 3.12's transaction control: True, False or LEGACY_TRANSACTION_CONTROL."""
        self._check()
        return self._session.txn.autocommit

    @autocommit.setter
    def autocommit(self, value: bool | int) -> None:
        self._check()
        check_autocommit(value)
        session = self._session
        with session.lock:
            wait(session.set_autocommit(value))

    @property
    def total_changes(self) -> int:
        """Rows changed through this connection's server session since it opened."""
        self._check()
        with self._session.lock:
            return wait(self._session.total_changes())

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
        session = self._session
        with session.lock:
            wait(session.connection_commit())

    def rollback(self) -> None:
        """Roll back the open transaction, if any."""
        self._check()
        session = self._session
        with session.lock:
            wait(session.connection_rollback())

    def close(self) -> None:
        """Close the connection; an open transaction is rolled back by the server."""
        if not self._initialized:
            raise ProgrammingError("Base Connection.__init__ not called.")
        if self._check_same_thread and threading.get_ident() != self._thread_ident:
            self._check()
        with self._session.lock:
            if self._closed:
                return
            wait(self._session.close())
            self._closed = True
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
        # A finalizer sends no request (it may run on any thread, at any time):
        # it only closes the socket.  dqlite has no goodbye message, so that is
        # how every session ends, and the server rolls back what it left open.
        # No ResourceWarning: Python 3.11's sqlite3, the surface copied here,
        # gives none, and `with connect() as conn:` (which commits but does not
        # close, as in sqlite3) is common enough that one would be noise.
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._session.abandon()

    def set_trace_callback(self, trace_callback: Callable[[str], object] | None, /) -> None:
        """Call ``trace_callback`` with the text of every SQL statement sent."""
        self._check()
        self._session.trace = trace_callback

    def create_function(
        self,
        name: str,
        narg: int,
        func: Callable[..., Any] | None,
        *,
        deterministic: bool = False,
    ) -> None:
        """Record a user function (:meth:`Session.record_function`: it runs nowhere).

        The function runs nowhere: SQL is executed on the leader, which cannot
        call back into this process, so SQL that uses it fails there with
        ``no such function``.  It is accepted (not refused) because libraries
        such as SQLAlchemy register functions on every new connection.
        """
        self._check()
        self._session.record_function(name, narg, func)

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
        with self._session.lock:
            return wait(self._session.getlimit(category))

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
        with self._session.lock:
            return wait(self._session.setlimit(category, limit))

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
        with self._session.lock:
            parsed = self._session.parse_one(sql)
            if not parsed.is_empty:  # else nothing to compile, as in sqlite3
                wait(self._session.compile(sql))
        return Statement._make()

    def create_aggregate(self, name: str, n_arg: int, aggregate_class: Any) -> None:
        """Not supported over a network connection."""
        self._check()  # misuse is reported first, as by sqlite3
        raise not_over_the_wire("create_aggregate()")

    def create_window_function(self, name: str, num_params: int, aggregate_class: Any) -> None:
        """Not supported over a network connection."""
        self._check()  # misuse is reported first, as by sqlite3
        raise not_over_the_wire("create_window_function()")

    def create_collation(self, name: str, callable: Any, /) -> None:
        """Not supported over a network connection."""
        self._check()  # misuse is reported first, as by sqlite3
        raise not_over_the_wire("create_collation()")

    def set_authorizer(self, authorizer_callback: Any) -> None:
        """Not supported over a network connection."""
        self._check()  # misuse is reported first, as by sqlite3
        raise not_over_the_wire("set_authorizer()")

    def set_progress_handler(self, progress_handler: Any, n: int) -> None:
        """Not supported over a network connection."""
        self._check()  # misuse is reported first, as by sqlite3
        raise not_over_the_wire("set_progress_handler()")

    def enable_load_extension(self, enabled: bool, /) -> None:
        """Not supported: extensions would load into the server."""
        self._check()  # misuse is reported first, as by sqlite3
        raise NotSupportedError(NO_EXTENSIONS)

    def load_extension(self, name: str, /, **kwargs: Any) -> None:
        """Not supported: extensions would load into the server."""
        self._check()  # misuse is reported first, as by sqlite3
        raise NotSupportedError(NO_EXTENSIONS)

    def blobopen(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: the protocol has no incremental blob I/O."""
        self._check()  # misuse is reported first, as by sqlite3
        raise NotSupportedError("blobopen() is not supported: the dqlite protocol has no blob I/O")

    def backup(self, target: Any, **kwargs: Any) -> None:
        """Not supported: use :meth:`dqlitepy.Client.dump` to fetch a database's files."""
        self._check()  # misuse is reported first, as by sqlite3
        raise NotSupportedError(NO_BACKUP)

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
        self._session.interrupt()

    def iterdump(self) -> Iterator[str]:
        """Yield the SQL text that recreates the database, like ``sqlite3``'s ``iterdump``."""
        self._check()
        return iterdump(self)


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
