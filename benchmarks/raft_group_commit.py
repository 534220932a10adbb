"""Concurrent submitters at the Raft level: commits/s and fdatasyncs per entry, 3 nodes.

Three :class:`~dqlitepy.replication.replicator.Replicator` nodes (secure transport,
fsync'd :class:`~dqlitepy.replication.journal.DurableJournal`), each in its own process
behind a ``ConnectAcceptor`` (as in the transport tests).  The leader's process runs
``--writers`` threads, each calling ``Replicator.submit`` with a small command in a loop
for ``--seconds``, once per writer count in ``--writers 1,16,64``.

This measures the Raft write path without the server: a dqlitepy server holds one
database's writer slot across each commit's whole round trip, so concurrency reaches Raft
only from writers on several databases; here every submitter reaches it directly.

Each process counts its own ``os.fdatasync`` calls (journal and metadata files) and the
entries it applied; "fsyncs/entry" is the ratio over the measured window, per node.

Run: ``python benchmarks/raft_group_commit.py --writers 1,16,64 --seconds 5 --runs 3``.
Every process it starts is joined (or, if stuck, terminated by its own handle).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from raft_acceptor import ConnectAcceptor  # noqa: E402

from dqlitepy.replication.replicator import ReplicationError, Replicator  # noqa: E402

# Fixed, not random: the spawned children re-import this module and must share it.
KEY = b"benchmark cluster key, not a secret"
COMMAND = b"x" * 100  # about one small INSERT's worth of replicated bytes
NODES = 3


def _count_syncs(counters: Any, slot: int) -> None:
    """Make this process count its fdatasync calls in ``counters[slot]``.

    The journal looks ``os.fdatasync`` up on every call, so wrapping it here sees them all.
    """
    original = os.fdatasync

    def counting(fd: int) -> None:
        counters[slot] += 1
        original(fd)

    os.fdatasync = counting


def _node_process(
    index: int,
    data_root: str,
    counters: Any,
    ports: Any,
    ready: Any,
    done: Any,
    results: Any,
    args: argparse.Namespace,
) -> None:
    """One node; the first to find itself leader measures, the others serve until done."""
    _count_syncs(counters, 2 * index)
    acceptor = ConnectAcceptor("127.0.0.1:0")
    ports[index] = int(acceptor.address.rpartition(":")[2])
    ready.wait(30)  # every node has published its port
    addresses = [f"127.0.0.1:{ports[i]}" for i in range(NODES)]

    def apply(log_index: int, command: bytes, decoded: object = None) -> int:
        counters[2 * index + 1] += 1
        return log_index

    replicator = Replicator(
        acceptor.address,
        Path(data_root) / f"node{index}",
        addresses,
        node_id=index + 1,
        cluster_key=KEY,
        apply=apply,
    )
    replicator.start()
    acceptor.attach(replicator._transport)
    try:
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            if replicator.is_leader():
                results.put(_measure(replicator, counters, args))
                done.set()
                break
            done.wait(0.05)
        done.wait(30)  # serve the leader until it is finished
    finally:
        acceptor.attach(None)
        replicator.close()
        acceptor.close()


def _snapshot(counters: Any) -> list[int]:
    return [int(counters[i]) for i in range(2 * NODES)]


def _measure(
    replicator: Replicator, counters: Any, args: argparse.Namespace
) -> dict[int, dict[str, float]]:
    for _ in range(50):  # warm up: connections open, followers caught up
        replicator.submit(COMMAND, 10)
    out: dict[int, dict[str, float]] = {}
    for writers in args.writers:
        out[writers] = _workload(replicator, counters, writers, args.seconds)
    return out


def _workload(
    replicator: Replicator, counters: Any, writers: int, seconds: float
) -> dict[str, float]:
    latencies: list[list[float]] = [[] for _ in range(writers)]
    errors = [0] * writers
    start_line = threading.Barrier(writers + 1)

    def run(i: int) -> None:
        start_line.wait()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                replicator.submit(COMMAND, 10)
            except ReplicationError:
                errors[i] += 1
                continue
            latencies[i].append(time.perf_counter() - start)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    before = _snapshot(counters)
    start_line.wait()
    for t in threads:
        t.join()
    time.sleep(0.3)  # the followers apply the last entries
    after = _snapshot(counters)
    every = sorted(x for per_writer in latencies for x in per_writer)
    result = {
        "commits/s": len(every) / seconds,
        "p50 ms": statistics.median(every) * 1e3 if every else float("nan"),
        "p99 ms": every[int(len(every) * 0.99)] * 1e3 if every else float("nan"),
        "errors": float(sum(errors)),
    }
    per_node = []
    for node in range(NODES):
        syncs = after[2 * node] - before[2 * node]
        entries = after[2 * node + 1] - before[2 * node + 1]
        per_node.append(syncs / entries if entries else float("nan"))
    # The leader's own ratio first (it measured), then the followers'.
    result["fsyncs/entry max"] = max(per_node)
    result["fsyncs/entry min"] = min(per_node)
    return result


def one_run(args: argparse.Namespace) -> dict[int, dict[str, float]]:
    ctx = multiprocessing.get_context("spawn")
    root = tempfile.mkdtemp(prefix="raft-group-commit-", dir=args.data_root)
    counters = ctx.RawArray("q", 2 * NODES)
    ports = ctx.RawArray("i", NODES)  # each node's listening port, once it has one
    try:
        ready, done, results = ctx.Event(), ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(
                target=_node_process,
                args=(i, root, counters, ports, ready, done, results, args),
            )
            for i in range(NODES)
        ]
        for proc in procs:
            proc.start()
        try:
            deadline = time.monotonic() + 30
            while not all(ports[i] for i in range(NODES)):
                if time.monotonic() > deadline:
                    raise RuntimeError("the nodes did not start")
                time.sleep(0.05)
            ready.set()
            timeout = 120 + len(args.writers) * (args.seconds + 5)
            result: dict[int, dict[str, float]] = results.get(timeout=timeout)
            return result
        finally:
            done.set()
            for proc in procs:
                proc.join(60)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(10)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--writers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 16, 64],
        help="comma-separated submitter thread counts",
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-root", type=Path, help="where the nodes' data go (/dev/shm...)")
    args = parser.parse_args()
    runs = []
    for run in range(args.runs):
        result = one_run(args)
        for writers, figures in result.items():
            line = ", ".join(f"{k} {v:.2f}" for k, v in figures.items())
            print(f"run {run + 1}, {writers} writer(s): {line}", flush=True)
        runs.append(result)
    for writers in args.writers:
        keys = runs[0][writers]
        median = {key: statistics.median(r[writers][key] for r in runs) for key in keys}
        print(
            f"median of {args.runs}, {writers} writer(s), {args.seconds:g} s: "
            + ", ".join(f"{k} {v:.2f}" for k, v in median.items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
