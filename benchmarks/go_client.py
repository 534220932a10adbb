"""go-dqlite's own benchmark, ``dqlite-benchmark``, on one C dqlite node: a Go-client baseline.

``dqlite-benchmark`` is not a client: it is a dqlite node (go-dqlite's ``app``) that runs
the workload through itself, so it cannot drive a dqlitepy node (it could only join a
cluster as a C Raft member). Run alone, it shows what a Go client gets from C dqlite on the
same machine, next to what dqlitepy's Python driver gets from each system
(``--go-client``, ``kvwrite`` and ``kvreadwrite`` on 1 node).

It writes one file per worker and kind of operation (``N-exec-TS``, ``N-query-TS``):
``n``, ``n_err``, then ``measurements`` (start in ns, latency in ms, one per line) and
``errors`` (start in ns, message). Its process holds client and server, so no server CPU
per operation is reported for it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .measure import Sample
from .systems import free_port

__all__ = ["DQLITE_BENCHMARK", "SYSTEM", "available", "run"]

DQLITE_BENCHMARK = "/usr/bin/dqlite-benchmark"
SYSTEM = "dqlite, Go client"
WORKLOADS = ("kvwrite", "kvreadwrite")
_GRACE = 60.0


def available() -> bool:
    return Path(DQLITE_BENCHMARK).exists()


def _parse(path: Path, sample: Sample) -> None:
    section = ""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("measurements"):
            section = "measurements"
        elif line == "errors":
            section = "errors"
        elif not line.strip() or section == "":
            continue
        elif section == "measurements":
            sample.latencies.append(float(line.split()[1]) / 1e3)
        else:
            message = line.partition(" ")[2]
            sample.errors[re.sub(r"\d+", "N", message)[:60]] += 1


def run(workload: str, clients: int, seconds: float) -> Sample:
    """``dqlite-benchmark --workload WORKLOAD --workers CLIENTS`` on a fresh node."""
    duration = max(1, round(seconds))
    directory = Path(tempfile.mkdtemp(prefix="dqlitepy-gobench-"))
    address = f"127.0.0.1:{free_port()}"
    argv = [
        DQLITE_BENCHMARK, "--db", address, "--driver", "--cluster", address,
        "--dir", str(directory), "--workload", workload, "--workers", str(clients),
        "--duration", str(duration), "--cluster-timeout", "30",
    ]  # fmt: skip
    log = directory / "log"
    try:
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
            try:
                status = process.wait(duration + _GRACE)
            finally:
                if process.poll() is None:
                    process.kill()  # this PID only
                    process.wait(10)
        if status != 0:
            raise RuntimeError(f"dqlite-benchmark exited with {status}: {log.read_text()[-500:]}")
        sample = Sample(elapsed=float(duration), server_cpu=float("nan"), client_cpu=float("nan"))
        for path in (directory / address / "results").iterdir():
            _parse(path, sample)
        sample.ops = len(sample.latencies)
        return sample
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(directory)
