"""The asyncio cursor: ``dqlitepy``'s cursor with coroutines, shaped like aiosqlite's.

It is :class:`~dqlitepy.client.cursor.CursorBase` (the same state and the same
statement generators as the blocking :class:`dqlitepy.Cursor`) driven by the
asyncio waiter, under its connection's lock.  Results are read whole when a
statement runs, so the fetch methods never wait; they are coroutines all the
same, as in aiosqlite, so that code written for it ports unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..client.cursor import CursorBase, CursorSession
from ..client.errors import ProgrammingError

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Cursor"]


class Cursor(CursorBase):
    """A cursor over one asyncio connection (``await conn.cursor()``).

    Attributes:
        connection: the connection it belongs to.
        rowcount, lastrowid, description, arraysize, row_factory: as in
            ``sqlite3.Cursor``.
    """

    def __init__(self, connection: Connection, /) -> None:
        self.connection = connection
        self._init_state(connection.row_factory)

    def _row_source(self) -> Connection:
        return self.connection

    def _session(self) -> CursorSession:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        session: CursorSession = self.connection._checked_session()
        return session

    async def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """Execute one SQL statement with qmark or named parameters (None: none, as aiosqlite)."""
        if parameters is None:
            parameters = ()
        session = self._session()
        await self.connection._run(lambda: self._run_execute(session, sql, parameters))
        return self

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Cursor:
        """Run one DML statement once per parameter set, as one prepared statement."""
        if not isinstance(sql, str):
            raise TypeError(f"executemany() argument 1 must be str, not {type(sql).__name__}")
        session = self._session()
        await self.connection._run(lambda: self._run_executemany(session, sql, seq_of_parameters))
        return self

    async def executescript(self, sql_script: str, /) -> Cursor:
        """Commit any open transaction, then run every statement of the script."""
        if not isinstance(sql_script, str):
            raise TypeError(
                f"executescript() argument must be str, not {type(sql_script).__name__}"
            )
        session = self._session()
        await self.connection._run(lambda: self._run_executescript(session, sql_script))
        return self

    async def fetchone(self) -> Any:
        """Return the next row, or None when the result is exhausted."""
        self._session()
        return self._next_row()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        """Return up to ``size`` (default ``arraysize``) further rows."""
        self._session()
        return self._fetchmany(size)

    async def fetchall(self) -> list[Any]:
        """Return every remaining row."""
        self._session()
        return self._fetchall()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        self._session()
        row = self._next_row()
        if row is None:
            raise StopAsyncIteration
        return row

    async def close(self) -> None:
        """Close the cursor; further use raises ``ProgrammingError``."""
        self._closed = True
        self._reset()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def setinputsizes(self, sizes: Any, /) -> None:
        """Does nothing (PEP 249)."""

    def setoutputsize(self, size: Any, column: Any = None, /) -> None:
        """Does nothing (PEP 249)."""
