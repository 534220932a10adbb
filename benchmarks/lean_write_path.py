"""Write-path throughput and latency of a 3-node dqlitepy cluster, optionally profiled.

Measures small INSERT commits on a fresh cluster per run and prints the median of
the runs (commits/s, p50 and p99 latency of one commit):

- ``--writers 1``: one connection, sequential commits;
- ``--writers 16``: 16 threads, each with its own connection, for the same time.

Modes (``--mode``), all one row per commit:

- ``autocommit``: ``isolation_level=None``, ``INSERT`` (one round trip);
- ``default``: ``sqlite3``'s default transaction control: the driver sends
  ``BEGIN``, the ``INSERT``, then ``commit()`` sends ``COMMIT`` (three round trips);
- ``returning``: autocommit ``INSERT ... RETURNING k`` (the driver then asks for
  ``last_insert_rowid()``);
- ``blob``: autocommit ``INSERT`` of a 256 KiB ``randomblob`` made by the server
  (a commit of ~65 pages: what copying and encoding pages costs).

``--profile DIR`` runs py-spy (``--format raw --threads --nonblocking``) on the
leader, one follower and this (client) process during the first run's
measurement and summarises each profile (``--summarize FILE`` does it again).

Run: ``python benchmarks/lean_write_path.py --writers 16 --runs 3``.  Every
process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from dqlitepy_server import DqlitepyCluster  # noqa: E402

import dqlitepy  # noqa: E402

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _connect(servers: list[str], mode: str) -> dqlitepy.Connection:
    if mode == "default":
        return dqlitepy.connect("lean", servers=servers, timeout=10)
    return dqlitepy.connect("lean", servers=servers, isolation_level=None, timeout=10)


BLOB_BYTES = 256 * 1024


def _commit_one(conn: dqlitepy.Connection, mode: str) -> None:
    if mode == "blob":
        conn.execute("INSERT INTO kv (v) VALUES (randomblob(?))", (BLOB_BYTES,))
    elif mode == "returning":
        conn.execute("INSERT INTO kv (v) VALUES (?) RETURNING k", ("value",)).fetchall()
    else:
        conn.execute("INSERT INTO kv (v) VALUES (?)", ("value",))
    if mode == "default":
        conn.commit()


def workload(servers: list[str], writers: int, seconds: float, mode: str) -> dict[str, float]:
    setup = dqlitepy.connect("lean", servers=servers, isolation_level=None)
    setup.execute("CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v TEXT)")
    setup.close()
    latencies: list[list[float]] = [[] for _ in range(writers)]
    errors = [0] * writers
    start_line = threading.Barrier(writers)

    def run(i: int) -> None:
        conn = _connect(servers, mode)
        try:
            start_line.wait()
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    _commit_one(conn, mode)
                except dqlitepy.OperationalError:
                    errors[i] += 1
                    continue
                latencies[i].append(time.perf_counter() - start)
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = sorted(x for per_writer in latencies for x in per_writer)
    return {
        "commits/s": len(every) / seconds,
        "p50 ms": statistics.median(every) * 1e3 if every else float("nan"),
        "p99 ms": every[int(len(every) * 0.99)] * 1e3 if every else float("nan"),
        "errors": float(sum(errors)),
    }


def _py_spy(pid: int, out: Path, seconds: float, idle: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            *(["--idle"] if idle else []),
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "dqlitepy/", "lib/python3"):
        if marker in path:
            path = path[path.index(marker) :]
            break
    return f"{match['func']} ({path})"


def summarize(path: Path, top: int = 25) -> str:
    """Top frames of a raw py-spy profile: self % and inclusive %, and samples per thread."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:]
        total += count
        threads[thread.split('"')[1] if '"' in thread else thread] += count
        names = [_frame_name(f) for f in frames]
        if names:
            own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    lines = [f"{path.name}: {total} samples"]
    lines.append("  threads:")
    lines += [f"    {n * 100 / total:5.1f}%  {t}" for t, n in threads.most_common(8)]
    lines.append("  self:")
    lines += [f"    {n * 100 / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {n * 100 / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(args: argparse.Namespace, profile: Path | None) -> dict[str, float]:
    data_dirs = None
    if args.data_root is not None:
        root = Path(tempfile.mkdtemp(prefix="lean-", dir=args.data_root))
        data_dirs = [root / f"node{i}" for i in range(3)]
    try:
        return _measure(args, profile, data_dirs)
    finally:
        if data_dirs is not None:
            shutil.rmtree(data_dirs[0].parent, ignore_errors=True)


def _measure(
    args: argparse.Namespace, profile: Path | None, data_dirs: list[Path] | None
) -> dict[str, float]:
    with DqlitepyCluster.formed(data_dirs=data_dirs) as cluster:
        servers = cluster.addresses
        spies: list[tuple[subprocess.Popen[bytes], Path]] = []
        if profile is not None:
            # A short warm-up: the table exists and the sessions are open before sampling.
            workload(servers, 1, 0.5, args.mode)
            leader = cluster.leader()
            follower = next(a for a in servers if a != leader)
            profile.mkdir(parents=True, exist_ok=True)
            tag = f"{args.mode}-{args.writers}w{'-idle' if args.idle else ''}"
            pids = {
                "leader": cluster.node(leader).process.pid,  # type: ignore[union-attr]
                "follower": cluster.node(follower).process.pid,  # type: ignore[union-attr]
                "client": os.getpid(),
            }
            for role in args.spy.split(","):
                pid = pids[role]
                out = profile / f"{tag}-{role}.txt"
                spies.append((_py_spy(pid, out, args.seconds, args.idle), out))
        leader_pid = cluster.node(cluster.leader()).process.pid  # type: ignore[union-attr]
        before = _cpu_seconds(leader_pid), os.times()
        try:
            result = workload(servers, args.writers, args.seconds, args.mode)
            after = _cpu_seconds(leader_pid), os.times()
            commits = result["commits/s"] * args.seconds
            if commits:
                client = (after[1].user + after[1].system) - (before[1].user + before[1].system)
                result["leader cpu ms/commit"] = (after[0] - before[0]) * 1e3 / commits
                result["client cpu ms/commit"] = client * 1e3 / commits
            return result
        finally:
            for spy, out in spies:
                spy.wait(args.seconds + 30)
                if out.exists():
                    print(summarize(out, args.top), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--mode", choices=("autocommit", "default", "returning", "blob"), default="autocommit"
    )
    parser.add_argument("--profile", type=Path, help="directory for py-spy profiles (first run)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--spy", default="leader,follower,client", help="whom to profile")
    parser.add_argument("--data-root", type=Path, help="where the nodes' data go (/dev/shm...)")
    parser.add_argument("--idle", action="store_true", help="profile waiting threads too")
    parser.add_argument("--summarize", type=Path, nargs="*", help="summarise raw profiles only")
    args = parser.parse_args()
    if args.summarize:
        for path in args.summarize:
            print(summarize(path, args.top))
        return
    results = []
    for run in range(args.runs):
        result = one_run(args, args.profile if run == 0 else None)
        print(f"run {run + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()), flush=True)
        results.append(result)
    median = {key: statistics.median(r[key] for r in results) for key in results[0]}
    print(
        f"median of {args.runs} ({args.mode}, {args.writers} writer(s), {args.seconds:g} s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in median.items())
    )


if __name__ == "__main__":
    main()
