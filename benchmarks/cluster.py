"""Replicated commits: a 3-node dqlitepy cluster next to a 3-node dqlite cluster.

Same client (dqlitepy's driver), same workload, same run; prints latency
percentiles and throughput with the ratio dqlitepy / dqlite:

- 1 writer: sequential autocommit INSERTs of one small row (p50, p99, tx/s);
- 16 writers: 16 threads, each with its own connection, inserting for the same
  time (successful tx/s; "database is locked" answers are retried by the driver
  up to its timeout, as sqlite3 users expect);
- point reads, 1 and 16 readers: ``SELECT v FROM kv WHERE k = ?`` on the leader.
  dqlitepy confirms leadership with a quorum before every read (ReadIndex,
  batched across concurrent readers); dqlite-demo does not (a deposed C dqlite
  leader may serve stale reads), so the ratio is the price of linearizability.

Run: ``python benchmarks/cluster.py [--seconds 5]`` (needs Debian's go-dqlite).
Every process it starts is killed by PID at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from dqlite_cluster import DqliteDemoCluster  # noqa: E402
from dqlitepy_server import DqlitepyCluster  # noqa: E402

import dqlitepy  # noqa: E402


@contextmanager
def dqlite_cluster() -> Iterator[list[str]]:
    with DqliteDemoCluster(verbose=False) as cluster:
        cluster.start(3)
        yield list(cluster.addresses)


@contextmanager
def dqlitepy_cluster() -> Iterator[list[str]]:
    with DqlitepyCluster.formed() as cluster:
        yield cluster.addresses


def one_writer(servers: list[str], seconds: float) -> dict[str, float]:
    conn = dqlitepy.connect("bench1", servers=servers, isolation_level=None)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v TEXT)")
        latencies = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            conn.execute("INSERT INTO kv (v) VALUES (?)", ("value",))
            latencies.append(time.perf_counter() - start)
    finally:
        conn.close()
    latencies.sort()
    return {
        "p50 ms": statistics.median(latencies) * 1e3,
        "p99 ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "1 writer tx/s": len(latencies) / seconds,
    }


def many_writers(servers: list[str], seconds: float, writers: int = 16) -> dict[str, float]:
    setup = dqlitepy.connect("bench16", servers=servers, isolation_level=None)
    setup.execute("CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v TEXT)")
    setup.close()
    counts = [0] * writers
    errors = [0] * writers
    start_line = threading.Barrier(writers)

    def run(i: int) -> None:
        conn = dqlitepy.connect("bench16", servers=servers, isolation_level=None, timeout=10)
        try:
            start_line.wait()
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                try:
                    conn.execute("INSERT INTO kv (v) VALUES (?)", ("value",))
                    counts[i] += 1
                except dqlitepy.OperationalError:
                    errors[i] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {f"{writers} writers tx/s": sum(counts) / seconds, "errors": float(sum(errors))}


def readers(servers: list[str], seconds: float, count: int) -> dict[str, float]:
    setup = dqlitepy.connect("benchr", servers=servers, isolation_level=None)
    setup.execute("CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v TEXT)")
    setup.executemany("INSERT OR REPLACE INTO kv VALUES (?, 'value')", [(k,) for k in range(100)])
    setup.close()
    latencies: list[list[float]] = [[] for _ in range(count)]
    start_line = threading.Barrier(count)

    def run(i: int) -> None:
        conn = dqlitepy.connect("benchr", servers=servers, isolation_level=None, timeout=10)
        try:
            start_line.wait()
            deadline = time.perf_counter() + seconds
            k = i
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                conn.execute("SELECT v FROM kv WHERE k = ?", (k % 100,)).fetchone()
                latencies[i].append(time.perf_counter() - start)
                k += 7
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = sorted(x for per_reader in latencies for x in per_reader)
    label = f"{count} reader{'s' if count > 1 else ''}"
    return {
        f"{label} p50 ms": statistics.median(every) * 1e3,
        f"{label} reads/s": len(every) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    for name, make in (("dqlite", dqlite_cluster), ("dqlitepy", dqlitepy_cluster)):
        with make() as servers:
            results[name] = {**one_writer(servers, args.seconds)}
            results[name].update(many_writers(servers, args.seconds))
            results[name].update(readers(servers, args.seconds, 1))
            results[name].update(readers(servers, args.seconds, 16))
    print(f"{'3 nodes':<20} {'dqlite-demo':>12} {'dqlitepy':>12} {'ratio':>7}")
    for key, reference in results["dqlite"].items():
        ours = results["dqlitepy"][key]
        ratio = ours / reference if reference else float("nan")
        print(f"{key:<20} {reference:>12.2f} {ours:>12.2f} {ratio:>7.2f}")


if __name__ == "__main__":
    main()
