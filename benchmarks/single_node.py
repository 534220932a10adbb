"""Single-node write and read rates: a dqlitepy node next to a real dqlite node.

Both servers are driven by the same client (dqlitepy's driver) with the same
workload, in the same run, and the ratios are printed:

- writes: sequential autocommit INSERTs of one small row;
- reads: sequential point SELECTs by primary key;
- scan: one SELECT streaming every row (multi-batch ROWS).

Run: ``python benchmarks/single_node.py [--seconds 5]`` (needs Debian's go-dqlite
for ``dqlite-demo``).  Every process it starts is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import dqlitepy  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(address: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{address} did not come up")


@contextmanager
def _process(argv: list[str], address: str, ready: str | None = None) -> Iterator[str]:
    workdir = Path(tempfile.mkdtemp(prefix="dqlitepy-bench-"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [a.replace("{dir}", str(workdir)) for a in argv]
    log = (workdir / "log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_port(ready or address, process)
        yield address
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def dqlite_demo() -> Iterator[str]:
    """A real C dqlite node (go-dqlite's demo app)."""
    db, api = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    with _process(["dqlite-demo", "-d", db, "-a", api, "-D", "{dir}"], db, ready=api) as address:
        yield address


@contextmanager
def dqlitepy_node() -> Iterator[str]:
    """A dqlitepy node in its own process."""
    address = f"127.0.0.1:{_free_port()}"
    argv = [sys.executable, "-m", "dqlitepy", "server", "-a", address, "-d", "{dir}/data"]
    with _process(argv, address) as served:
        yield served


def _rate(seconds: float, op: Callable[[int], None]) -> float:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            op(n)
            n += 1
    return n / (time.perf_counter() - start)


def measure(address: str, seconds: float) -> dict[str, float]:
    """Run the workload against one server; returns operations per second."""
    conn = dqlitepy.connect("bench", servers=[address], isolation_level=None)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v TEXT)")
        writes = _rate(
            seconds, lambda i: conn.execute("INSERT INTO kv (v) VALUES (?)", (f"value-{i}",))
        )
        count = conn.execute("SELECT max(k) FROM kv").fetchone()[0]
        reads = _rate(
            seconds,
            lambda i: conn.execute("SELECT v FROM kv WHERE k = ?", (i % count + 1,)).fetchone(),
        )
        start = time.perf_counter()
        rows = len(conn.execute("SELECT k, v FROM kv").fetchall())
        scan = rows / (time.perf_counter() - start)
    finally:
        conn.close()
    return {"write tx/s": writes, "point read/s": reads, "scan rows/s": scan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per workload and server")
    args = parser.parse_args()
    with dqlite_demo() as theirs:
        reference = measure(theirs, args.seconds)
    with dqlitepy_node() as ours:
        result = measure(ours, args.seconds)
    print(f"{'workload':<14} {'dqlite-demo':>12} {'dqlitepy':>12} {'ratio':>7}")
    for key, value in reference.items():
        print(f"{key:<14} {value:>12.0f} {result[key]:>12.0f} {result[key] / value:>7.2f}")


if __name__ == "__main__":
    main()
