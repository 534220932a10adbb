"""An asyncio connection pool: ``pool = await dqlitepy.aio.create_pool(url, size=16)``.

Theory of operation.  A :class:`Pool` holds at most ``size`` connections,
opened on demand with :func:`~dqlitepy.aio.connection.connect`'s arguments.
``async with pool.connection() as conn`` lends one to a task: an idle one if
there is one, else a new one while fewer than ``size`` exist, else the task
waits in line (first come, first served) until one is given back.  At the end
of the block the transaction is committed if the block succeeded and rolled
back if it raised (psycopg_pool's rule), so a connection always returns idle.

A connection is not checked when it is lent: the driver notices a dead server
session before its next request and opens one on the leader (``docs/driver.md``),
so a pooled connection survives a failover by itself.  It is *discarded*, and
its slot freed for a new one, when it comes back closed (by the task, or by a
cancellation of ``close()``), or when the commit or rollback that ends the block
fails: its state is then unknown, and the socket is closed without a request
(:meth:`~dqlitepy.aio.connection.Connection.terminate`).

Cancellation is safe at every await: a task cancelled while it waits in line
takes no connection and passes on one that was handed to it; one cancelled
while a connection opens frees the slot (the connect closes its socket); one
cancelled inside the block, or while it ends, discards the connection.

:meth:`Pool.close` closes the idle connections and refuses further loans
(``InterfaceError``, also for the tasks waiting in line); connections still lent
are closed as they come back.  The pool belongs to the event loop that uses it
first, as its connections do.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Generator
from types import TracebackType
from typing import Any

from ..client.errors import Error, InterfaceError, ProgrammingError
from .connection import Connection, connect

__all__ = ["Pool", "create_pool"]


class Pool:
    """Up to ``size`` asyncio connections to one database, lent to one task at a time.

    Made by :func:`create_pool`.  ``async with pool:`` closes it at the end.

    Args:
        database: what :func:`dqlitepy.aio.connect` takes (a ``dqlite://`` URL, or
            a name with ``servers=``, ``DQLITEPY_SERVERS`` or the embedded node).
        size: the most connections open at once.
        connect_kwargs: the other arguments of :func:`dqlitepy.aio.connect`.
    """

    def __init__(self, database: Any, size: int = 10, **connect_kwargs: Any) -> None:
        if not isinstance(size, int) or size < 1:
            raise ProgrammingError(f"a pool needs a size of at least 1, not {size!r}")
        self._database = database
        self._kwargs = connect_kwargs
        self._size = size
        self._idle: collections.deque[Connection] = collections.deque()
        # Connections open or opening, lent or idle: at most size.
        self._count = 0
        # The tasks waiting in line for a connection, woken in order.
        self._waiters: collections.deque[asyncio.Future[Connection | None]] = (
            collections.deque()
        )
        self._closed = False

    @property
    def size(self) -> int:
        """The most connections the pool opens."""
        return self._size

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    @property
    def idle(self) -> int:
        """How many open connections wait to be lent."""
        return len(self._idle)

    @property
    def open_connections(self) -> int:
        """How many connections exist (lent, idle or opening)."""
        return self._count

    def connection(self, timeout: float | None = None) -> _Loan:
        """Lend a connection for an ``async with`` block (``timeout``: to get one).

        The block's transaction is committed at its end, or rolled back if it
        raised.

        Raises:
            InterfaceError: the pool is closed.
            TimeoutError: no connection came free within ``timeout`` seconds.
        """
        return _Loan(self, timeout)

    async def acquire(self, timeout: float | None = None) -> Connection:
        """Take a connection out of the pool; give it back with :meth:`release`.

        :meth:`connection` does both; this is for code that cannot use a block.
        ``timeout`` bounds the wait in line (opening a connection is bounded by
        ``connect()``'s own timeouts).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            self._check_open()
            if self._idle:
                return self._idle.popleft()
            if self._count < self._size:
                return await self._open()
            conn = await self._wait_in_line(loop, deadline, timeout)
            if conn is not None:  # handed over by a task that gave it back
                return conn

    async def _open(self) -> Connection:
        self._count += 1
        try:
            conn = await connect(self._database, **self._kwargs)
        except BaseException:
            self._forget()
            raise
        if self._closed:  # closed while it opened
            self._forget()
            await _close_quietly(conn)
            self._check_open()
        return conn

    async def _wait_in_line(
        self, loop: asyncio.AbstractEventLoop, deadline: float | None, timeout: float | None
    ) -> Connection | None:
        """Wait for a turn: a connection handed over, or None (a slot freed, or closed)."""
        waiter: asyncio.Future[Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = None
        if deadline is not None:
            # A timer on the future, not wait_for: Python 3.11's wait_for can swallow
            # the caller's cancellation.
            timer = loop.call_at(deadline, _expire, waiter, timeout)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a turn it will not take (cancelled meanwhile): pass it on.
                handed = waiter.result()
                if handed is not None:
                    self._give_back(handed)
                else:
                    self._offer_slot()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def release(self, conn: Connection, *, failed: bool = False) -> None:
        """Give ``conn`` back: commit its transaction (roll back if ``failed``).

        A connection that is closed, or whose commit or rollback fails (or is
        cancelled), is discarded.
        """
        keep = False
        try:
            if not conn.closed:
                if conn.in_transaction and not failed:
                    await conn.commit()  # its failure is the block's, and is raised
                elif conn.in_transaction:
                    # The block's own error is what the task should see; a rollback
                    # that fails too (a lost connection) only discards the connection.
                    with contextlib.suppress(Error):
                        await conn.rollback()
                keep = not conn.closed and not conn.in_transaction
        finally:
            if keep and not self._closed:
                self._give_back(conn)
            else:
                self._forget()
                if not conn.closed:
                    if self._closed and keep:
                        await _close_quietly(conn)
                    else:
                        conn.terminate()

    def _give_back(self, conn: Connection) -> None:
        """Hand an idle ``conn`` to the first task in line, or keep it for the next one."""
        if self._closed:  # passed on by a task cancelled as the pool closed
            self._count -= 1
            conn.terminate()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _forget(self) -> None:
        """A connection is gone: its slot is free for a new one."""
        self._count -= 1
        self._offer_slot()

    def _offer_slot(self) -> None:
        """Wake the first task in line to open a connection in a free slot."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _check_open(self) -> None:
        if self._closed:
            raise InterfaceError("the connection pool is closed")

    async def close(self) -> None:
        """Close the idle connections; refuse further loans; close lent ones as they return."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # it wakes up to find the pool closed
        idle, self._idle = list(self._idle), collections.deque()
        self._count -= len(idle)
        for conn in idle:
            await _close_quietly(conn)

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._count}/{self._size} open"
        return f"<dqlitepy.aio.Pool {state}, {len(self._idle)} idle>"


def _expire(waiter: asyncio.Future[Connection | None], timeout: float | None) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no connection came free within {timeout:g}s"))


async def _close_quietly(conn: Connection) -> None:
    try:
        await conn.close()
    except Error:
        conn.terminate()


class _Loan:
    """What :meth:`Pool.connection` returns: ``async with pool.connection() as conn``."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Connection | None = None

    async def __aenter__(self) -> Connection:
        self._conn = await self._pool.acquire(self._timeout)
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.release(conn, failed=exc_type is not None)


class _Creating:
    """What :func:`create_pool` returns: ``await`` it, or ``async with`` it."""

    __slots__ = ("_pool",)

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def _open(self) -> Pool:
        # Fail fast, as connect() does: one connection is opened (and kept idle).
        try:
            await self._pool.release(await self._pool.acquire())
        except BaseException:
            await self._pool.close()
            raise
        return self._pool

    def __await__(self) -> Generator[Any, None, Pool]:
        return self._open().__await__()

    async def __aenter__(self) -> Pool:
        return await self._open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._pool.close()


def create_pool(database: Any, size: int = 10, **connect_kwargs: Any) -> _Creating:
    """Make a :class:`Pool` of up to ``size`` connections: ``await`` it or ``async with`` it.

    The arguments besides ``size`` are :func:`dqlitepy.aio.connect`'s.  One
    connection is opened at once, so that a wrong address or database fails
    here (and the pool is closed); the others open as tasks need them.

    Raises:
        ProgrammingError: ``size`` is below 1, or the arguments are invalid.
        NoLeaderError, OperationalError: as :func:`dqlitepy.aio.connect`.
    """
    return _Creating(Pool(database, size, **connect_kwargs))

