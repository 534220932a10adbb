"""The asyncio connection: :func:`connect` and :class:`Connection`, shaped like aiosqlite's.

A :class:`Connection` holds the same :class:`~dqlitepy.client.session.Session`
as a blocking :class:`dqlitepy.Connection` (the same leader discovery,
failover, transaction and error rules, written once as generators) and runs
its operations with the asyncio waiter (:mod:`dqlitepy.aio.waiting`): no
thread, no blocking call on the loop.  An :class:`asyncio.Lock` serialises the
tasks that share a connection, as a connection serves one request at a time.

Setting ``isolation_level`` or ``autocommit`` may need a request (``sqlite3``
commits or begins then): a property setter cannot wait, so it raises
``ProgrammingError`` in that case and :meth:`Connection.set_isolation_level` /
:meth:`Connection.set_autocommit` do it (psycopg's rule for its async
connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import os
import ssl as _ssl
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from ..client.connection import (
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_LEADER_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    NO_BACKUP,
    NO_EXTENSIONS,
    ConnectionErrors,
    not_over_the_wire,
)
from ..client.dump import Query, dump_steps
from ..client.errors import NotSupportedError, ProgrammingError
from ..client.failover import Settings
from ..client.needs import Gen
from ..client.session import Session
from ..client.transaction import (
    LEGACY_TRANSACTION_CONTROL,
    Transaction,
    check_autocommit,
    check_isolation_level,
)
from ..client.url import resolve_target
from ..wire import DEFAULT_MAX_MESSAGE_SIZE
from .cursor import Cursor
from .waiting import wait

__all__ = ["Connection", "connect"]

T = TypeVar("T")
A = TypeVar("A")

_NEEDS_AWAIT = "{what} would send a request: use 'await conn.{method}(...)' instead"


class Connection(ConnectionErrors):
    """An asyncio connection to one database of a dqlite cluster.

    Made by :func:`connect`.  ``async with`` closes it at the end (as
    aiosqlite's does).  The exception classes are attributes too
    (``conn.Error`` …), as in ``sqlite3``.
    """

    def __init__(self, session: Session, on_close: Callable[[], None] | None = None) -> None:
        self._session = session
        self._on_close = on_close
        self._closed = False
        self._lock = asyncio.Lock()
        #: Called with the cursor and each row (``sqlite3.Row`` works), as in sqlite3.
        self.row_factory: Callable[[Any, tuple[Any, ...]], Any] | None = None
        #: Turns TEXT values into Python objects.
        self.text_factory: Any = str

    # ------------------------------------------------------------ the machinery

    def _checked_session(self) -> Session:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed database.")
        return self._session

    async def _run(self, make: Callable[[], Gen[T]]) -> T:
        """Run the generator ``make()`` returns, alone on the connection."""
        self._checked_session()
        async with self._lock:
            self._checked_session()  # closed while this task waited for the lock
            return await wait(make())

    # --------------------------------------------------------------- properties

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open on the server."""
        return self._checked_session().txn.active

    @property
    def isolation_level(self) -> str | None:
        """The ``BEGIN`` flavour of implicit transactions; None is autocommit."""
        return self._checked_session().txn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        level = check_isolation_level(value)
        txn = self._checked_session().txn
        if level is None and txn.legacy and txn.active:
            raise ProgrammingError(
                _NEEDS_AWAIT.format(
                    what="ending the open transaction", method="set_isolation_level"
                )
            )
        txn.isolation_level = level

    async def set_isolation_level(self, value: str | None) -> None:
        """Set ``isolation_level``; None commits an open transaction first, as in sqlite3."""
        level = check_isolation_level(value)
        session = self._checked_session()
        if level is None and session.txn.legacy and session.txn.active:
            await self._run(session.connection_commit)
        session.txn.isolation_level = level

    @property
    def autocommit(self) -> bool | int:
        """Python 3.12's transaction control: True, False or LEGACY_TRANSACTION_CONTROL."""
        return self._checked_session().txn.autocommit

    @autocommit.setter
    def autocommit(self, value: bool | int) -> None:
        check_autocommit(value)
        txn = self._checked_session().txn
        if (value is True and txn.active) or (value is False and not txn.active):
            raise ProgrammingError(
                _NEEDS_AWAIT.format(what="changing autocommit now", method="set_autocommit")
            )
        txn.autocommit = value

    async def set_autocommit(self, value: bool | int) -> None:
        """Set ``autocommit``, committing or beginning as ``sqlite3`` does."""
        check_autocommit(value)
        session = self._checked_session()
        await self._run(lambda: session.set_autocommit(value))

    # ---------------------------------------------------------------- statements

    def cursor(self) -> _Opening[Cursor]:
        """A new cursor: ``await conn.cursor()`` or ``async with conn.cursor() as cur``."""
        return _Opening(self._cursor())

    async def _cursor(self) -> Cursor:
        self._checked_session()
        return Cursor(self)

    def execute(self, sql: str, parameters: Any = (), /) -> _Opening[Cursor]:
        """Execute one statement on a new cursor and return it (awaitable or ``async with``)."""
        return _Opening(self._execute(sql, parameters))

    async def _execute(self, sql: str, parameters: Any) -> Cursor:
        return await Cursor(self).execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> _Opening[Cursor]:
        """Run one DML statement once per parameter set on a new cursor."""
        return _Opening(self._executemany(sql, parameters))

    async def _executemany(self, sql: str, parameters: Iterable[Any]) -> Cursor:
        return await Cursor(self).executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> _Opening[Cursor]:
        """Run every statement of a script on a new cursor."""
        return _Opening(self._executescript(sql_script))

    async def _executescript(self, sql_script: str) -> Cursor:
        return await Cursor(self).executescript(sql_script)

    async def execute_fetchall(self, sql: str, parameters: Any = (), /) -> list[Any]:
        """Execute one statement and return all its rows (aiosqlite's shortcut)."""
        cursor = await self._execute(sql, parameters)
        return await cursor.fetchall()

    async def execute_insert(self, sql: str, parameters: Any = (), /) -> Any:
        """Execute one statement; return the row of ``last_insert_rowid()`` (aiosqlite's).

        As in aiosqlite, the row is ``SELECT last_insert_rowid()``'s, read in
        the same turn on the connection (no other task's statement between),
        and made by ``row_factory``.
        """
        if parameters is None:
            parameters = ()
        cursor = Cursor(self)
        session = self._checked_session()

        def execute_then_ask() -> Gen[None]:
            yield from cursor._run_execute(session, sql, parameters)
            yield from cursor._run_execute(session, "SELECT last_insert_rowid()", ())

        await self._run(execute_then_ask)
        return await cursor.fetchone()

    async def commit(self) -> None:
        """Commit the open transaction, if any."""
        session = self._checked_session()
        await self._run(session.connection_commit)

    async def rollback(self) -> None:
        """Roll back the open transaction, if any."""
        session = self._checked_session()
        await self._run(session.connection_rollback)

    async def total_changes(self) -> int:
        """Rows changed through this connection's server session since it opened."""
        session = self._checked_session()
        return await self._run(session.total_changes)

    async def set_trace_callback(self, trace_callback: Callable[[str], object] | None) -> None:
        """Call ``trace_callback`` with the text of every SQL statement sent."""
        self._checked_session().trace = trace_callback

    async def create_function(
        self,
        name: str,
        num_params: int,
        func: Callable[..., Any] | None,
        deterministic: bool = False,
    ) -> None:
        """Record a user function, as :meth:`dqlitepy.Connection.create_function` does.

        The function runs nowhere: SQL is executed on the leader, which cannot
        call back into this process, so SQL that uses it fails there with
        ``no such function``.  It is accepted (not refused) because libraries
        such as SQLAlchemy register functions on every new connection.
        """
        self._checked_session().record_function(name, num_params, func)

    async def getlimit(self, category: int, /) -> int:
        """The server session's run-time limit ``category`` (``SQLITE_LIMIT_*``).

        As :meth:`dqlitepy.Connection.getlimit`: needs a dqlitepy server.

        Raises:
            ProgrammingError: ``category`` is not a limit.
            NotSupportedError: the server is C dqlite.
        """
        session = self._checked_session()
        category = operator.index(category)
        return await self._run(lambda: session.getlimit(category))

    async def setlimit(self, category: int, limit: int, /) -> int:
        """Set a run-time limit of the server session; return the previous value.

        As :meth:`dqlitepy.Connection.setlimit`: a negative ``limit`` changes
        nothing, and the limit is set again on a new leader after a failover.
        """
        session = self._checked_session()
        category = operator.index(category)
        limit = operator.index(limit)
        return await self._run(lambda: session.setlimit(category, limit))

    def iterdump(self) -> AsyncIterator[str]:
        """``async for line in conn.iterdump()``: the SQL text that recreates the database.

        The same text as ``dqlitepy.Connection.iterdump()`` (and ``sqlite3``'s).
        """
        self._checked_session()
        return self._iterdump()

    async def _iterdump(self) -> AsyncIterator[str]:
        cursor = Cursor(self)
        steps = dump_steps()
        answer: list[Any] | None = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration:
                return
            answer = None
            if isinstance(step, Query):
                answer = await (await cursor.execute(step.sql)).fetchall()
            else:
                yield step

    async def set_progress_handler(self, handler: Any, n: int) -> None:
        """Not supported over a network connection (as the blocking driver)."""
        self._checked_session()
        raise not_over_the_wire("set_progress_handler()")

    async def enable_load_extension(self, value: bool) -> None:
        """Not supported: extensions would load into the server."""
        self._checked_session()
        raise NotSupportedError(NO_EXTENSIONS)

    async def load_extension(self, path: str) -> None:
        """Not supported: extensions would load into the server."""
        self._checked_session()
        raise NotSupportedError(NO_EXTENSIONS)

    async def backup(self, target: Any, **kwargs: Any) -> None:
        """Not supported: use :meth:`dqlitepy.aio.Client.dump` to fetch a database's files."""
        self._checked_session()
        raise NotSupportedError(NO_BACKUP)

    async def interrupt(self) -> None:
        """Stop the query another task runs on this connection (``interrupted``).

        Writes are never interrupted: their outcome would be lost.
        """
        self._checked_session().interrupt()

    async def close(self) -> None:
        """Close the connection (with ``autocommit=False``, roll back first, as sqlite3 does)."""
        if self._closed:
            return
        async with self._lock:
            if self._closed:
                return
            try:
                await wait(self._session.close())
            finally:
                self._closed = True
                self._session.abandon()
                if self._on_close is not None:
                    self._on_close()

    def terminate(self) -> None:
        """Close the socket now, without waiting or sending anything (from any thread).

        What a pool does with a connection it gives up on: the server ends the
        session and rolls back its open transaction.  :meth:`close` is the
        orderly way.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._session.abandon()
        finally:
            if self._on_close is not None:
                self._on_close()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        # As the blocking connection's finalizer: close the socket, send nothing.
        if getattr(self, "_closed", True):
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: so is the socket
            self._session.abandon()


class _Opening(Coroutine[Any, Any, A]):
    """What ``connect()`` and ``execute()`` return: a coroutine (to await, or to hand to
    ``asyncio.create_task``), or an ``async with`` that closes the result at its end
    (aiosqlite's shape)."""

    __slots__ = ("_coro", "_result")

    def __init__(self, coro: Coroutine[Any, Any, A]) -> None:
        self._coro = coro
        self._result: A | None = None

    def __await__(self) -> Generator[Any, None, A]:
        return self._coro.__await__()

    def send(self, value: Any) -> Any:
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        return self._coro.throw(*args)

    def close(self) -> None:
        self._coro.close()

    async def __aenter__(self) -> A:
        self._result = await self._coro
        return self._result

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        result = self._result
        if result is not None:
            await result.close()  # type: ignore[attr-defined]


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
) -> _Opening[Connection]:
    """Open an asyncio connection: ``await connect(...)`` or ``async with connect(...) as conn``.

    The arguments are :func:`dqlitepy.connect`'s, and so are the sources of
    the servers (``servers=``, a ``dqlite://`` URL, ``DQLITEPY_SERVERS``, else
    the process's embedded node, started on first use without blocking the
    loop).  ``check_same_thread`` and ``cached_statements`` are accepted and
    ignored: a connection belongs to the event loop that opened it.
    ``factory`` is a :class:`Connection` subclass to make.

    Raises:
        ProgrammingError: ``database`` is a URL that is not a valid dqlite URL,
            or a server address is invalid.
        NoLeaderError: no leader could be reached within ``leader_timeout``, or
            every server refused the connection for ``timeout``.
        OperationalError: the database could not be opened.
    """
    del check_same_thread, cached_statements
    check_autocommit(autocommit)
    level = check_isolation_level(isolation_level)
    name, server_list, ssl = resolve_target(database, uri=uri, servers=servers, ssl=ssl)

    async def opening() -> Connection:
        on_close = None
        found = server_list
        database_name = name
        if found is None:
            found, database_name, on_close = await _embedded(name)
        try:
            settings = Settings.checked(
                database_name,
                found,
                timeout=timeout,
                leader_timeout=leader_timeout,
                attempt_timeout=attempt_timeout,
                request_timeout=request_timeout,
                max_message_size=max_message_size,
                ssl=ssl,
            )
            session = Session(settings, Transaction(autocommit, level), int(detect_types))
            try:
                # Fail fast, as sqlite3.connect does when it cannot open the file.
                await wait(session.start())
            except BaseException:
                session.abandon()
                raise
        except BaseException:
            if on_close is not None:
                on_close()
            raise
        return (factory or Connection)(session, on_close)

    return _Opening(opening())


async def _embedded(name: str) -> tuple[list[str], str, Callable[[], None] | None]:
    """The embedded node's address for ``name``, starting it in a worker thread if needed."""
    from .. import node  # the server loads only when a node starts

    starting = asyncio.ensure_future(asyncio.to_thread(node.default_target, name))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        # The thread goes on: what it opens for this connection (a private
        # :memory: database) is released once it is done.
        starting.add_done_callback(_release_target)
        raise


def _release_target(
    done: asyncio.Future[tuple[list[str], str, Callable[[], None] | None]],
) -> None:
    if done.cancelled() or done.exception() is not None:
        return
    on_close = done.result()[2]
    if on_close is not None:
        on_close()
