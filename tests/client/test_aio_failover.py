"""dqlitepy.aio through a leader kill: 100 tasks write while the leader gets SIGKILL.

Every write the driver acknowledged must be in the database afterwards, none may be there
twice (a write of unknown outcome is never re-sent), and the only errors the tasks may see
are those of unknown outcome (``docs/driver.md``, "What became of the request").  A fresh
3-node ``dqlitepy server`` cluster; the tasks share one event loop, one connection each.
"""

from __future__ import annotations

import asyncio
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


def test_a_hundred_tasks_write_through_a_leader_kill() -> None:
    with DqlitepyCluster.formed() as cluster:
        url = f"dqlite://{','.join(cluster.addresses)}/failover"
        setup = dqlitepy.connect(url, isolation_level=None)
        setup.execute("CREATE TABLE t (task INTEGER, seq INTEGER)")
        setup.close()
        leader = cluster.leader()
        acked: list[tuple[int, int]] = []
        unknown: list[tuple[int, int]] = []
        killed = asyncio.Event()

        async def writer(task: int) -> None:
            async with aio.connect(url, isolation_level=None, attempt_timeout=1.0) as conn:
                seq = after = 0
                while after < AFTER_KILL:
                    seq += 1
                    try:
                        await conn.execute("INSERT INTO t VALUES (?, ?)", (task, seq))
                    except (aio.ConnectionLostError, aio.LeadershipLostError) as exc:
                        assert exc.outcome == "unknown", exc
                        unknown.append((task, seq))
                        continue
                    acked.append((task, seq))
                    if killed.is_set():
                        after += 1
                    await asyncio.sleep(0.01)

        async def main() -> float:
            writers = [asyncio.create_task(writer(i)) for i in range(TASKS)]
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
            f"\n{TASKS} tasks: {len(acked)} writes acknowledged, {len(unknown)} of unknown "
            f"outcome; all failed over within {elapsed:.1f}s of the kill"
        )
        assert all(n == 1 for n in rows.values()), "a write was applied twice"
        assert not set(acked) - set(rows), "an acknowledged write was lost"
        assert set(rows) <= set(acked) | set(unknown), "a write nobody sent"
