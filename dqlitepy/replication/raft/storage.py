"""What a node does while its Raft log cannot be written.

**Storage failures.**  A journal write that raises inside PySyncObj's tick
aborts the tick half-way (the leader's command callback is lost and its
client waits for a timeout, while heartbeats go on and the leader keeps its
role).  Here a node whose journal cannot write stops taking part in Raft
until it can.

Storage failures
----------------
Raft needs a node's log, term and vote on disk before it answers anything
that reflects them (Figure 2, "Persistent state ... updated on stable storage
before responding to RPCs").  When a :class:`~dqlitepy.replication.journal.DurableJournal` write
fails (``ENOSPC``, ``EDQUOT``, ``EIO``...), the journal refuses writes
(FAILED) until a probe succeeds, and this node, on Raft's thread:

- as leader, asks its most caught-up follower to start an election at once
  (TimeoutNow) and steps down; a command whose entry could not be appended is
  failed with :data:`~.config.STORAGE_FAILED` when the journal proved the
  entry absent (the submitter may say "not stored"), with UNKNOWN_OUTCOME
  otherwise, and always when the sync failed after the entry was sent
  (:mod:`.commands`);
- stands for no election (its timeout is infinite, :mod:`.roles`), grants no
  vote and ignores TimeoutNow (:mod:`.messages`): a vote or a new term it
  cannot persist must not be sent;
- as follower, acknowledges only entries it stored: an append that fails is
  answered "reset" at its log's end, so the leader neither counts it nor
  skips it (:mod:`.messages`);
- keeps answering what needs no write (a heartbeat of its term, a stale
  leader's message), so clients are still sent to the leader;
- probes the journal every ``storage_probe_interval`` seconds (1 s), and
  immediately when :meth:`StorageMixin.request_storage_check` asks (the
  server does when SQLite reports a full disk or an I/O error): once the probe
  works, it restarts its election timer and rejoins as an ordinary member,
  catching up from the leader, without a restart.

The term and vote are also persisted *before* PySyncObj's memory changes
(it changes memory first), so a failed write leaves the node in the state it
can prove.  Nothing here takes a lock that another thread holds for long: the
journal's own lock is contended only by ``close``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pysyncobj import SyncObj

from ..journal import JournalWriteError
from .base import RaftBase
from .config import FOLLOWER, LEADER
from .reads import ReadResult

__all__ = ["StorageMixin"]

log = logging.getLogger("dqlitepy.replication")


class StorageMixin(RaftBase):
    """Leaves the leader role and elections while the journal refuses writes; probes it."""

    _storage_probe_interval: float
    _next_probe: float
    #: Set by any thread (request_storage_check); the rest belongs to the tick thread.
    _probe_requested: bool
    #: A failure was handled and not yet recovered from.
    _storage_down: bool

    def _init_storage(self, probe_interval: float) -> None:
        self._storage_probe_interval = probe_interval
        self._next_probe = 0.0
        self._probe_requested = False
        self._storage_down = False

    @property
    def storage_writable(self) -> bool:
        """False while this node's journal refuses writes (see "Storage failures")."""
        journal = getattr(self, "_SyncObj__raftLog", None)
        return bool(getattr(journal, "writable", True))

    def request_storage_check(self) -> None:
        """Probe the journal's storage at the next tick (any thread; at most once per interval).

        A node that cannot write must step down before its next append fails:
        the server asks for this when SQLite reports a full disk or an I/O error.
        """
        self._probe_requested = True
        self._wake()

    def _watch_storage(self) -> None:
        """Each tick: probe a journal that cannot write (or when asked), once per interval."""
        journal = self._SyncObj__raftLog
        probe = getattr(journal, "probe", None)
        if probe is None:
            return  # a MemoryJournal never fails
        writable = bool(journal.writable)
        if writable and not self._probe_requested and not self._storage_down:
            return
        now = time.monotonic()
        if now < self._next_probe:
            return
        self._probe_requested = False
        self._next_probe = now + self._storage_probe_interval
        if probe():
            if self._storage_down:
                self._storage_recovered()
        else:
            self._storage_failed(journal.failure)

    def _storage_failed(self, cause: BaseException | None) -> None:
        """The journal cannot write (tick thread): leave the leader role and elections."""
        if not self._storage_down:
            self._storage_down = True
            self._next_probe = time.monotonic() + self._storage_probe_interval
            log.error(
                "%s: the Raft log cannot be written (%s): leaving elections until it can",
                self._self_address(),
                cause,
            )
        state = self.raft_state
        if state == LEADER:
            # The most caught-up follower starts an election now rather than
            # after its timeout (when none is caught up, PySyncObj declines).
            self.transferLeadership(None)
            log.warning("%s: this leader cannot write its log: stepping down", self._self_address())
        if state != FOLLOWER:
            self._SyncObj__setState(FOLLOWER)
            self._SyncObj__raftLeader = None
        self.postpone_election()  # never, while the journal refuses writes
        self._fail_reads(ReadResult.LEADERSHIP_LOST)

    def _storage_recovered(self) -> None:
        self._storage_down = False
        log.warning(
            "%s: the Raft log can be written again: rejoining the cluster", self._self_address()
        )
        self.postpone_election()  # a normal timeout again

    def _log_append(self, entries: list[tuple[bytes, int, int]]) -> None:
        """Append consecutive ``(command, index, term)`` entries to the log (tick thread).

        With one sync when the journal can (:meth:`DurableJournal.add_many`: all
        or none); PySyncObj's MemoryJournal (a node without a journal file) only
        has ``add``, so there they go one by one.

        Raises:
            JournalWriteError: as the journal raises it; a journal taking the
                entries one by one may hold a prefix of them (callers compare the
                log's last index with what they appended).
        """
        journal = self._SyncObj__raftLog
        add_many = getattr(journal, "add_many", None)
        if add_many is not None:
            add_many(entries)
            return
        for command, index, term in entries:
            journal.add(command, index, term)

    def _onTick(self, timeToWait: float = 0.0) -> None:  # PySyncObj's name
        try:
            SyncObj._onTick(self, timeToWait)
        except JournalWriteError as exc:
            # A write outside the paths handled above (the commit index, a
            # candidate's new term, log compaction) failed half-way through the tick.
            self._storage_failed(exc)

    def _SyncObj__setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        # PySyncObj changes memory first; a failed write must leave the node
        # in the state it can prove, so the journal goes first.
        self._SyncObj__raftLog.setCurrentTerm(term, votedForNodeId)
        if votedForNodeId is not None and term > self._SyncObj__raftCurrentTerm:
            node = self.selfNode
            if node is not None and votedForNodeId == node.id:
                self._elections += 1  # a new term voting for itself: an election starts
        self._SyncObj__raftCurrentTerm = term
        self._SyncObj__votedForNodeId = votedForNodeId

    def _SyncObj__onBecomeLeader(self) -> None:
        if not self.storage_writable:
            # Elected with votes asked before the journal failed: it cannot
            # append this term's no-op, so it cannot lead.
            self._storage_failed(getattr(self._SyncObj__raftLog, "failure", None))
            return
        try:
            SyncObj._SyncObj__onBecomeLeader(self)
        except JournalWriteError as exc:
            self._storage_failed(exc)  # this term's no-op could not be appended
            return
        self._elections_won += 1
