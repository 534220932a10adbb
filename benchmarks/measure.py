"""One measurement: a workload, a number of clients, a running cluster.

The clients run in worker processes (``multiprocessing``), a few threads each, so the
client side's GIL is not what limits the servers: ``clients`` threads are dealt to
``min(clients, max_processes)`` processes. Each thread has its own connection.

1. the workload's ``setup`` runs through one connection of this process;
2. every worker connects its clients and says it is ready;
3. the servers' CPU counters are read, and every worker is told to go at once;
4. each client repeats its operation until ``seconds`` have passed, recording the latency
   of each success and the kind of each failure;
5. the workers send what they saw; the servers' CPU counters are read again.

Every wait is bounded: a worker that is not ready, or not done ``grace`` seconds after
its end, is terminated (by its PID) and the measurement reports what arrived.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

import dqlitepy

from .systems import Cluster, cpu_seconds
from .workloads import WORKLOADS, Op

__all__ = ["Sample", "error_kind", "measure"]


_CONNECT_OPTIONS = {"leader_timeout": 10.0, "request_timeout": 30.0, "timeout": 5.0}
_READY_TIMEOUT = 60.0
_GRACE = 30.0


@dataclass
class Sample:
    """What one measurement saw."""

    ops: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def ops_per_second(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        """The latency (seconds) at quantile ``q``, or NaN without successes."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def cpu_per_op(self) -> float:
        return self.server_cpu / self.ops if self.ops else float("nan")

    @property
    def client_cpu_per_op(self) -> float:
        return self.client_cpu / self.ops if self.ops else float("nan")


def error_kind(exc: BaseException) -> str:
    """A short name for what went wrong: the class and the message without numbers."""
    message = re.sub(r"\d+", "N", str(exc).splitlines()[0] if str(exc) else "")
    return f"{type(exc).__name__}: {message[:60]}".rstrip(": ")


@dataclass
class _Client:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    end: float = 0.0


def _run_client(
    op: Op, client: _Client, go: threading.Event, start: list[float], seconds: float
) -> None:
    go.wait()
    deadline = start[0] + seconds
    latencies, errors = client.latencies, client.errors
    now = time.monotonic()
    while now < deadline:
        try:
            op()
        except Exception as exc:  # every failure is data here
            errors[error_kind(exc)] += 1
            now = time.monotonic()
        else:
            done = time.monotonic()
            latencies.append(done - now)
            now = done
    client.end = now


def _worker(
    pipe: Pipe,
    servers: list[str],
    database: str,
    workload: str,
    clients: int,
    seconds: float,
    seed: int,
) -> None:
    """A worker process: connect ``clients`` clients, wait for "go", run, report."""
    # Forked from the suite: its SIGTERM handler is not ours, and Ctrl-C is the suite's to
    # handle (it terminates the workers by PID).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = WORKLOADS[workload]
    go = threading.Event()
    start = [0.0]
    states = [_Client() for _ in range(clients)]
    connections = []
    threads = []
    try:
        for i, state in enumerate(states):
            try:
                conn = dqlitepy.connect(
                    database,
                    servers=servers,
                    isolation_level=None,
                    check_same_thread=False,
                    **_CONNECT_OPTIONS,
                )
            except dqlitepy.Error as exc:
                state.errors[error_kind(exc)] += 1
                continue
            connections.append(conn)
            op = spec.make_op(conn, random.Random(seed * 1000 + i))
            threads.append(
                threading.Thread(
                    target=_run_client,
                    args=(op, state, go, start, seconds),
                    daemon=True,
                )
            )
        for thread in threads:
            thread.start()
        pipe.send("ready")
        if not pipe.poll(_READY_TIMEOUT + _GRACE):
            return
        pipe.recv()
        cpu = time.process_time()  # this process, every thread
        start[0] = time.monotonic()
        go.set()
        for thread in threads:
            thread.join(seconds + _GRACE)
        latencies = [x for s in states for x in s.latencies]
        errors: Counter[str] = Counter()
        for s in states:
            errors.update(s.errors)
        end = max((s.end for s in states), default=start[0])
        pipe.send((start[0], end, latencies, dict(errors), time.process_time() - cpu))
    finally:
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()


def _deal(clients: int, processes: int) -> list[int]:
    """``clients`` threads dealt to at most ``processes`` processes, as evenly as can be."""
    count = max(1, min(clients, processes))
    return [clients // count + (1 if i < clients % count else 0) for i in range(count)]


def _setup(cluster: Cluster, database: str, workload: str) -> None:
    conn = dqlitepy.connect(
        database, servers=cluster.addresses, isolation_level=None, **_CONNECT_OPTIONS
    )
    try:
        WORKLOADS[workload].setup(conn)
    finally:
        conn.close()


def _stop(processes: list[BaseProcess]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM to this PID
    for process in processes:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)


def measure(
    cluster: Cluster,
    workload: str,
    clients: int,
    seconds: float,
    *,
    database: str,
    max_processes: int = 4,
    seed: int = 0,
) -> Sample:
    """Run ``workload`` with ``clients`` clients on ``cluster`` for ``seconds``."""
    _setup(cluster, database, workload)
    context = multiprocessing.get_context("fork")
    processes: list[BaseProcess] = []
    pipes: list[Pipe] = []
    sample = Sample()
    try:
        for n, share in enumerate(_deal(clients, max_processes)):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_worker,
                args=(
                    theirs,
                    cluster.addresses,
                    database,
                    workload,
                    share,
                    seconds,
                    seed * 100 + n,
                ),
                daemon=True,
            )
            process.start()
            theirs.close()
            processes.append(process)
            pipes.append(ours)
        if len(_await_all(pipes, _READY_TIMEOUT)) < len(pipes):
            raise RuntimeError(f"client workers not ready within {_READY_TIMEOUT:.0f}s")
        cpu_before = cpu_seconds(cluster.pids)
        for pipe in pipes:
            pipe.send("go")
        starts: list[float] = []
        ends: list[float] = []
        for start, end, latencies, errors, cpu in _await_all(pipes, seconds + _GRACE):
            sample.client_cpu += cpu
            starts.append(start)
            ends.append(end)
            sample.latencies.extend(latencies)
            sample.errors.update(errors)
        sample.server_cpu = cpu_seconds(cluster.pids) - cpu_before
        sample.ops = len(sample.latencies)
        if starts:
            sample.elapsed = max(ends) - min(starts)
        if len(starts) < len(pipes):
            sample.errors["worker lost (timed out or died)"] += len(pipes) - len(starts)
    finally:
        _stop(processes)
        for pipe in pipes:
            pipe.close()
    return sample


def _await_all(pipes: list[Pipe], timeout: float) -> list[Any]:
    """One message from each pipe within ``timeout``; late or dead workers are left out.

    A worker sends "ready", then ``(start, end, latencies, errors by kind, CPU seconds)``.
    """
    deadline = time.monotonic() + timeout
    pending = list(pipes)
    messages: list[Any] = []
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for ready in wait(pending, remaining):
            assert isinstance(ready, Pipe)
            pending.remove(ready)
            with contextlib.suppress(EOFError):
                messages.append(ready.recv())
    return messages
