"""The asyncio driver next to the blocking one: point reads and writes, 1 to 256 at a time.

Starts one ``dqlitepy server`` (a single node, or ``--cluster``: three replicating
nodes), loads a 1,000-row table, then measures operations per second for each
concurrency level: the blocking driver with that many threads (one connection each)
and ``dqlitepy.aio`` with that many tasks on one event loop (one connection each),
in alternated rounds; the best round of each is printed.  The issue's target: the
asyncio driver at 256 tasks does at least as well as the blocking one at 16 threads.

Run: ``python benchmarks/driver_async.py [--seconds 3] [--levels 1,16,256] [--rounds 2]``.
The server is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from dqlitepy_server import DqlitepyCluster, DqlitepyServer  # noqa: E402

import dqlitepy  # noqa: E402
import dqlitepy.aio  # noqa: E402

ROWS = 1000
READ = "SELECT v FROM kv WHERE k = ?"
WRITE = "INSERT OR REPLACE INTO kv VALUES (?, ?)"
VALUE = "v" * 100


def _setup(url: str) -> None:
    conn = dqlitepy.connect(url, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany(WRITE, [(i, VALUE) for i in range(ROWS)])
    conn.close()


def _sync_round(url: str, kind: str, threads: int, seconds: float) -> float:
    conns = [
        dqlitepy.connect(url, isolation_level=None, check_same_thread=False) for _ in range(threads)
    ]
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop_at = 0.0

    def work(i: int) -> None:
        conn, rng, n = conns[i], random.Random(i), 0
        start.wait()
        while time.monotonic() < stop_at:
            if kind == "read":
                conn.execute(READ, (rng.randrange(ROWS),)).fetchone()
            else:
                conn.execute(WRITE, (rng.randrange(ROWS), VALUE))
            n += 1
        counts[i] = n

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    began = time.monotonic()
    stop_at = began + seconds
    start.wait()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - began
    for conn in conns:
        conn.close()
    return sum(counts) / elapsed


async def _async_round(url: str, kind: str, tasks: int, seconds: float) -> float:
    conns = [await dqlitepy.aio.connect(url, isolation_level=None) for _ in range(tasks)]
    stop_at = time.monotonic() + seconds

    async def work(i: int) -> int:
        conn, rng, n = conns[i], random.Random(i), 0
        while time.monotonic() < stop_at:
            if kind == "read":
                await (await conn.execute(READ, (rng.randrange(ROWS),))).fetchone()
            else:
                await conn.execute(WRITE, (rng.randrange(ROWS), VALUE))
            n += 1
        return n

    began = time.monotonic()
    done = await asyncio.gather(*(work(i) for i in range(tasks)))
    elapsed = time.monotonic() - began
    for conn in conns:
        await conn.close()
    return sum(done) / elapsed


def run(
    url: str, levels: list[int], seconds: float, rounds: int
) -> list[tuple[str, int, float, float]]:
    """Measure each (workload, level): the best sync and async ops/s over ``rounds``."""
    results = []
    for kind in ("read", "write"):
        for level in levels:
            best_sync = best_async = 0.0
            for _ in range(rounds):
                best_sync = max(best_sync, _sync_round(url, kind, level, seconds))
                best_async = max(best_async, asyncio.run(_async_round(url, kind, level, seconds)))
            print(
                f"{kind:5} {level:4}   sync {best_sync:8.0f} ops/s   async {best_async:8.0f} ops/s",
                flush=True,
            )
            results.append((kind, level, best_sync, best_async))
    return results


def _verdict(results: list[tuple[str, int, float, float]]) -> None:
    by = {(k, lvl): (s, a) for k, lvl, s, a in results}
    for kind in ("read", "write"):
        if (kind, 256) in by and (kind, 16) in by:
            target, got = by[kind, 16][0], by[kind, 256][1]
            verdict = "met" if got >= target else "NOT met"
            print(
                f"{kind}: async at 256 tasks {got:.0f} ops/s vs sync at 16 threads "
                f"{target:.0f} ops/s: target {verdict}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--levels", default="1,16,256")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cluster", action="store_true", help="three replicating nodes")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    with _servers(args.cluster) as addresses:
        url = f"dqlite://{','.join(addresses)}/driver_async"
        _setup(url)
        _verdict(run(url, levels, args.seconds, args.rounds))
    return 0


class _servers:
    """One node or a formed cluster, stopped at the end; yields the addresses."""

    def __init__(self, cluster: bool) -> None:
        self._cluster = cluster
        self._close: Callable[[], None] = lambda: None

    def __enter__(self) -> list[str]:
        if self._cluster:
            manager = DqlitepyCluster.formed()
            cluster = manager.__enter__()
            self._close = lambda: manager.__exit__(None, None, None)
            return cluster.addresses
        node = DqlitepyServer().start()
        self._close = node.close
        return [node.address]

    def __exit__(self, *exc: object) -> None:
        self._close()


if __name__ == "__main__":
    sys.exit(main())
