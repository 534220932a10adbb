"""Server CPU per request, and where it goes: point reads and writes on 1 or 3 nodes.

Starts ``dqlitepy server`` processes on loopback (``--nodes``), loads the ``read``
table of :mod:`benchmarks.workloads`, then runs one client in this process doing
``--ops`` operations of each workload (``read``: a point read by key; ``write``:
one autocommitted INSERT OR REPLACE; ``idle``: nothing for 10 ms, so that
µs/op × 100 is an idle node's CPU per second) and prints, per node, the process's CPU time
(``/proc/PID/stat``: user + system) per operation, and this client's own CPU per
operation.  CPU time, not wall time, so that a busy machine disturbs it less.

``--profile`` runs the nodes under a deterministic profiler (``cProfile`` on every
thread, started by the launcher below) and prints each node's top functions by own
time and their share of the profiled time; profiling inflates Python-heavy code, so
read the shares, not the absolute times, and measure CPU without it.

Run: ``python benchmarks/server_profile.py --nodes 1 --ops 3000 [--profile]``.
Nodes are stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import dqlitepy  # noqa: E402
import dqlitepy.testing.process as _process  # noqa: E402
from benchmarks.lean_write_path import _cpu_seconds  # noqa: E402
from benchmarks.workloads import WORKLOADS  # noqa: E402

# Every thread of the node runs under its own cProfile.Profile; SIGUSR1 writes the
# merged statistics to $DQLITEPY_PROFILE_DIR/<pid>.prof.  Threads are wrapped at _bootstrap_inner,
# so that Thread subclasses overriding run() are profiled too.
_PROFILING = """\
import cProfile, os, pstats, signal, threading, time
_profiles = []
_inner = threading.Thread._bootstrap_inner
def _bootstrap_inner(self):
    p = cProfile.Profile(time.thread_time)  # CPU, not wall: blocking costs nothing
    _profiles.append(p)
    p.enable()
    _inner(self)
threading.Thread._bootstrap_inner = _bootstrap_inner
class _Snap:
    def __init__(self, p):
        p.snapshot_stats()
        self.stats = p.stats
    def create_stats(self):
        pass
def _dump(signum, frame):
    threading.Thread(target=_dump_all).start()  # not in the handler: it may interrupt one
def _dump_all():
    merged = None
    for p in list(_profiles):
        try:
            s = pstats.Stats(_Snap(p))
        except Exception:
            continue  # a profile with nothing in it yet
        merged = s if merged is None else merged.add(s)
        p.clear()
    if merged is not None:
        out = os.path.join(os.environ["DQLITEPY_PROFILE_DIR"], f"{os.getpid()}.prof")
        merged.dump_stats(out + ".tmp")
        os.replace(out + ".tmp", out)
signal.signal(signal.SIGUSR1, _dump)
"""


def _top(path: Path, count: int, cumulative: bool) -> str:
    """The ``count`` functions with most own time (or cumulative, for dqlitepy's own)."""
    import pstats

    stats = pstats.Stats(str(path))
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values()) or 1.0
    column = 3 if cumulative else 2
    calls = sum(entry[1] for entry in raw.values())
    items = [item for item in raw.items() if not cumulative or "dqlitepy" in item[0][0]]
    rows = sorted(items, key=lambda item: item[1][column], reverse=True)[:count]
    lines = []
    for (file, line, name), entry in rows:
        where = f"{Path(file).name}:{line}" if line else file
        lines.append(f"  {entry[column] / total:6.1%}  {entry[1]:8d}  {name} ({where})")
    return f"  {calls:,} calls profiled\n" + "\n".join(lines)


def _write_op(conn: dqlitepy.Connection, rng: random.Random) -> object:
    value = "x" * 1024

    def op() -> None:
        conn.execute(
            "INSERT OR REPLACE INTO model (key, value) VALUES (?, ?)",
            (f"{rng.randrange(1000):032d}", value),
        )

    return op


def _idle_op() -> None:
    """``--workloads idle``: no request, 10 ms of wall time (CPU µs/op × 100 = µs per second)."""
    time.sleep(0.01)


def _make_op(name: str, conn: dqlitepy.Connection, rng: random.Random) -> object:
    if name == "idle":
        return _idle_op
    if name == "write":
        return _write_op(conn, rng)
    return WORKLOADS[name].make_op(conn, rng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--workloads", default="read,write")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--cumulative", action="store_true", help="dqlitepy's functions by cumulative time"
    )
    args = parser.parse_args()
    out_dir = Path(tempfile.mkdtemp(prefix="dqlitepy-server-profile-"))
    try:
        _run(args, out_dir)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _run(args: argparse.Namespace, out_dir: Path) -> None:
    if args.profile:
        _process._LAUNCHER = _PROFILING + _process._LAUNCHER  # type: ignore[attr-defined]
        os.environ["DQLITEPY_PROFILE_DIR"] = str(out_dir)
    from dqlitepy_server import DqlitepyCluster

    with DqlitepyCluster.formed(args.nodes) as cluster:
        leader = cluster.leader()
        nodes = [cluster.node(a) for a in cluster.addresses]
        nodes.sort(key=lambda n: n.address != leader)
        conn = dqlitepy.connect("bench", servers=[leader], timeout=30)
        conn.isolation_level = None
        WORKLOADS["read"].setup(conn)
        for name in args.workloads.split(","):
            rng = random.Random(1)
            op = _make_op(name, conn, rng)
            for _ in range(200):
                op()  # type: ignore[operator]  # warm: statement caches, lease
            pids = [n.process.pid for n in nodes if n.process is not None]
            if args.profile:
                for pid in pids:
                    os.kill(pid, signal.SIGUSR1)  # clears the warm-up's statistics
                time.sleep(0.5)
            before = [_cpu_seconds(pid) for pid in pids]
            client0, t0 = time.process_time(), time.perf_counter()
            for _ in range(args.ops):
                op()  # type: ignore[operator]
            wall = time.perf_counter() - t0
            client = time.process_time() - client0
            after = [_cpu_seconds(pid) for pid in pids]
            per_node = ", ".join(
                f"{'leader' if i == 0 else f'node{i}'} {(a - b) * 1e6 / args.ops:.0f}"
                for i, (a, b) in enumerate(zip(after, before, strict=True))
            )
            print(
                f"{name}, {args.nodes} node(s): {args.ops / wall:,.0f} ops/s; "
                f"CPU µs/op: {per_node}; client {client * 1e6 / args.ops:.0f}",
                flush=True,
            )
            if args.profile:
                for pid in pids:
                    (out_dir / f"{pid}.prof").unlink(missing_ok=True)
                    os.kill(pid, signal.SIGUSR1)
                for i, pid in enumerate(pids):
                    target = out_dir / f"{pid}.prof"
                    deadline = time.monotonic() + 30
                    while not target.exists() and time.monotonic() < deadline:
                        time.sleep(0.1)
                    print(f"{name} profile, {'leader' if i == 0 else f'node{i}'}:")
                    print(_top(target, args.top, args.cumulative), flush=True)
        conn.close()


if __name__ == "__main__":
    main()
