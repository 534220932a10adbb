"""Read-path cost of one dqlitepy node: point reads and a 100k-row scan, optionally profiled.

Starts a one-node cluster, loads the ``read`` and ``scan`` tables of
:mod:`benchmarks.workloads`, then for each workload runs one client for
``--seconds`` and prints operations per second and the server's CPU time per
operation (from ``/proc``).  ``--profile DIR`` runs py-spy on the server during
each measurement and prints the summary of ``lean_write_path.summarize``.

Run: ``python benchmarks/read_path.py --seconds 3``.  The server is stopped by PID.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from dqlitepy_server import DqlitepyCluster, DqlitepyServer  # noqa: E402

import dqlitepy  # noqa: E402
from benchmarks.lean_write_path import _cpu_seconds, summarize  # noqa: E402
from benchmarks.workloads import WORKLOADS  # noqa: E402


def measure(
    conn: dqlitepy.Connection, name: str, pid: int, seconds: float, profile: Path | None
) -> None:
    op = WORKLOADS[name].make_op(conn, random.Random(1))
    op()  # warm the statement cache
    spy = None
    if profile is not None:
        out = profile / f"{name}.txt"
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--format",
                "raw",
                "--nonblocking",
                "--gil",
                "-r",
                "200",
                "-o",
                str(out),
                "-p",
                str(pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
    cpu0, t0, n = _cpu_seconds(pid), time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        op()
        n += 1
    elapsed, cpu = time.perf_counter() - t0, _cpu_seconds(pid) - cpu0
    print(f"{name}: {n / elapsed:,.2f} ops/s, server CPU {cpu * 1000 / n:.3f} ms/op", flush=True)
    if spy is not None:
        spy.send_signal(2)
        spy.wait(timeout=30)
        print(summarize(profile / f"{name}.txt"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workloads", default="read,scan")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument(
        "--standalone", action="store_true", help="a server without Raft: what reads cost apart"
    )
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    with DqlitepyServer() if args.standalone else DqlitepyCluster.formed(1) as cluster:
        node = cluster if isinstance(cluster, DqlitepyServer) else cluster.nodes[0]
        assert node.process is not None
        conn = dqlitepy.connect("bench", servers=[node.address], timeout=30)
        try:
            for name in args.workloads.split(","):
                WORKLOADS[name].setup(conn)
                conn.commit()
                measure(conn, name, node.process.pid, args.seconds, args.profile)
        finally:
            conn.close()


if __name__ == "__main__":
    main()
