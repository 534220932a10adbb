"""``sqlite+dqlitepy_async://``: the dialect for ``create_async_engine``, on ``dqlitepy.aio``.

``create_async_engine("sqlite+dqlitepy_async://h1:9001/app.db")`` (psycopg's naming:
one driver name for each API).  It is :class:`~.dialect.SQLiteDialect_dqlitepy`
(the same URLs, server version, isolation levels and disconnect rules, by
exception class and result code) with ``is_async``: SQLAlchemy runs its
synchronous core in a greenlet and hands each DBAPI call to the event loop
through its ``AsyncAdapt_dbapi_*`` adapters, here wrapped around
:mod:`dqlitepy.aio`'s connection and cursor, as its ``aiosqlite`` dialect
does.  Nothing blocks the loop and no thread is used.

A named database is pooled with ``AsyncAdaptedQueuePool``; ``:memory:`` (the
embedded node's private database) with a ``StaticPool``, one connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import pool
from sqlalchemy.connectors.asyncio import (
    AsyncAdapt_dbapi_connection,
    AsyncAdapt_dbapi_cursor,
    AsyncAdapt_dbapi_module,
    AsyncAdapt_dbapi_ss_cursor,
    AsyncAdapt_terminate,
)
from sqlalchemy.util.concurrency import await_

import dqlitepy
import dqlitepy.aio

from .dialect import SQLiteDialect_dqlitepy

if TYPE_CHECKING:
    from sqlalchemy.connectors.asyncio import AsyncIODBAPIConnection
    from sqlalchemy.engine import URL
    from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPIModule

__all__ = ["SQLiteDialect_dqlitepy_async", "dialect"]


class AsyncAdapt_dqlitepy_cursor(AsyncAdapt_dbapi_cursor):
    """SQLAlchemy's blocking view of a :class:`dqlitepy.aio.Cursor`."""

    __slots__ = ()


class AsyncAdapt_dqlitepy_ss_cursor(AsyncAdapt_dbapi_ss_cursor):
    """The same, for ``stream_results`` (the rows are read whole anyway)."""

    __slots__ = ()


class AsyncAdapt_dqlitepy_connection(AsyncAdapt_terminate, AsyncAdapt_dbapi_connection):
    """SQLAlchemy's blocking view of a :class:`dqlitepy.aio.Connection`.

    The transaction-control attributes the dialect sets may send a request
    (``sqlite3`` commits or begins), so their setters await the connection's
    ``set_isolation_level``/``set_autocommit``.
    """

    __slots__ = ()

    _cursor_cls = AsyncAdapt_dqlitepy_cursor
    _ss_cursor_cls = AsyncAdapt_dqlitepy_ss_cursor

    @property
    def _aio(self) -> dqlitepy.aio.Connection:
        return cast("dqlitepy.aio.Connection", self._connection)

    @property
    def isolation_level(self) -> str | None:
        return self._aio.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        try:
            await_(self._aio.set_isolation_level(value))
        except Exception as error:
            self._handle_exception(error)

    @property
    def autocommit(self) -> bool | int:
        return self._aio.autocommit

    @autocommit.setter
    def autocommit(self, value: bool | int) -> None:
        try:
            await_(self._aio.set_autocommit(value))
        except Exception as error:
            self._handle_exception(error)

    @property
    def in_transaction(self) -> bool:
        return self._aio.in_transaction

    def close(self) -> None:
        try:
            await_(self._aio.close())
        except Exception as error:
            self._handle_exception(error)

    async def _terminate_graceful_close(self) -> None:
        await self._aio.close()

    def _terminate_force_close(self) -> None:
        self._aio.terminate()


class AsyncAdapt_dqlitepy_dbapi(AsyncAdapt_dbapi_module):
    """:mod:`dqlitepy.aio` as the blocking DBAPI module SQLAlchemy's core expects."""

    def __init__(self) -> None:
        super().__init__(dqlitepy.aio, dbapi_module=dqlitepy)
        self.paramstyle = "qmark"
        for name in (
            "Warning",
            "Error",
            "InterfaceError",
            "DatabaseError",
            "DataError",
            "OperationalError",
            "IntegrityError",
            "InternalError",
            "ProgrammingError",
            "NotSupportedError",
            "NotLeaderError",
            "LeadershipLostError",
            "NoLeaderError",
            "ConnectionLostError",
            "LEGACY_TRANSACTION_CONTROL",
            "PARSE_COLNAMES",
            "PARSE_DECLTYPES",
            "Binary",
            "sqlite_version",
            "sqlite_version_info",
        ):
            setattr(self, name, getattr(dqlitepy, name))

    def connect(self, *args: Any, **kwargs: Any) -> AsyncAdapt_dqlitepy_connection:
        creator = kwargs.pop("async_creator_fn", None)
        opening = creator(*args, **kwargs) if creator else dqlitepy.aio.connect(*args, **kwargs)
        return AsyncAdapt_dqlitepy_connection(self, await_(opening))


class SQLiteDialect_dqlitepy_async(SQLiteDialect_dqlitepy):
    """The dqlitepy dialect for SQLAlchemy's asyncio extension."""

    driver = "dqlitepy_async"
    is_async = True
    has_terminate = True
    supports_statement_cache = True
    supports_server_side_cursors = True

    @classmethod
    def import_dbapi(cls) -> DBAPIModule:
        return cast("DBAPIModule", AsyncAdapt_dqlitepy_dbapi())

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        if cls._is_memory(url):
            return pool.StaticPool
        return pool.AsyncAdaptedQueuePool

    def get_driver_connection(self, connection: DBAPIConnection) -> AsyncIODBAPIConnection:
        return cast("AsyncIODBAPIConnection", connection._connection)

    def do_terminate(self, dbapi_connection: DBAPIConnection) -> None:
        dbapi_connection.terminate()


dialect = SQLiteDialect_dqlitepy_async
