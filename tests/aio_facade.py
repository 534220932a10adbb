"""The asyncio driver behind the blocking driver's surface, for the shared driver tests.

``SyncOverAsync(await dqlitepy.aio.connect(...))`` offers what the driver tests use
of a ``dqlitepy.Connection`` and runs every call as a coroutine of the asyncio
connection on one event loop in a background thread (:func:`run`), so the same
test checks both drivers' behaviour.  Only the calling convention changes: the
facade adds no logic, so what a test sees is what ``dqlitepy.aio`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import dqlitepy.aio

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the shared background loop and return its result (or raise)."""
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="aio-facade", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coro, _loop).result()


async def _await(awaitable: Any) -> Any:
    return await awaitable


def connect(database: str, **kwargs: Any) -> SyncOverAsync:
    """``dqlitepy.aio.connect`` seen through the facade."""
    return SyncOverAsync(run(_await(dqlitepy.aio.connect(database, **kwargs))))


class SyncOverAsync:
    """A ``dqlitepy.aio.Connection`` with the blocking connection's calling convention."""

    def __init__(self, conn: dqlitepy.aio.Connection) -> None:
        self.aio = conn

    def __getattr__(self, name: str) -> Any:
        # The exception classes (conn.Error …) and anything plain.
        return getattr(self.aio, name)

    @property
    def in_transaction(self) -> bool:
        return self.aio.in_transaction

    @property
    def isolation_level(self) -> str | None:
        return self.aio.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        run(self.aio.set_isolation_level(value))

    @property
    def autocommit(self) -> bool | int:
        return self.aio.autocommit

    @autocommit.setter
    def autocommit(self, value: bool | int) -> None:
        run(self.aio.set_autocommit(value))

    @property
    def row_factory(self) -> Any:
        return self.aio.row_factory

    @row_factory.setter
    def row_factory(self, value: Any) -> None:
        self.aio.row_factory = value

    @property
    def text_factory(self) -> Any:
        return self.aio.text_factory

    @text_factory.setter
    def text_factory(self, value: Any) -> None:
        self.aio.text_factory = value

    @property
    def total_changes(self) -> int:
        return run(self.aio.total_changes())

    def cursor(self) -> FacadeCursor:
        return FacadeCursor(self, run(_await(self.aio.cursor())))

    def execute(self, sql: str, parameters: Any = (), /) -> FacadeCursor:
        return FacadeCursor(self, run(_await(self.aio.execute(sql, parameters))))

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> FacadeCursor:
        return FacadeCursor(self, run(_await(self.aio.executemany(sql, parameters))))

    def executescript(self, sql_script: str, /) -> FacadeCursor:
        return FacadeCursor(self, run(_await(self.aio.executescript(sql_script))))

    def commit(self) -> None:
        run(self.aio.commit())

    def rollback(self) -> None:
        run(self.aio.rollback())

    def close(self) -> None:
        run(self.aio.close())

    def set_trace_callback(self, trace_callback: Any) -> None:
        run(self.aio.set_trace_callback(trace_callback))

    def interrupt(self) -> None:
        run(self.aio.interrupt())

    def create_function(
        self, name: str, narg: int, func: Any, *, deterministic: bool = False
    ) -> None:
        run(self.aio.create_function(name, narg, func, deterministic))

    def getlimit(self, category: int, /) -> int:
        return run(self.aio.getlimit(category))

    def setlimit(self, category: int, limit: int, /) -> int:
        return run(self.aio.setlimit(category, limit))

    def iterdump(self) -> Iterator[str]:
        async def collect() -> list[str]:
            return [line async for line in self.aio.iterdump()]

        return iter(run(collect()))

    def set_progress_handler(self, handler: Any, n: int) -> None:
        run(self.aio.set_progress_handler(handler, n))

    def enable_load_extension(self, enabled: bool, /) -> None:
        run(self.aio.enable_load_extension(enabled))

    def load_extension(self, name: str, /) -> None:
        run(self.aio.load_extension(name))

    def backup(self, target: Any, **kwargs: Any) -> None:
        run(self.aio.backup(target, **kwargs))

    def __enter__(self) -> SyncOverAsync:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # sqlite3's meaning of `with conn:` (commit or roll back), which the tests check.
        if exc_type is None:
            self.commit()
        else:
            with contextlib.suppress(dqlitepy.aio.Error):
                self.rollback()


class FacadeCursor:
    """A ``dqlitepy.aio.Cursor`` with the blocking cursor's calling convention."""

    def __init__(self, connection: SyncOverAsync, cursor: dqlitepy.aio.Cursor) -> None:
        self.connection = connection
        self.aio = cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.aio, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("connection", "aio"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.aio, name, value)

    def execute(self, sql: str, parameters: Any = (), /) -> FacadeCursor:
        run(self.aio.execute(sql, parameters))
        return self

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> FacadeCursor:
        run(self.aio.executemany(sql, parameters))
        return self

    def executescript(self, sql_script: str, /) -> FacadeCursor:
        run(self.aio.executescript(sql_script))
        return self

    def fetchone(self) -> Any:
        return run(self.aio.fetchone())

    def fetchmany(self, size: int | None = None) -> list[Any]:
        return run(self.aio.fetchmany(size))

    def fetchall(self) -> list[Any]:
        return run(self.aio.fetchall())

    def __iter__(self) -> FacadeCursor:
        return self

    def __next__(self) -> Any:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def close(self) -> None:
        run(self.aio.close())
