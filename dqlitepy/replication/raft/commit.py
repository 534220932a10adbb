"""The leader counts its own copy of an entry toward a majority only once it is durable.

**Sending before syncing (Raft thesis §10.2.1).**  The leader appends the
commands of a batch with the journal's ``append_unsynced``, sends them to the
followers, and only then syncs its own copy (``flush``, :mod:`.commands`), so
that its fsync and the followers' overlap instead of running in series.  The
thesis allows that as long as the leader does not count itself toward the
majority of an entry before that entry is durable on its own disk.

PySyncObj's commit rule (in ``SyncObj._onTick``) always counts the leader,
for every entry of its log.  Here every assignment to PySyncObj's commit
index passes through :class:`CommitMixin`'s property: while this node leads,
an index beyond the journal's ``durable_index`` stands only if the followers
alone hold it on a majority (their acknowledgements come after their own
sync, :mod:`.messages`); otherwise the commit index stops at the last entry of
this term that the leader may count itself for.  In the code as it is, the
leader's tick thread syncs in the same call that sent the entries, before it
processes any answer, so this rule never actually lowers a commit index; it
is there so that the safety of the commit index does not depend on that
ordering (a sync moved to another thread, or followers' answers read earlier,
would still be safe).

What a failure between the two steps means for the submitters is in
:mod:`.commands`; a journal without ``durable_index`` (PySyncObj's
MemoryJournal) counts as durable throughout.

**Announcing a commit.**  PySyncObj (without batching) sends every follower an
AppendEntries as soon as the leader applied newly committed entries, only to
carry the new commit index; each follower answers it.  With one writer that
doubled the messages of every commit (four sent and four received by a 3-node
leader instead of two and two), each one checked, encoded, MAC'd and decoded
in Python.  Here the announcement waits :data:`COMMIT_ANNOUNCE_DELAY`: the
AppendEntries of the next write, when one comes sooner, carries the commit
index instead (as in C Raft, where followers learn it from the next append or
heartbeat).  Submitters are not affected (the leader answers them when it
applies); a follower applies a commit at most that much later, and a read
served by a follower (ReadIndex) may wait that much longer for it.
"""

from __future__ import annotations

import time

from pysyncobj import SyncObj

from .base import RaftBase
from .config import LEADER

__all__ = ["COMMIT_ANNOUNCE_DELAY", "CommitMixin"]

#: How long a leader holds back a message whose only news is the commit index (seconds).
COMMIT_ANNOUNCE_DELAY = 0.02


class CommitMixin(RaftBase):
    """PySyncObj's commit index, never counting the leader's copy before it is durable."""

    #: The value behind PySyncObj's ``__raftCommitIndex``.
    _commit_index: int

    def _init_commit(self) -> None:
        self._commit_index = 0

    @property
    def _SyncObj__raftCommitIndex(self) -> int:
        return self._commit_index

    @_SyncObj__raftCommitIndex.setter
    def _SyncObj__raftCommitIndex(self, index: int) -> None:
        # The state is unset while SyncObj.__init__ reads the stored commit index.
        if index > self._commit_index and getattr(self, "_SyncObj__raftState", None) == LEADER:
            index = self._countable_commit(self._commit_index, index)
        self._commit_index = index

    def _SyncObj__applyLogEntries(self) -> bool:
        # PySyncObj's answer True means "send AppendEntries now" (see the module docstring).
        announce = bool(SyncObj._SyncObj__applyLogEntries(self))
        if announce and getattr(self, "_SyncObj__raftState", None) == LEADER:
            due = time.monotonic() + COMMIT_ANNOUNCE_DELAY
            if due < self._SyncObj__newAppendEntriesTime:
                self._SyncObj__newAppendEntriesTime = due
            return False
        return announce

    def _commit_alone(self) -> None:
        """A single voter: commit and apply its durable entries now, in this tick.

        Its own copy is the majority, so the entries the leader just synced are
        committed (Raft's rule: the last of them is of its term).  PySyncObj
        would only see that at the start of the next tick, which costs every
        write of a one-voter cluster a second tick (a wake-up through the
        notifier pipe, a ``poll``, the tick's timers and callbacks) before its
        submitter hears the outcome.  The commit index goes through the same
        rule as PySyncObj's (:meth:`_countable_commit`: never past what the
        journal holds durably), and the entries are applied as the tick would
        apply them.
        """
        if self._SyncObj__otherNodes or self._SyncObj__raftState != LEADER:
            return
        previous = self._commit_index
        _command, last, term = self._SyncObj__raftLog[-1]
        if last <= previous or term != self._SyncObj__raftCurrentTerm:
            return  # nothing new, or (Figure 8) not of this term: the tick's rule decides
        self._SyncObj__raftCommitIndex = last
        committed = self._commit_index
        if committed == previous:
            return  # not durable yet: the tick commits it once it is
        self._SyncObj__raftLog.setRaftCommitIndex(committed)
        self._SyncObj__leaderCommitIndex = committed
        self._SyncObj__applyLogEntries()

    def _countable_commit(self, current: int, proposed: int) -> int:
        """The highest index up to ``proposed`` that a majority holds durably, else ``current``.

        ``proposed`` is what PySyncObj computed counting this leader for every entry.
        Raft commits by counting only entries of the leader's term (Figure 8), which
        PySyncObj checked for ``proposed`` and which is checked again here for any
        lower index chosen instead.
        """
        durable = getattr(self._SyncObj__raftLog, "durable_index", proposed)
        durable = 0 if durable is None else int(durable)
        if proposed <= durable:
            return proposed
        others = self._SyncObj__otherNodes
        match = self._SyncObj__raftMatchIndex
        term = self._SyncObj__raftCurrentTerm
        for index in range(proposed, current, -1):
            if index > durable:
                holders = sum(1 for node in others if match.get(node, 0) >= index)
                if holders <= (len(others) + 1) / 2:
                    continue  # without this leader's copy, no majority
            entry = self._SyncObj__getEntries(index, 1)
            if entry and entry[0][2] == term:
                return index
        return current
