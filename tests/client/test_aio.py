"""dqlitepy.aio on its own terms: the asyncio surface, cancellation and timeouts, many tasks.

The shared driver tests (``both_drivers``) check that the asyncio driver follows the same
rules as the blocking one; these check what only asyncio has.  A cancelled or timed-out
request must leave its connection in step or closed, never half-read; a cancelled query is
interrupted on the server; a write whose outcome is unknown is never re-sent
(``docs/asyncio.md``, "Cancellation").  Each test runs its own event loop
(``asyncio.run``) against a real ``dqlitepy server``.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
from dqlitepy_server import DqlitepyServer
from waiting import busy_threads, wait_until

import dqlitepy
import dqlitepy.aio as aio

T = TypeVar("T")

# Counts to ten billion: minutes of work unless an INTERRUPT stops it.
_LONG_QUERY = (
    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 10000000000) "
    "SELECT count(*) FROM c"
)
#: Rows of the long write: a few seconds of work on a loaded machine.
_WRITE_ROWS = 2_000_000
_LONG_WRITE = (
    f"INSERT INTO big WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c "
    f"WHERE i < {_WRITE_ROWS}) SELECT i FROM c"
)


@pytest.fixture(scope="module")
def node() -> Iterator[DqlitepyServer]:
    """A node of this module's own: its tests keep one of its threads busy on purpose."""
    with DqlitepyServer() as server:
        yield server


def _run(main: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


async def _wait_running(node: DqlitepyServer) -> None:
    """Wait, off the loop, until a statement runs on ``node`` (one of its threads burns CPU)."""
    assert node.process is not None
    pid = node.process.pid
    await asyncio.to_thread(wait_until, lambda: busy_threads(pid) >= 1, "the statement to run")


async def _wait_idle(node: DqlitepyServer, within: float) -> None:
    assert node.process is not None
    pid = node.process.pid
    await asyncio.to_thread(
        wait_until, lambda: busy_threads(pid) == 0, "the node to stop working", within
    )


def _url(node: DqlitepyServer, database: str) -> str:
    return f"dqlite://{node.address}/{database}"


def test_the_aiosqlite_surface(node: DqlitepyServer) -> None:
    async def main() -> None:
        async with aio.connect(_url(node, "surface")) as conn:
            assert isinstance(conn, aio.Connection)
            await conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
            cur = await conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "a"), (2, "b")])
            assert cur.rowcount == 2
            assert conn.in_transaction  # sqlite3's implicit BEGIN
            await conn.commit()
            assert not conn.in_transaction
            async with conn.execute("SELECT k, v FROM t ORDER BY k") as cursor:
                assert [d[0] for d in cursor.description] == ["k", "v"]
                assert [row async for row in cursor] == [(1, "a"), (2, "b")]
            assert cursor.closed
            cur = await conn.execute("INSERT INTO t (v) VALUES (?)", ("c",))
            assert (cur.lastrowid, cur.rowcount) == (3, 1)
            await conn.rollback()
            assert await conn.execute_fetchall("SELECT count(*) FROM t") == [(2,)]
            conn.row_factory = aio.Row
            row = await (await conn.execute("SELECT k, v FROM t WHERE k = 2")).fetchone()
            assert dict(row) == {"k": 2, "v": "b"}
            conn.row_factory = None
            cur = await conn.cursor()
            await cur.executescript("CREATE TABLE u (x); INSERT INTO u VALUES (1);")
            assert await (await cur.execute("SELECT x FROM u")).fetchmany(5) == [(1,)]
            with pytest.raises(aio.IntegrityError):
                await conn.execute("INSERT INTO t VALUES (1, 'dup')")
        assert conn.closed
        with pytest.raises(aio.ProgrammingError, match="closed database"):
            await conn.execute("SELECT 1")

    _run(main)


#: What the blocking connection has and dqlitepy.aio leaves out (docs/asyncio.md, "The
#: surface"): sqlite3's, not aiosqlite's, and refused by the blocking driver anyway.
_LEFT_OUT = {
    "blobopen",
    "create_aggregate",
    "create_collation",
    "create_window_function",
    "deserialize",
    "serialize",
    "set_authorizer",
}


def test_the_asyncio_connection_has_the_blocking_ones_surface() -> None:
    """A name added to dqlitepy.Connection must be added to dqlitepy.aio's (or left out
    here and in the docs on purpose), so that the two surfaces cannot drift apart."""

    def public(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    assert public(dqlitepy.Connection) - public(aio.Connection) == _LEFT_OUT
    assert public(dqlitepy.Cursor) <= public(aio.Cursor)
    # What sends a request (or might) is a coroutine; the rest is plain.
    plain = {"cursor", "execute", "executemany", "executescript", "iterdump", "terminate"}
    for name in public(dqlitepy.Connection) & public(aio.Connection):
        member = getattr(aio.Connection, name)
        if callable(member) and not isinstance(member, type) and name not in plain:
            assert asyncio.iscoroutinefunction(member), name


def test_the_rest_of_aiosqlites_connection(node: DqlitepyServer) -> None:
    """execute_insert, iterdump as an async iterator, create_function, limits, None parameters."""

    async def main() -> None:
        async with aio.connect(_url(node, "rest")) as conn:
            await conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)", None)
            assert await conn.execute_insert("INSERT INTO t (v) VALUES (?)", ("a",)) == (1,)
            assert await conn.execute_insert("INSERT INTO t VALUES (7, 'b')") == (7,)
            conn.row_factory = aio.Row
            row = await conn.execute_insert("INSERT INTO t (v) VALUES ('c')", None)
            assert row.keys() == ["last_insert_rowid()"] and row[0] == 8
            conn.row_factory = None
            await conn.commit()
            dump = [line async for line in conn.iterdump()]
            blocking = dqlitepy.connect(_url(node, "rest"))
            try:
                assert dump == list(blocking.iterdump())
            finally:
                blocking.close()
            assert dump[0] == "BEGIN TRANSACTION;" and "INSERT INTO \"t\" VALUES(7,'b');" in dump
            await conn.create_function("twice", 1, lambda x: 2 * x, deterministic=True)
            with pytest.raises(aio.OperationalError, match="no such function: twice"):
                await conn.execute("SELECT twice(1)")
            await conn.create_function("twice", 1, None)
            variables = dqlitepy.SQLITE_LIMIT_VARIABLE_NUMBER
            default = await conn.getlimit(variables)
            assert await conn.setlimit(variables, 1) == default
            with pytest.raises(aio.OperationalError, match="too many SQL variables"):
                await conn.execute("SELECT ?, ?", (1, 2))
            assert await conn.setlimit(variables, -1) == 1 == await conn.getlimit(variables)
            assert issubclass(conn.OperationalError, conn.Error)
        with pytest.raises(aio.ProgrammingError, match="closed database"):
            conn.iterdump()
        with pytest.raises(aio.ProgrammingError, match="closed database"):
            await conn.getlimit(variables)

    _run(main)


def test_transaction_control_needs_await_only_when_it_sends(node: DqlitepyServer) -> None:
    async def main() -> None:
        async with aio.connect(_url(node, "control")) as conn:
            conn.isolation_level = "IMMEDIATE"  # nothing to send: a plain setter works
            await conn.execute("CREATE TABLE t (x)")
            await conn.execute("INSERT INTO t VALUES (1)")
            assert conn.in_transaction
            with pytest.raises(aio.ProgrammingError, match="set_isolation_level"):
                conn.isolation_level = None  # would COMMIT
            await conn.set_isolation_level(None)
            assert not conn.in_transaction and conn.isolation_level is None
            await conn.set_autocommit(False)
            assert conn.in_transaction and conn.autocommit is False
            await conn.execute("INSERT INTO t VALUES (2)")
            await conn.set_autocommit(True)
            assert not conn.in_transaction
            assert await conn.execute_fetchall("SELECT count(*) FROM t") == [(2,)]

    _run(main)


def test_the_admin_client(node: DqlitepyServer) -> None:
    async def main() -> None:
        async with aio.Client([node.address]) as client:
            leader = await client.leader()
            assert leader is not None and leader.address == node.address
            assert [m.address for m in await client.cluster()] == [node.address]
            assert (await client.describe()).weight >= 0
            async with aio.connect(_url(node, "dumped")) as conn:
                await conn.execute("CREATE TABLE t (x)")
                await conn.commit()
            assert "dumped" in await client.dump("dumped")

    _run(main)


def test_interrupt_from_another_task_stops_a_query(node: DqlitepyServer) -> None:
    async def main() -> None:
        async with aio.connect(_url(node, "interrupt")) as conn:

            async def interrupt_once_running() -> None:
                try:
                    await _wait_running(node)
                finally:
                    await conn.interrupt()

            started = time.monotonic()
            task = asyncio.create_task(interrupt_once_running())
            with pytest.raises(aio.OperationalError, match="interrupted"):
                await conn.execute(_LONG_QUERY)
            await task
            assert time.monotonic() - started < 10
            assert await conn.execute_fetchall("SELECT 42") == [(42,)]

    _run(main)


def test_a_timed_out_query_is_interrupted_and_the_connection_goes_on(
    node: DqlitepyServer,
) -> None:
    async def main() -> None:
        async with aio.connect(_url(node, "timeout_query")) as conn:
            await conn.execute("CREATE TABLE t (x)")
            await conn.commit()
            await conn.execute("INSERT INTO t VALUES (1)")  # a transaction is open
            session = conn._session.proto
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.execute(_LONG_QUERY), 1.0)
            # The query was interrupted on the server, and its response read to the end:
            # the same server session goes on, with its transaction.
            await _wait_idle(node, within=5)
            assert conn._session.proto is session and session is not None and session.idle
            assert conn.in_transaction
            assert await conn.execute_fetchall("SELECT 42") == [(42,)]
            await conn.commit()
        assert _count(node, "timeout_query", "t") == 1

    _run(main)


def test_a_cancelled_write_is_never_resent(node: DqlitepyServer) -> None:
    async def main() -> None:
        async with aio.connect(_url(node, "cancel_write"), isolation_level=None) as conn:
            await conn.execute("CREATE TABLE big (i)")
            task = asyncio.create_task(conn.execute(_LONG_WRITE))
            await _wait_running(node)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Its outcome is unknown: the connection was closed, not left half-read, and
            # the next statement runs on a new server session.
            proto = conn._session.proto
            assert proto is None or proto.closed
            assert await conn.execute_fetchall("SELECT 1") == [(1,)]
            await _wait_idle(node, within=30)
            (count,) = (await conn.execute_fetchall("SELECT count(*) FROM big"))[0]
            assert count in (0, _WRITE_ROWS)  # all or nothing, and never twice

    _run(main)


def test_a_cancelled_write_in_a_transaction_reports_the_transaction_lost(
    node: DqlitepyServer,
) -> None:
    async def main() -> None:
        async with aio.connect(_url(node, "cancel_txn")) as conn:
            await conn.execute("CREATE TABLE big (i)")
            await conn.commit()
            await conn.execute("INSERT INTO big VALUES (0)")
            task = asyncio.create_task(conn.execute(_LONG_WRITE))
            await _wait_running(node)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(aio.ConnectionLostError, match="rolled back") as info:
                await conn.execute("INSERT INTO big VALUES (1)")
            assert info.value.outcome == "rolled back"
            assert not conn.in_transaction
            await _wait_idle(node, within=30)
            assert await conn.execute_fetchall("SELECT count(*) FROM big") == [(0,)]

    _run(main)


@pytest.fixture(scope="module")
def silent_server() -> Iterator[str]:
    """A server that accepts connections and never answers (a hung node), in a process."""
    program = (
        "import socket\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1024)\n"
        "print(s.getsockname()[1], flush=True)\n"
        "held = []\n"
        "while True: held.append(s.accept())\n"
    )
    process = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield f"127.0.0.1:{int(process.stdout.readline())}"
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("target", ["node", "silent"])
def test_a_cancelled_connect_closes_everything(
    target: str, node: DqlitepyServer, silent_server: str
) -> None:
    """100 connects cancelled at random points (dialing, handshaking, asking for the
    leader, opening the database) each end with the cancellation and leave no socket open."""
    address = node.address if target == "node" else silent_server

    async def main() -> int:
        rng = random.Random(12)
        before = _open_fds()
        completed = 0
        for i in range(100):
            task = asyncio.create_task(aio.connect(f"dqlite://{address}/cancelled_connect"))
            if i % 2:
                for _ in range(rng.randrange(60)):
                    await asyncio.sleep(0)  # a few turns of the loop: early points
            else:
                await asyncio.sleep(rng.uniform(0, 0.01))  # later points
            if task.cancel():
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:  # it had connected already
                completed += 1
                await (task.result()).close()
        deadline = time.monotonic() + 10
        while _open_fds() > before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # a closed transport lets go of its socket soon after
        assert _open_fds() == before, os.listdir("/proc/self/fd")
        return completed

    completed = _run(main, timeout=120)
    if target == "silent":
        assert completed == 0


def _count(node: DqlitepyServer, database: str, table: str) -> int:
    conn = dqlitepy.connect(_url(node, database))
    try:
        (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(n)
    finally:
        conn.close()


def test_a_thousand_tasks_share_a_pool(shared_dqlitepy_node: DqlitepyServer) -> None:
    tasks = 1000

    async def main() -> float:
        url = _url(shared_dqlitepy_node, "thousand")
        async with aio.create_pool(url, size=16, isolation_level=None) as pool:
            async with pool.connection() as conn:
                await conn.execute("CREATE TABLE t (task INTEGER PRIMARY KEY)")

            async def one(i: int) -> int:
                async with pool.connection() as conn:
                    await conn.execute("INSERT INTO t VALUES (?)", (i,))
                async with pool.connection() as conn:
                    rows = await conn.execute_fetchall("SELECT task FROM t WHERE task = ?", (i,))
                return int(rows[0][0])

            started = time.monotonic()
            done = await asyncio.gather(*(one(i) for i in range(tasks)))
            elapsed = time.monotonic() - started
            assert sorted(done) == list(range(tasks))
            assert pool.open_connections == 16 and pool.idle == 16
            async with pool.connection() as conn:
                assert await conn.execute_fetchall("SELECT count(*) FROM t") == [(tasks,)]
        assert pool.closed and pool.open_connections == 0
        return elapsed

    elapsed = _run(main, timeout=120)
    print(f"\n{tasks} tasks over 16 connections: {elapsed:.2f}s")


def test_the_pool_ends_each_loan_idle(node: DqlitepyServer) -> None:
    """A block that succeeds is committed, one that raises is rolled back (psycopg_pool)."""

    async def main() -> None:
        async with aio.create_pool(_url(node, "pool_loans"), size=1) as pool:
            async with pool.connection() as conn:
                await conn.execute("CREATE TABLE t (x)")
                await conn.execute("INSERT INTO t VALUES (1)")
                assert conn.in_transaction
            assert not conn.in_transaction
            with pytest.raises(ZeroDivisionError):
                async with pool.connection() as again:
                    assert again is conn  # one connection, lent again
                    await again.execute("INSERT INTO t VALUES (2)")
                    1 / 0  # noqa: B018
            assert not conn.in_transaction
            async with pool.connection() as conn:
                assert await conn.execute_fetchall("SELECT x FROM t") == [(1,)]
        assert _count(node, "pool_loans", "t") == 1

    _run(main)


def test_the_pool_discards_broken_connections(node: DqlitepyServer) -> None:
    async def main() -> None:
        async with aio.create_pool(_url(node, "pool_broken"), size=2) as pool:
            async with pool.connection() as first:
                await first.close()  # closed by the task: discarded, the slot freed
            assert (pool.open_connections, pool.idle) == (0, 0)
            async with pool.connection() as second:
                assert second is not first and not second.closed
                second.terminate()
            assert pool.open_connections == 0
            # A commit that fails at the end of the block: raised, and the
            # connection (of unknown state) is discarded.
            with pytest.raises(aio.ConnectionLostError):
                async with pool.connection() as third:
                    await third.execute("CREATE TABLE IF NOT EXISTS t (x)")
                    await third.execute("INSERT INTO t VALUES (1)")
                    proto = third._session.proto
                    assert proto is not None
                    proto.close()  # the server session is lost with its transaction
            assert third.closed and pool.open_connections == 0
            async with pool.connection() as fourth:
                assert await fourth.execute_fetchall("SELECT 7") == [(7,)]

    _run(main)


def test_a_closed_pool_refuses_loans(node: DqlitepyServer) -> None:
    async def main() -> None:
        pool = await aio.create_pool(_url(node, "pool_closed"), size=1)
        lent = await pool.acquire()
        waiting = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0.05)
        await pool.close()
        with pytest.raises(aio.InterfaceError, match="pool is closed"):
            await waiting  # in line when the pool closed
        with pytest.raises(aio.InterfaceError, match="pool is closed"):
            async with pool.connection():
                pass
        await pool.release(lent)
        assert lent.closed and pool.open_connections == 0  # closed as it came back

    _run(main)


def test_cancelling_a_task_in_line_for_a_connection(node: DqlitepyServer) -> None:
    async def main() -> None:
        async with aio.create_pool(_url(node, "pool_cancel"), size=1) as pool:
            held = await pool.acquire()
            with pytest.raises(TimeoutError):
                await pool.acquire(timeout=0.1)
            cancelled = asyncio.create_task(pool.acquire())
            await asyncio.sleep(0.05)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            # The connection is handed to the first task in line, which is cancelled
            # before it runs: it passes the connection on to the next one.
            first = asyncio.create_task(pool.acquire())
            second = asyncio.create_task(pool.acquire())
            await asyncio.sleep(0.05)
            await pool.release(held)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            conn = await asyncio.wait_for(second, 10)
            assert conn is held and pool.open_connections == 1
            await pool.release(conn)
            assert pool.idle == 1

    _run(main)


def test_a_block_cancelled_mid_write_is_neither_committed_nor_lost(node: DqlitepyServer) -> None:
    """The pool ends a cancelled block with a rollback: the write of unknown outcome is not
    committed by the pool, the cancellation is what the task sees, and the connection (its
    server session gone with the transaction) serves the next task."""

    async def main() -> None:
        async with aio.create_pool(_url(node, "pool_cancel_write"), size=1) as pool:
            async with pool.connection() as conn:
                await conn.execute("CREATE TABLE big (i)")

            async def write() -> None:
                async with pool.connection() as conn:
                    await conn.execute(_LONG_WRITE)  # in an implicit transaction

            task = asyncio.create_task(write())
            await _wait_running(node)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.open_connections == 1
            async with pool.connection() as again:
                assert again is conn and not again.in_transaction
                await _wait_idle(node, within=30)
                assert await again.execute_fetchall("SELECT count(*) FROM big") == [(0,)]

    _run(main)


def test_a_pool_to_nowhere_fails_at_once() -> None:
    async def main() -> None:
        with pytest.raises(aio.NoLeaderError):
            await aio.create_pool("dqlite://127.0.0.1:1/x", timeout=0.5)
        with pytest.raises(aio.ProgrammingError, match="size"):
            await aio.create_pool("dqlite://127.0.0.1:1/x", size=0)

    _run(main)
