"""What ``import dqlitepy`` costs a client, next to ``import sqlite3``, in the same run.

Each import is timed inside a fresh interpreter (``python -c``), from just before the
``import`` statement to just after, so interpreter start-up is left out.  Every
statement runs ``--runs`` times, interleaved so that a busy machine slows them alike,
and the best and median times are printed with the ratio to ``sqlite3``:

- ``import sqlite3``: the standard library module dqlitepy stands in for;
- ``import dqlitepy``: the driver (``dqlitepy.client``) and the wire layer, no server;
- ``import dqlitepy.sqlalchemy.dialect``: the dialect, SQLAlchemy included;
- ``from dqlitepy.server import NodeServer``: the whole server (APSW, PySyncObj,
  the Raft transport), what a process running a node pays on top.

Bytecode is written and used (``PYTHONDONTWRITEBYTECODE`` is cleared), as for an
installed package; one warm-up run of each statement fills the caches first.

Run: ``python benchmarks/import_time.py [--runs 15]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

STATEMENTS = (
    "import sqlite3",
    "import dqlitepy",
    "import dqlitepy.sqlalchemy.dialect",
    "from dqlitepy.server import NodeServer",
)

_PROBE = "import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"


def _time_once(statement: str, env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(statement=statement)],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each statement")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for statement in STATEMENTS:
        _time_once(statement, env)  # warm-up: bytecode written, files in the page cache
    times: dict[str, list[float]] = {s: [] for s in STATEMENTS}
    for _ in range(args.runs):
        for statement in STATEMENTS:
            times[statement].append(_time_once(statement, env))
    base = min(times["import sqlite3"])
    print(f"{'statement':42} {'best ms':>8} {'median ms':>10} {'best / sqlite3':>15}")
    for statement, runs in times.items():
        best = min(runs)
        print(
            f"{statement:42} {best * 1e3:8.1f} {statistics.median(runs) * 1e3:10.1f} "
            f"{best / base:14.0f}x"
        )


if __name__ == "__main__":
    main()
