"""Figures about this node's Raft, for monitoring: counted on Raft's thread, read anywhere.

Elections started and won are counted by :mod:`.storage` (which owns the
overrides of PySyncObj's term change and leader start), group-commit batch
sizes by :mod:`.commands`; both are plain ints and a
:class:`~dqlitepy.replication.stats.Histogram` written by Raft's thread alone.
:meth:`StatsMixin.raft_figures` reads them with PySyncObj's state from any
thread without waking Raft's: every read copies a value or a container in one
step (the GIL makes a ``dict``/``set`` copy atomic), so a scrape never waits for a
busy tick nor disturbs one.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ...wire import NodeRole
from ..stats import SIZE_BUCKETS, Histogram, HistogramData, PeerStats, RaftFigures
from .base import RaftBase
from .config import CANDIDATE, FOLLOWER, LEADER

__all__ = ["StatsMixin"]

_STATES = {FOLLOWER: "follower", CANDIDATE: "candidate", LEADER: "leader"}


def _empty() -> HistogramData:
    return Histogram().data()


class StatsMixin(RaftBase):
    """Counts elections and group-commit batches; reads the node's state for monitoring."""

    def _init_stats(self) -> None:
        self._elections = 0
        self._elections_won = 0
        self._batch_entries = Histogram(SIZE_BUCKETS)

    def raft_figures(self) -> RaftFigures:
        """This node's Raft figures, read from any thread (see the module docstring)."""
        state = int(self._SyncObj__raftState)
        commit = int(self._SyncObj__raftCommitIndex)
        leader = self._SyncObj__raftLeader
        leader_commit = self._SyncObj__leaderCommitIndex
        journal = self._SyncObj__raftLog
        fsyncs = getattr(journal, "fsync_seconds", None)  # PySyncObj's MemoryJournal has none
        return {
            "state": _STATES.get(state, "follower"),
            "role": self._own_role(),
            "term": int(self._SyncObj__raftCurrentTerm),
            "leader": None if leader is None else str(leader.id),
            "commit_index": commit,
            "applied_index": int(self._SyncObj__raftLastApplied),
            "last_index": self._last_index(),
            "leader_commit_index": (
                commit if state == LEADER or leader_commit is None else int(leader_commit)
            ),
            "elections": self._elections,
            "elections_won": self._elections_won,
            "batch_entries": self._batch_entries.data(),
            "journal_fsync_seconds": _empty() if fsyncs is None else fsyncs.data(),
            "peers": self._peer_figures() if state == LEADER else {},
        }

    def _own_role(self) -> str:
        node = self.selfNode
        role = None if node is None else dict(self._roles).get(str(node.id))
        return NodeRole(NodeRole.SPARE if role is None else role).name.lower()

    def _last_index(self) -> int:
        try:
            return int(self._SyncObj__getCurrentLogIndex())
        except IndexError:  # the log is being replaced by a snapshot right now
            return 0

    def _peer_figures(self) -> dict[str, PeerStats]:
        """On a leader: each replicated peer's match index, lag and silence (copies)."""
        now = time.monotonic()
        last = self._last_index()
        match: dict[Any, int] = dict(self._SyncObj__raftMatchIndex)
        answered: dict[Any, float] = dict(self._SyncObj__lastResponseTime)
        peers = set(self._SyncObj__otherNodes) | set(self._SyncObj__readonlyNodes)
        figures: dict[str, PeerStats] = {}
        for node in peers:
            matched = int(match.get(node, 0))
            heard = answered.get(node)
            figures[str(node.id)] = {
                "match_index": matched,
                "lag": max(0, last - matched),
                "last_contact": math.inf if heard is None else max(0.0, now - heard),
            }
        return figures
