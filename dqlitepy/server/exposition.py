"""A node's figures as Prometheus metric families: a collector read at scrape time.

Nothing on the write path knows Prometheus: the node counts in plain ints and lists
(``server/stats.py``, ``replication/stats.py``), and :class:`NodeCollector` turns
one :class:`~dqlitepy.server.stats.NodeMetrics` into metric families when
``prometheus_client`` asks (a custom collector, as its documentation describes
for proxies of other systems' figures).  Every metric is listed with its meaning
in ``docs/metrics.md``.

``prometheus_client`` is an optional dependency (``dqlitepy[metrics]``): it is
imported inside the functions, so that this module, and a node serving no
metrics, load without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ..replication.stats import HistogramData, RaftStats
from .stats import NodeMetrics

if TYPE_CHECKING:
    from prometheus_client.core import HistogramMetricFamily, Metric

__all__ = ["NodeCollector"]

_STATES = ("follower", "candidate", "leader")
_ROLES = ("voter", "standby", "spare")


def _label(text: str) -> str:
    """A label value that encodes as UTF-8 whatever a client named its database."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _observe(family: HistogramMetricFamily, labels: list[str], data: HistogramData) -> None:
    buckets = [
        ("+Inf" if math.isinf(bound) else repr(float(bound)), float(count))
        for bound, count in data["buckets"]
    ]
    family.add_metric(labels, buckets, data["sum"])


class NodeCollector:
    """Collects a node's figures when Prometheus scrapes (a ``prometheus_client`` Collector).

    Args:
        metrics: returns the node's figures (``NodeServer.metrics``).
    """

    def __init__(self, metrics: Callable[[], NodeMetrics]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """Every family, from one reading of the node's figures."""
        figures = self._metrics()
        yield from _node_families(figures)
        yield from _request_families(figures)
        raft = figures["raft"]
        if raft is not None:
            yield from _raft_families(raft)
            yield from _raft_histograms(raft)
            yield from _peer_families(raft)


def _node_families(figures: NodeMetrics) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    node = figures["node"]
    info = GaugeMetricFamily(
        "dqlitepy_node_info",
        "This node: its id, address and mode.",
        labels=["id", "address", "mode"],
    )
    info.add_metric([f"{node['id']:x}", node["address"], node["mode"]], 1)
    yield info
    yield GaugeMetricFamily(
        "dqlitepy_client_connections", "Client connections open.", value=figures["connections"]
    )
    yield CounterMetricFamily(
        "dqlitepy_commits", "Transactions applied from the Raft log.", value=figures["commits"]
    )
    sizes = GaugeMetricFamily(
        "dqlitepy_database_size_bytes",
        "Bytes of each database's file and WAL on this node.",
        labels=["database", "file"],
    )
    for name, size in sorted(figures["databases"].items()):
        sizes.add_metric([_label(name), "main"], size["file"])
        sizes.add_metric([_label(name), "wal"], size["wal"])
    yield sizes


def _request_families(figures: NodeMetrics) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    requests = CounterMetricFamily(
        "dqlitepy_requests",
        "Client requests answered, by type and outcome.",
        labels=["type", "outcome"],
    )
    for kind, outcomes in sorted(figures["requests"].items()):
        for outcome, count in outcomes.items():
            requests.add_metric([kind, outcome], count)
    yield requests
    latency = HistogramMetricFamily(
        "dqlitepy_request_duration_seconds",
        "Time from a request's arrival to its last response sent, by type.",
        labels=["type"],
    )
    for kind, data in sorted(figures["request_seconds"].items()):
        _observe(latency, [kind], data)
    yield latency


def _gauge(name: str, documentation: str, value: float) -> Metric:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, documentation, value=value)


def _raft_families(raft: RaftStats) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield _gauge("dqlitepy_raft_term", "The current Raft term.", raft["term"])
    state = GaugeMetricFamily(
        "dqlitepy_raft_state", "1 for this node's Raft state.", labels=["state"]
    )
    for name in _STATES:
        state.add_metric([name], 1 if raft["state"] == name else 0)
    yield state
    role = GaugeMetricFamily(
        "dqlitepy_raft_role", "1 for this node's role in the configuration.", labels=["role"]
    )
    for name in _ROLES:
        role.add_metric([name], 1 if raft["role"] == name else 0)
    yield role
    leader = GaugeMetricFamily(
        "dqlitepy_raft_leader_info",
        "The leader this node knows (absent: none).",
        labels=["address"],
    )
    if raft["leader"] is not None:
        leader.add_metric([raft["leader"]], 1)
    yield leader
    yield _gauge(
        "dqlitepy_raft_has_leader", "1 if this node knows a leader.", raft["leader"] is not None
    )
    yield _gauge(
        "dqlitepy_raft_commit_index", "Index of the last entry known committed.",
        raft["commit_index"],
    )
    yield _gauge(
        "dqlitepy_raft_applied_index", "Index of the last entry applied.", raft["applied_index"]
    )
    yield _gauge(
        "dqlitepy_raft_last_index", "Index of the last entry of this node's log.",
        raft["last_index"],
    )
    yield _gauge(
        "dqlitepy_raft_leader_commit_index",
        "The commit index the leader last sent this node (its own on a leader).",
        raft["leader_commit_index"],
    )
    yield CounterMetricFamily(
        "dqlitepy_raft_elections", "Elections this node started.", value=raft["elections"]
    )
    yield CounterMetricFamily(
        "dqlitepy_raft_elections_won", "Elections this node won.", value=raft["elections_won"]
    )
    snapshots = CounterMetricFamily(
        "dqlitepy_raft_snapshots",
        "Snapshots written (log compaction) or installed, by outcome.",
        labels=["kind", "outcome"],
    )
    for kind, figures in sorted(raft["snapshots"].items()):
        snapshots.add_metric([kind, "ok"], figures["ok"])
        snapshots.add_metric([kind, "failed"], figures["failed"])
    yield snapshots


def _raft_histograms(raft: RaftStats) -> Iterator[Metric]:
    from prometheus_client.core import HistogramMetricFamily

    batches = HistogramMetricFamily(
        "dqlitepy_raft_batch_entries", "Entries a leader appended together (group commit)."
    )
    _observe(batches, [], raft["batch_entries"])
    yield batches
    fsync = HistogramMetricFamily(
        "dqlitepy_raft_journal_fsync_seconds", "Duration of the Raft journal's fdatasync calls."
    )
    _observe(fsync, [], raft["journal_fsync_seconds"])
    yield fsync
    durations = HistogramMetricFamily(
        "dqlitepy_raft_snapshot_duration_seconds",
        "Time taken by the snapshots written or installed.",
        labels=["kind"],
    )
    for kind, figures in sorted(raft["snapshots"].items()):
        _observe(durations, [kind], figures["seconds"])
    yield durations


def _peer_families(raft: RaftStats) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily

    match = GaugeMetricFamily(
        "dqlitepy_raft_peer_match_index",
        "On the leader: the last entry each voter and standby acknowledged.",
        labels=["peer"],
    )
    lag = GaugeMetricFamily(
        "dqlitepy_raft_peer_lag_entries",
        "On the leader: entries of its log each voter and standby has not acknowledged.",
        labels=["peer"],
    )
    contact = GaugeMetricFamily(
        "dqlitepy_raft_peer_last_contact_seconds",
        "On the leader: seconds since each voter and standby last answered.",
        labels=["peer"],
    )
    for address, peer in sorted(raft["peers"].items()):
        match.add_metric([address], peer["match_index"])
        lag.add_metric([address], peer["lag"])
        contact.add_metric([address], peer["last_contact"])
    yield match
    yield lag
    yield contact
