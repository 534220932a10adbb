"""The two systems under test, as clusters of 1 or 3 nodes on loopback.

- ``dqlite``: ``dqlite-demo`` processes (C libdqlite through go-dqlite's ``app``), started
  by ``tests/dqlite_cluster.py``;
- ``dqlitepy``: ``dqlitepy server`` processes sharing a cluster key, started by
  ``tests/dqlitepy_server.py``. One node is a one-voter Raft cluster, as a lone
  ``dqlite-demo`` is, so both commit through a Raft log on disk.

Each cluster is a context manager yielding a :class:`Cluster`: the client addresses and
the server processes' PIDs, whose CPU time :func:`cpu_seconds` reads from ``/proc``. Every
process is killed by PID and every directory removed on exit, also after an exception or
Ctrl-C (the harness modules do that).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_TESTS = str(REPO / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from dqlite_cluster import DQLITE_DEMO, DqliteDemoCluster  # noqa: E402
from dqlitepy_server import DqlitepyCluster, DqlitepyServer, free_port  # noqa: E402

__all__ = [
    "ONLY_WORKLOADS",
    "SINGLE_NODE",
    "SYSTEMS",
    "Cluster",
    "cpu_seconds",
    "free_port",
    "missing_programs",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cluster:
    """A running cluster: where clients connect, and which processes serve them."""

    system: str
    addresses: list[str]
    pids: list[int]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (all their threads).

    Fields 14 and 15 of ``/proc/PID/stat`` (utime, stime), counted after the command name,
    which is in parentheses and may hold spaces. A process that is gone counts 0.
    """
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of the whole line
    return total / _CLOCK_TICKS


@contextmanager
def dqlite_cluster(nodes: int) -> Iterator[Cluster]:
    """``nodes`` dqlite-demo processes forming one cluster."""
    with DqliteDemoCluster(verbose=False) as cluster:
        cluster.start(nodes)
        yield Cluster("dqlite", list(cluster.addresses), list(cluster.pids.values()))


@contextmanager
def dqlitepy_cluster(nodes: int) -> Iterator[Cluster]:
    """``nodes`` dqlitepy server processes forming one cluster."""
    with DqlitepyCluster.formed(nodes) as cluster:
        pids = [n.process.pid for n in cluster.nodes if n.process is not None]
        yield Cluster("dqlitepy", cluster.addresses, pids)


@contextmanager
def dqlitepy_standalone(nodes: int) -> Iterator[Cluster]:
    """One ``dqlitepy server`` without a cluster key: no Raft, commits in SQLite alone."""
    if nodes != 1:
        raise ValueError("dqlitepy-standalone is a single node (--nodes 1)")
    with DqlitepyServer() as server:
        assert server.process is not None
        yield Cluster("dqlitepy-standalone", [server.address], [server.process.pid])


@contextmanager
def python_floor(nodes: int) -> Iterator[Cluster]:
    """``benchmarks/read_floor.py``'s floor server, a bound rather than a system: for the
    ``read`` workload the least a Python server does per point read (no Raft, no limits,
    no metrics); for ``scan`` the cost of the send alone (it replays the result it encoded
    at the first scan). Other requests go through dqlitepy's codec, unmeasured."""
    if nodes != 1:
        raise ValueError("python-floor is a single node (--nodes 1)")
    from .read_floor import floor_server

    with floor_server(filled=False) as (address, pid):
        yield Cluster("python-floor", [address], [pid])


# Systems that exist only as one node: the suite skips them for larger clusters.
SINGLE_NODE = frozenset({"dqlitepy-standalone", "python-floor"})
# Systems that serve only some workloads: the suite skips the others on them.
ONLY_WORKLOADS = {"python-floor": frozenset({"read", "scan"})}

SYSTEMS: dict[str, Callable[[int], AbstractContextManager[Cluster]]] = {
    "dqlite": dqlite_cluster,
    "dqlitepy": dqlitepy_cluster,
    "dqlitepy-standalone": dqlitepy_standalone,
    "python-floor": python_floor,
}


def missing_programs() -> list[str]:
    """The programs the suite needs that this machine lacks."""
    return [] if Path(DQLITE_DEMO).exists() else [f"{DQLITE_DEMO} (apt-get install go-dqlite)"]
