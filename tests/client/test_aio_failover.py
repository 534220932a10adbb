"""dqlitepy.aio through a leader kill: 100 tasks write while the leader gets SIGKILL.

The tasks use a connection each, or share a pool of 16 (``dqlitepy.aio.create_pool``).

Every write the driver acknowledged must be in the database afterwards, none may be there
twice (a write of unknown outcome is never re-sent), and the only errors the tasks may see
are those of unknown outcome (``docs/driver.md``, "What became of the request").  A fresh
3-node ``dqlitepy server`` cluster; the tasks share one event loop, one connection each.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter

import pytest
from dqlitepy_server import DqlitepyCluster

import dqlitepy
import dqlitepy.aio as aio

pytestmark = pytest.mark.slow

TASKS = 100
#: Successful writes each task makes after the kill: it has failed over by then.
AFTER_KILL = 3


@pytest.mark.parametrize("connections", ["one each", "a pool of 16"])
def test_a_hundred_tasks_write_through_a_leader_kill(connections: str) -> None:
    with DqlitepyCluster.formed() as cluster:
        url = f"dqlite://{','.join(cluster.addresses)}/failover"
        setup = dqlitepy.connect(url, isolation_level=None)
        setup.execute("CREATE TABLE t (task INTEGER, seq INTEGER)")
        setup.close()
        leader = cluster.leader()
        acked: list[tuple[int, int]] = []
        unknown: list[tuple[int, int]] = []
        killed = asyncio.Event()

        options = {"isolation_level": None, "attempt_timeout": 1.0}

        async def write(conn: aio.Connection, task: int, seq: int) -> bool:
            """One write: True if acknowledged."""
            try:
                await conn.execute("INSERT INTO t VALUES (?, ?)", (task, seq))
            except (aio.ConnectionLostError, aio.LeadershipLostError) as exc:
                assert exc.outcome == "unknown", exc
                unknown.append((task, seq))
                return False
            acked.append((task, seq))
            return True

        async def writer(task: int, pool: aio.Pool | None) -> None:
            seq = after = 0
            async with contextlib.AsyncExitStack() as stack:
                if pool is None:
                    conn = await stack.enter_async_context(aio.connect(url, **options))
                while after < AFTER_KILL:
                    seq += 1
                    if pool is None:
                        done = await write(conn, task, seq)
                    else:  # a connection of the pool for each write
                        async with pool.connection() as conn:
                            done = await write(conn, task, seq)
                    if done and killed.is_set():
                        after += 1
                    await asyncio.sleep(0.01)

        async def main() -> float:
            async with contextlib.AsyncExitStack() as stack:
                pool = None
                if connections != "one each":
                    pool = await stack.enter_async_context(aio.create_pool(url, 16, **options))
                return await through_the_kill(pool)

        async def through_the_kill(pool: aio.Pool | None) -> float:
            writers = [asyncio.create_task(writer(i, pool)) for i in range(TASKS)]
            while len(acked) < 2 * TASKS:
                await asyncio.sleep(0.05)
            cluster.node(leader).stop(signal.SIGKILL)
            killed.set()
            started = time.monotonic()
            await asyncio.gather(*writers)
            return time.monotonic() - started

        elapsed = asyncio.run(asyncio.wait_for(main(), 120))
        new_leader = cluster.leader()
        assert new_leader != leader
        check = dqlitepy.connect(f"dqlite://{new_leader}/failover")
        rows = Counter(check.execute("SELECT task, seq FROM t").fetchall())
        check.close()
        print(
            f"\n{TASKS} tasks ({connections}): {len(acked)} writes acknowledged, "
            f"{len(unknown)} of unknown outcome; all failed over within {elapsed:.1f}s of the kill"
        )
        assert all(n == 1 for n in rows.values()), "a write was applied twice"
        assert not set(acked) - set(rows), "an acknowledged write was lost"
        assert set(rows) <= set(acked) | set(unknown), "a write nobody sent"
