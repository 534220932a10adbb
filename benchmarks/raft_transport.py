"""Round-trip latency of one replicated command: SecureTransport vs PySyncObj's TCPTransport.

Three PySyncObj nodes in this process (a replicated counter), batching off
(``appendEntriesUseBatch=False``), the same Raft settings for both transports.  For each
transport: N sequential ``incr(sync=True)`` calls on the leader (after a warm-up), then a few
commands carrying a multi-MiB argument; p50/p99 and the ratio are printed.  For
SecureTransport it also reports the longest time the tick thread spent inside one ``send``
(encoding, MAC and the first non-blocking write), which is what a large entry costs the
thread that also runs elections and heartbeats.

By default the three nodes share one process, as in the tests: the three tick threads then
contend for one GIL, which inflates per-message costs.  ``--processes`` runs each node in its
own process (as in production) and times the commands in the leader's process.

Run: ``python benchmarks/raft_transport.py [--commands 500] [--big-mib 4] [--processes]``.
Everything runs on 127.0.0.1 and is torn down at the end (child processes are joined).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from pysyncobj import SyncObj, SyncObjConf, replicated  # noqa: E402
from pysyncobj.syncobj import SyncObjException  # noqa: E402
from pysyncobj.transport import TCPTransport  # noqa: E402
from raft_acceptor import ConnectAcceptor  # noqa: E402

from dqlitepy.replication.transport import (  # noqa: E402
    RaftNode,
    SecureTransport,
    secure_transport_class,
)

# Fixed, not random: ``--processes`` children re-import this module and must share it.
KEY = b"benchmark cluster key, not a secret"


def _conf() -> Any:
    return SyncObjConf(
        appendEntriesUseBatch=False,
        raftMinTimeout=0.35,
        raftMaxTimeout=0.45,
        appendEntriesPeriod=0.05,
        connectionRetryTime=0.3,
        # Large commands must not take PySyncObj's chunked path (defect 5), for either transport.
        appendEntriesBatchSizeBytes=32 * 1024 * 1024,
    )


class Counter(SyncObj):  # type: ignore[misc]
    def __init__(self, address: str, others: list[str], transport: type) -> None:
        if issubclass(transport, SecureTransport):
            super().__init__(
                RaftNode(address),
                [RaftNode(o) for o in others],
                _conf(),
                transportClass=transport,
                nodeClass=RaftNode,
            )
        else:
            # TCPTransport dials only its own TCPNode class (an isinstance check).
            super().__init__(address, others, _conf(), transportClass=transport)
        self.value = 0
        self.size = 0

    @replicated  # type: ignore[misc]
    def incr(self) -> int:
        self.value += 1
        return self.value

    @replicated  # type: ignore[misc]
    def put(self, blob: bytes) -> int:
        self.size += len(blob)
        return self.size


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def secure_cluster() -> Iterator[list[Counter]]:
    acceptors = [ConnectAcceptor("127.0.0.1:0") for _ in range(3)]
    addresses = [a.address for a in acceptors]
    nodes: list[Counter] = []
    try:
        for i, acceptor in enumerate(acceptors):
            cls = secure_transport_class(KEY, node_id=i + 1, on_created=acceptor.attach)
            nodes.append(Counter(addresses[i], [a for a in addresses if a != addresses[i]], cls))
        yield nodes
    finally:
        for node in nodes:
            node.destroy_synchronous()
        for acceptor in acceptors:
            acceptor.close()


@contextmanager
def tcp_cluster() -> Iterator[list[Counter]]:
    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(3)]
    nodes: list[Counter] = []
    try:
        for address in addresses:
            others = [a for a in addresses if a != address]
            nodes.append(Counter(address, others, TCPTransport))
        yield nodes
    finally:
        for node in nodes:
            node.destroy_synchronous()


def _leader(nodes: list[Counter], timeout: float = 10.0) -> Counter:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders = [n for n in nodes if n._isLeader()]
        if len(leaders) == 1 and all(n._getLeader() is not None for n in nodes):
            return leaders[0]
        time.sleep(0.01)
    raise RuntimeError("no leader")


def _timed(call: Callable[[], Any], count: int) -> tuple[list[float], int]:
    """Latencies of successful calls, and how many calls failed (e.g. leadership lost)."""
    samples, failures = [], 0
    for _ in range(count):
        start = time.perf_counter()
        try:
            call()
        except SyncObjException:
            failures += 1
            continue
        samples.append(time.perf_counter() - start)
    return samples, failures


def _pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Result:
    def __init__(self) -> None:
        self.small: list[float] = []
        self.big: list[float] = []
        self.big_failures = 0
        self.leader_changes = 0


def run(name: str, cluster: Callable[[], Any], args: argparse.Namespace, into: Result) -> None:
    with cluster() as nodes:
        leader = _leader(nodes)
        small, big, failed = _measure(leader, args)
        if not leader._isLeader():
            into.leader_changes += 1
    into.small += small
    into.big += big
    into.big_failures += failed
    print(
        f"  {name:16} {len(small)} x incr: p50 {_pct(small, 0.5):.3f} ms  "
        f"p99 {_pct(small, 0.99):.3f} ms | {args.big_count} x {args.big_mib} MiB: "
        f"p50 {_pct(big, 0.5):.1f} ms, {failed} failed"
    )


def _measure(leader: Counter, args: argparse.Namespace) -> tuple[list[float], list[float], int]:
    _timed(lambda: leader.incr(sync=True, timeout=10), args.warmup)
    small, _ = _timed(lambda: leader.incr(sync=True, timeout=10), args.commands)
    blob = os.urandom(args.big_mib * 1024 * 1024)
    big, failed = _timed(lambda: leader.put(blob, sync=True, timeout=30), args.big_count)
    return small, big, failed


def _node_process(
    kind: str,
    index: int,
    addresses: list[str],
    args: argparse.Namespace,
    claimed: Any,
    done: Any,
    results: Any,
) -> None:
    """One node in its own process; the first to find itself leader runs the measurement."""
    others = [a for a in addresses if a != addresses[index]]
    acceptor = ConnectAcceptor(addresses[index]) if kind == "secure" else None
    transport: type = (
        secure_transport_class(KEY, node_id=index + 1, on_created=acceptor.attach)
        if acceptor is not None
        else TCPTransport
    )
    node = Counter(addresses[index], others, transport)
    try:
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            if node._isLeader():
                with claimed.get_lock():
                    mine = claimed.value == 0
                    claimed.value = 1
                if mine:
                    results.put(_measure(node, args))
                    done.set()
                    break
            done.wait(0.05)
    finally:
        node.destroy_synchronous()
        if acceptor is not None:
            acceptor.close()


def run_processes(kind: str, args: argparse.Namespace, into: Result) -> None:
    ctx = multiprocessing.get_context("spawn")
    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(3)]
    claimed, done, results = ctx.Value("i", 0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_node_process, args=(kind, i, addresses, args, claimed, done, results))
        for i in range(3)
    ]
    for proc in procs:
        proc.start()
    try:
        small, big, failed = results.get(timeout=120)
    finally:
        done.set()
        for proc in procs:
            proc.join(30)
    into.small += small
    into.big += big
    into.big_failures += failed
    print(
        f"  {kind:16} {len(small)} x incr: p50 {_pct(small, 0.5):.3f} ms  "
        f"p99 {_pct(small, 0.99):.3f} ms | {args.big_count} x {args.big_mib} MiB: "
        f"p50 {_pct(big, 0.5):.1f} ms, {failed} failed"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--big-mib", type=int, default=4)
    parser.add_argument("--big-count", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per transport")
    parser.add_argument("--processes", action="store_true", help="one process per node")
    args = parser.parse_args()

    # The longest single SecureTransport.send: time the tick thread could not do anything else.
    longest = [0.0]
    send = SecureTransport.send

    def timed_send(self: SecureTransport, node: Any, message: Any) -> bool:
        start = time.perf_counter()
        try:
            return send(self, node, message)
        finally:
            longest[0] = max(longest[0], time.perf_counter() - start)

    SecureTransport.send = timed_send  # type: ignore[method-assign]
    secure, tcp = Result(), Result()
    for i in range(args.rounds):
        print(f"round {i + 1}/{args.rounds}")
        if args.processes:
            run_processes("secure", args, secure)
            run_processes("tcp", args, tcp)
        else:
            run("SecureTransport", secure_cluster, args, secure)
            run("TCPTransport", tcp_cluster, args, tcp)
    print(f"\npooled over {args.rounds} rounds (load average {os.getloadavg()[0]:.2f}):")
    for name, r in (("SecureTransport", secure), ("TCPTransport", tcp)):
        print(
            f"  {name:16} incr p50 {_pct(r.small, 0.5):.3f} ms  p99 {_pct(r.small, 0.99):.3f} ms"
            f" | {args.big_mib} MiB p50 {_pct(r.big, 0.5):.1f} ms, "
            f"{r.big_failures}/{args.rounds * args.big_count} failed"
        )
    if not args.processes:
        print(f"  longest SecureTransport.send: {longest[0] * 1000:.1f} ms")
    print(
        f"  ratio secure/tcp: incr p50 {_pct(secure.small, 0.5) / _pct(tcp.small, 0.5):.2f}  "
        f"p99 {_pct(secure.small, 0.99) / _pct(tcp.small, 0.99):.2f}"
    )


if __name__ == "__main__":
    main()
