"""The asyncio driver next to the blocking one: point reads and writes, 1 to 256 at a time.

Starts a ``dqlitepy server`` cluster (one node, or ``--nodes 3``: three replicating
nodes, as ``python -m benchmarks`` does), loads a 1,000-row table, then measures
operations per second for each concurrency level: the blocking driver with that many
threads (one connection each) and ``dqlitepy.aio`` with that many tasks on one event
loop (one connection each), in alternated rounds; the best round of each is printed.
The issue's target: the asyncio driver at 256 tasks does at least as well as the
blocking one at 16 threads.

``python -m benchmarks`` runs it too (after the dqlite comparison; ``--no-async-driver``
skips it) and ``--write-docs`` puts its table into ``docs/performance.md``.

Run alone: ``python benchmarks/driver_async.py [--seconds 3] [--levels 1,16,256]
[--rounds 2] [--nodes 1]``.  The servers are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import dqlitepy  # noqa: E402
import dqlitepy.aio  # noqa: E402
from benchmarks.systems import dqlitepy_cluster  # noqa: E402

LEVELS = (1, 16, 256)
#: The issue's target: async at TARGET[1] tasks >= sync at TARGET[0] threads.
TARGET = (16, 256)


@dataclass(frozen=True)
class Row:
    """One measurement: the best sync and async ops/s over the rounds."""

    nodes: int
    workload: str  # "read" or "write"
    level: int  # threads (sync) and tasks (async)
    sync_ops: float
    async_ops: float

    def to_json(self) -> dict[str, Any]:
        """The row as JSON (``docs/performance/results.json``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        """The row :meth:`to_json` wrote."""
        return cls(**data)


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


def run(url: str, levels: list[int], seconds: float, rounds: int, nodes: int = 1) -> list[Row]:
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
            results.append(Row(nodes, kind, level, best_sync, best_async))
    return results


def measure(nodes: int, levels: list[int], seconds: float, rounds: int) -> list[Row]:
    """Start a cluster of ``nodes``, load the table and :func:`run`; stop the cluster."""
    with dqlitepy_cluster(nodes) as cluster:
        url = f"dqlite://{','.join(cluster.addresses)}/driver_async"
        _setup(url)
        return run(url, levels, seconds, rounds, nodes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=1, help="cluster size (default 1)")
    parser.add_argument("--cluster", action="store_true", help="three nodes (--nodes 3)")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    nodes = 3 if args.cluster else args.nodes
    from benchmarks.report import target_lines

    for line in target_lines(measure(nodes, levels, args.seconds, args.rounds)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
