"""Figures about replication, counted where things happen and read whenever asked.

The write path is fast and must stay so: nothing here takes a lock or calls into a
metrics library.  A :class:`Histogram` is a list of plain ints that exactly one
thread writes (Raft's, the journal's writer under the lock it already holds, the
snapshot writer); readers on other threads copy it, and may see one observation
half counted (in the bucket, not yet in the sum), which a figure that moves
anyway can afford.  :meth:`~dqlitepy.replication.replicator.Replicator.stats`
gathers them as plain data (:class:`RaftStats`); the server exports them
(``docs/metrics.md``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Final, TypedDict

__all__ = [
    "LATENCY_BUCKETS",
    "SIZE_BUCKETS",
    "Histogram",
    "HistogramData",
    "PeerStats",
    "RaftFigures",
    "RaftStats",
    "SnapshotKind",
    "SnapshotStats",
    "histogram_data",
]

#: Upper bounds (seconds) for latencies: an fsync, a request, a commit.
LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Upper bounds for counts of things (entries in one group commit: at most 1024).
SIZE_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)


class HistogramData(TypedDict):
    """A histogram as plain data, the way Prometheus exports one.

    ``buckets`` holds ``(upper bound, observations <= it)`` pairs, cumulative, in
    increasing order, the last bound being ``math.inf`` (its count is ``count``).
    """

    buckets: list[tuple[float, int]]
    count: int
    sum: float


def histogram_data(bounds: Sequence[float], counts: Sequence[int], total: float) -> HistogramData:
    """:class:`HistogramData` from per-bucket counts (``len(bounds) + 1`` of them, the
    last one for values above every bound)."""
    buckets: list[tuple[float, int]] = []
    running = 0
    for bound, count in zip([*bounds, math.inf], counts, strict=True):
        running += count
        buckets.append((bound, running))
    return {"buckets": buckets, "count": running, "sum": total}


class Histogram:
    """Observations counted in fixed buckets; one thread writes, any thread reads.

    Args:
        bounds: the buckets' upper bounds, increasing (``math.inf`` is added).
    """

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (the writer's thread only: no lock)."""
        # bisect_left: a value equal to a bound belongs to that bucket ("le").
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def data(self) -> HistogramData:
        """The observations so far (a copy)."""
        return histogram_data(self._bounds, list(self._counts), self._sum)


class PeerStats(TypedDict):
    """What a leader knows of one voter or standby it replicates to."""

    #: The last index of the leader's log the peer acknowledged having.
    match_index: int
    #: Entries of the leader's log the peer has not acknowledged.
    lag: int
    #: Seconds since the peer last answered (since the leader began replicating to it,
    #: if it has not answered yet; ``math.inf`` if unknown).
    last_contact: float


class SnapshotKind(TypedDict):
    """Snapshots of one kind: how many succeeded, failed, and how long the good ones took."""

    ok: int
    failed: int
    seconds: HistogramData


class RaftFigures(TypedDict):
    """The Raft core's own figures (all of :class:`RaftStats` but the snapshots).

    Read without stopping Raft's thread: each figure is current, the set of them
    is not one atomic snapshot (a commit index may be a step ahead of the term).
    """

    #: "leader", "follower" or "candidate".
    state: str
    #: This node's role in the configuration: "voter", "standby" or "spare".
    role: str
    term: int
    #: The address of the leader this node knows, or None.
    leader: str | None
    commit_index: int
    applied_index: int
    #: The index of the last entry of this node's log.
    last_index: int
    #: The commit index the leader last sent this node (a follower's view of how far
    #: the cluster is; the commit index itself on a leader).
    leader_commit_index: int
    #: Elections this node started (as candidate), and those it won.
    elections: int
    elections_won: int
    #: Entries the leader appended together, one observation per group commit.
    batch_entries: HistogramData
    #: fdatasync calls of the Raft journal.
    journal_fsync_seconds: HistogramData
    #: On a leader: each voter and standby by address (empty elsewhere).
    peers: dict[str, PeerStats]


class RaftStats(RaftFigures):
    """One node's Raft figures (:meth:`Replicator.stats`), as plain data."""

    #: "written" (log compaction on this node) and "installed" (received from a
    #: leader, or loaded at start-up).
    snapshots: dict[str, SnapshotKind]


class SnapshotStats:
    """Counts of snapshots written and installed, with their durations.

    Each kind has one writer at a time (the snapshot writer thread, Raft's thread).
    """

    KINDS: Final = ("written", "installed")

    def __init__(self) -> None:
        self._ok = dict.fromkeys(self.KINDS, 0)
        self._failed = dict.fromkeys(self.KINDS, 0)
        self._seconds = {kind: Histogram() for kind in self.KINDS}

    def succeeded(self, kind: str, seconds: float) -> None:
        """A snapshot of ``kind`` is complete; it took ``seconds``."""
        self._ok[kind] += 1
        self._seconds[kind].observe(seconds)

    def failed(self, kind: str) -> None:
        """A snapshot of ``kind`` failed (or was postponed)."""
        self._failed[kind] += 1

    def data(self) -> dict[str, SnapshotKind]:
        """Every kind's figures (copies)."""
        return {
            kind: {
                "ok": self._ok[kind],
                "failed": self._failed[kind],
                "seconds": self._seconds[kind].data(),
            }
            for kind in self.KINDS
        }
