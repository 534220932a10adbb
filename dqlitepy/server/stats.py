"""A node's figures: requests counted per connection, gathered as plain data when asked.

Each client connection's thread counts its own requests in a
:class:`ConnectionStats` (plain lists of ints: no lock, nothing shared, so the
count is exact and costs a few list increments per request).
:class:`RequestStats` keeps the connections alive now and the sum of those
that closed; a lock guards only that set, taken when a connection opens or
closes and when figures are read, never per request.  :func:`node_metrics`
puts everything the node knows into a :class:`NodeMetrics`, the shape
:meth:`dqlitepy.Node.metrics` returns and ``docs/metrics.md`` describes; the
Prometheus exporter (``server/exposition.py``) reads the same data.
"""

from __future__ import annotations

import bisect
import threading
from typing import Final, TypedDict

from ..replication.stats import LATENCY_BUCKETS, HistogramData, RaftStats, histogram_data
from ..wire import ErrorCode, RequestType

__all__ = [
    "INVALID",
    "OK",
    "OUTCOMES",
    "REQUEST_TYPES",
    "ConnectionStats",
    "DatabaseSize",
    "NodeInfoFigures",
    "NodeMetrics",
    "RequestStats",
    "outcome_of",
    "slot_of",
]

#: The ``type`` of a request: its dqlite name in lower case, or "invalid" for one
#: that could not be decoded.
REQUEST_TYPES: Final = (*(t.name.lower() for t in RequestType), "invalid")
#: How a request ended: a response other than FAILURE, or a FAILURE of these kinds.
OUTCOMES: Final = ("ok", "not_leader", "leadership_lost", "busy", "error")

_SLOTS: Final = {t: i for i, t in enumerate(RequestType)}
#: The slot of a request that could not be decoded, and the outcome "ok".
INVALID: Final = len(REQUEST_TYPES) - 1
OK: Final = 0
_BY_CODE: Final[dict[int, int]] = {
    ErrorCode.NOT_LEADER: OUTCOMES.index("not_leader"),
    ErrorCode.LEADERSHIP_LOST: OUTCOMES.index("leadership_lost"),
}
_BUSY: Final = frozenset({int(ErrorCode.SQLITE_BUSY), 6})  # 6: SQLITE_LOCKED
_ERROR: Final = OUTCOMES.index("error")
_BUCKETS: Final = len(LATENCY_BUCKETS) + 1
_OUTCOMES: Final = len(OUTCOMES)


def outcome_of(code: int) -> int:
    """The outcome (an index into :data:`OUTCOMES`) of a FAILURE with ``code``."""
    known = _BY_CODE.get(code)
    if known is not None:
        return known
    return OUTCOMES.index("busy") if code & 0xFF in _BUSY else _ERROR


def slot_of(request_type: RequestType) -> int:
    """The index into :data:`REQUEST_TYPES` of a request's type."""
    return _SLOTS.get(request_type, INVALID)


class ConnectionStats:
    """One connection's requests: written by its thread only, read by anyone."""

    __slots__ = ("buckets", "counts", "fast_reads", "seconds")

    def __init__(self) -> None:
        #: [type * len(OUTCOMES) + outcome] -> requests
        self.counts = [0] * (len(REQUEST_TYPES) * len(OUTCOMES))
        #: [type * (len(LATENCY_BUCKETS) + 1) + bucket] -> requests
        self.buckets = [0] * (len(REQUEST_TYPES) * _BUCKETS)
        #: [type] -> seconds spent serving them
        self.seconds = [0.0] * len(REQUEST_TYPES)
        #: Reads the read fast path served whole (also counted in ``counts``).
        self.fast_reads = 0

    def record(self, slot: int, outcome: int, seconds: float) -> None:
        """A request of type ``slot`` ended with ``outcome`` after ``seconds``."""
        self.counts[slot * _OUTCOMES + outcome] += 1
        self.buckets[slot * _BUCKETS + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.seconds[slot] += seconds

    def record_ok(self, slot: int, seconds: float) -> None:
        """:meth:`record` of a request that succeeded (the read fast path's call)."""
        self.counts[slot * _OUTCOMES + OK] += 1
        self.buckets[slot * _BUCKETS + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.seconds[slot] += seconds

    def add(self, other: ConnectionStats) -> None:
        """Add ``other``'s figures to these."""
        # list(): a copy in one step, however busy the other connection's thread is.
        self.counts = [a + b for a, b in zip(self.counts, list(other.counts), strict=True)]
        self.buckets = [a + b for a, b in zip(self.buckets, list(other.buckets), strict=True)]
        self.seconds = [a + b for a, b in zip(self.seconds, list(other.seconds), strict=True)]
        self.fast_reads += other.fast_reads


class RequestStats:
    """Every connection's request figures, those closed and those open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[ConnectionStats] = set()
        self._closed = ConnectionStats()

    def opened(self) -> ConnectionStats:
        """Figures for a new connection, to :meth:`closed` when it ends."""
        stats = ConnectionStats()
        with self._lock:
            self._open.add(stats)
        return stats

    def closed(self, stats: ConnectionStats) -> None:
        """A connection ended: keep its figures in the total."""
        with self._lock:
            self._open.discard(stats)
            self._closed.add(stats)

    def total(self) -> ConnectionStats:
        """The sum over every connection so far."""
        total = ConnectionStats()
        with self._lock:
            total.add(self._closed)
            for stats in self._open:
                total.add(stats)
        return total

    def figures(self) -> tuple[dict[str, dict[str, int]], dict[str, HistogramData]]:
        """Requests by type and outcome, and their latency by type (types seen only)."""
        total = self.total()
        counts: dict[str, dict[str, int]] = {}
        latency: dict[str, HistogramData] = {}
        for slot, name in enumerate(REQUEST_TYPES):
            row = total.counts[slot * len(OUTCOMES) : (slot + 1) * len(OUTCOMES)]
            if not any(row):
                continue
            counts[name] = dict(zip(OUTCOMES, row, strict=True))
            buckets = total.buckets[slot * _BUCKETS : (slot + 1) * _BUCKETS]
            latency[name] = histogram_data(LATENCY_BUCKETS, buckets, total.seconds[slot])
        return counts, latency


class DatabaseSize(TypedDict):
    """The bytes one database takes on this node: its file and its WAL."""

    file: int
    wal: int


class NodeInfoFigures(TypedDict):
    """Which node the figures are about."""

    id: int
    address: str
    #: "standalone" (no cluster key), "starting" (Raft not running yet) or "replicated".
    mode: str


class NodeMetrics(TypedDict):
    """Everything :meth:`dqlitepy.Node.metrics` returns (``docs/metrics.md``).

    Counters count from the node's start; nothing here is reset by reading it.
    """

    node: NodeInfoFigures
    #: request type -> outcome -> requests served (types never requested are absent).
    requests: dict[str, dict[str, int]]
    #: request type -> how long serving them took, until the last response was sent.
    request_seconds: dict[str, HistogramData]
    #: Client connections open now (Raft's connections from peers not included).
    connections: int
    #: Transactions this node applied from the Raft log (a replicated node; 0 otherwise).
    commits: int
    #: database name -> its size on this node.
    databases: dict[str, DatabaseSize]
    #: Raft's figures, or None for a node that does not replicate (yet).
    raft: RaftStats | None
