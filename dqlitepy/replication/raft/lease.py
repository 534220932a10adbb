"""Leader lease: linearizable reads without a quorum round (Raft thesis §6.4.1, §4.2.3).

Two halves, one on each side of an AppendEntries:

**Followers do not help depose a live leader early** (§4.2.3).  A node that
accepted an AppendEntries of the current leader less than ``raftMinTimeout``
ago ignores a RequestVote: it neither grants its vote nor takes the
candidate's term.  Only a candidate that received TimeoutNow from its leader
(a leadership transfer, :mod:`.transfer`) may be voted for at once: the
RequestVote of the election that TimeoutNow starts carries ``"transfer":
True``.  A node counts as having heard from a leader when it starts, so a
follower that restarts within a lease does not forget its promise.  A
node's own election timer is unchanged: it expires no sooner than
``raftMinTimeout`` after the last AppendEntries anyway.  A leader is not
concerned: a RequestVote of a newer term still makes it step down, as in
PySyncObj, which ends its lease before it can vote for anyone.

**The lease** (§6.4.1).  Every AppendEntries carries the leader's monotonic
clock at sending (``sent_at``), which the follower echoes in its answer.
Once a majority of the voters, the leader included, answered in the leader's
term messages sent at ``t`` or later, each of them accepted the leader after
``t`` and refuses every (unmarked) vote until ``raftMinTimeout`` later by its
own clock; any newer leader needs one of those votes, so none can be elected
before ``t + raftMinTimeout`` in real time, give or take the clocks' rate
difference.  The lease runs until ``t + raftMinTimeout * (1 - DRIFT_MARGIN)``.
Heartbeats go out every ``appendEntriesPeriod`` (0.1 s), so a leader that
hears from a majority keeps its lease ahead of it by about 0.6 s.

No lease is held:

- before the leader's own no-op is committed (until then its commit index
  may lag what earlier leaders committed);
- once it is not leading, or its term changed;
- from the moment it sends TimeoutNow, for the rest of its term: the target
  may win an election at once, whatever the outcome of the transfer says;
- after a change of the voters: only answers to messages sent after the
  change count, against the new voters;
- when the node was built with ``read_lease=False`` (ReadIndex only).

A read under a valid lease needs no message: its read index is the commit
index when the lease was found valid (see :meth:`LeaseMixin._lease_read_index`),
and it waits, as with ReadIndex, until that index is applied.  Without a lease
:mod:`.reads` falls back to a ReadIndex round.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, NamedTuple

from pysyncobj import SyncObj

from .base import RaftBase
from .config import LEADER

__all__ = ["DRIFT_MARGIN", "LeaseMixin"]

#: The share of ``raftMinTimeout`` the leader gives up for clocks running at
#: different rates.  Only durations are compared, each on one machine's
#: monotonic clock, so offsets do not matter; rates do.  With the leader's
#: clock slow by ``r`` and a follower's fast by ``r``, a margin ``m`` is safe
#: while ``1 - m <= (1 - r) / (1 + r)``, i.e. ``r`` up to about ``m / 2``:
#: 5 % here.  Crystal oscillators err by about 0.01 %, and NTP slews
#: CLOCK_MONOTONIC by at most 0.05 %; the rest absorbs nothing else, since
#: every other delay (scheduling, the GIL, the network) only makes a follower
#: start its refusal later than the leader assumes.
DRIFT_MARGIN = 0.1


class _Lease(NamedTuple):
    """A lease, replaced as a whole so that other threads read it in one step."""

    term: int
    until: float  # on this node's time.monotonic()
    voters: frozenset[Any]  # the voters but this node it was counted with


class LeaseMixin(RaftBase):
    """The leader's lease and the followers' refusal of early votes (see the module docstring)."""

    _read_lease: bool  # False: ReadIndex only
    _lease: _Lease | None  # read by any thread, written on the tick thread
    _lease_acks: dict[Any, float]  # voter -> latest sent_at it answered in _lease_acks_term
    _lease_acks_term: int
    _lease_voters: frozenset[Any]  # the voters the acks were counted with
    _lease_floor: float  # answers to messages sent before this count for nothing
    _lease_void_term: int  # the term in which this node sent TimeoutNow
    _leader_heard: float  # when this node last accepted a leader's AppendEntries
    _transfer_term: int  # the term of the election a TimeoutNow asked this node for
    _lease_reads: int
    _lease_reads_lock: threading.Lock
    _round_sent_at: float | None  # while PySyncObj sends one AppendEntries per follower

    def _init_lease(self, read_lease: bool) -> None:
        self._read_lease = read_lease
        self._lease = None
        self._lease_acks = {}
        self._lease_acks_term = -1
        self._lease_voters = frozenset()
        self._lease_floor = -math.inf
        self._lease_void_term = -1
        # A (re)started node may have acknowledged a leader just before: it
        # keeps the promise as if it had heard from one at start.
        self._leader_heard = time.monotonic()
        self._transfer_term = -1
        self._lease_reads = 0
        self._lease_reads_lock = threading.Lock()
        self._round_sent_at = None

    @property
    def lease_reads(self) -> int:
        """How many reads were served under the lease, without a round."""
        return self._lease_reads

    @property
    def lease_valid(self) -> bool:
        """Whether a read arriving now would be served under the lease."""
        return self._lease_read_index() is not None

    # ---------------------------------------------------------- follower side

    def _heard_leader(self) -> None:
        """An AppendEntries of the current leader (or a newer one) was accepted."""
        self._leader_heard = time.monotonic()

    def _ignores_vote(self, message: dict[str, Any]) -> bool:
        """Whether a RequestVote must be ignored: the leader was heard too recently."""
        if self.raft_state == LEADER or message.get("transfer") is True:
            return False
        quiet: float = time.monotonic() - self._leader_heard
        return quiet < float(self.conf.raftMinTimeout)

    def _timeout_now(self, node: Any, message: dict[str, Any]) -> None:
        """A TimeoutNow PySyncObj will obey: mark the RequestVote of the election it starts."""
        term = self._SyncObj__raftCurrentTerm
        if message.get("term", -1) >= term and node == self._SyncObj__raftLeader:
            self._transfer_term = term + 1

    def _tag_outgoing(self, message: dict[str, Any]) -> None:
        """Add the lease's fields to a message this node sends (transport wrapper, tick thread)."""
        kind = message.get("type")
        if kind == "append_entries":
            sent_at = self._round_sent_at
            message["sent_at"] = time.monotonic() if sent_at is None else sent_at
        elif kind == "timeout_now":
            # The target may be elected as soon as it has this: no lease from
            # now on in this term, before the message leaves.
            self._lease_void_term = self._SyncObj__raftCurrentTerm
            self._lease = None
        elif kind == "request_vote" and message.get("term") == self._transfer_term:
            message["transfer"] = True

    def _SyncObj__sendAppendEntries(self) -> None:
        # One sending time for the AppendEntries PySyncObj sends its followers in
        # one go, read before the first leaves: a time earlier than a message's
        # real sending only shortens the lease it earns (safe), and followers kept
        # up to date get identical messages, which the transport encodes, checks
        # and MACs' body once (adapter.py) instead of once per follower.
        self._round_sent_at = time.monotonic()
        try:
            SyncObj._SyncObj__sendAppendEntries(self)
        finally:
            self._round_sent_at = None

    # ------------------------------------------------------------ leader side

    def _lease_answer(self, node: Any, message: dict[str, Any]) -> None:
        """A follower answered, in our term, an AppendEntries sent at ``sent_at``."""
        sent = message.get("sent_at")
        if not self._read_lease or type(sent) is not float:
            return
        self._lease_reset_if_stale()
        if sent < self._lease_floor or node not in self._lease_voters:
            return
        if sent > self._lease_acks.get(node, -math.inf):
            self._lease_acks[node] = sent
            self._renew_lease()

    def _lease_reset_if_stale(self) -> None:
        """Forget the answers of another term, or counted with other voters."""
        term = self._SyncObj__raftCurrentTerm
        voters = self._SyncObj__otherNodes
        if self._lease_acks_term == term and self._lease_voters == voters:
            return
        if self._lease_acks_term == term:
            # The voters changed: answers to what was sent before prove nothing
            # about the new majority.
            self._lease_floor = time.monotonic()
        self._lease = None
        self._lease_acks = {}
        self._lease_acks_term = term
        self._lease_voters = frozenset(voters)

    def _renew_lease(self) -> None:
        """Extend the lease to what the answers counted so far prove (tick thread)."""
        term = self._SyncObj__raftCurrentTerm
        noop = self._SyncObj__noopIDx
        if (
            self.raft_state != LEADER
            or term == self._lease_void_term
            or not self._voting
            or noop is None
            or self._SyncObj__raftCommitIndex < noop
            or not self._lease_voters
        ):
            return
        others = len(self._lease_voters)
        needed = (others + 1) // 2  # with this node, a majority of others + 1
        times = sorted((self._lease_acks[n] for n in self._lease_acks), reverse=True)
        if len(times) < needed:
            return
        until = times[needed - 1] + self.conf.raftMinTimeout * (1 - DRIFT_MARGIN)
        lease = self._lease
        if lease is None or until > lease.until:
            self._lease = _Lease(term, until, self._lease_voters)

    def _tend_lease(self) -> None:
        """Each tick: drop a lease that ended, or take one up once the no-op commits."""
        if not self._read_lease:
            return
        if self.raft_state != LEADER or not self._voting:
            self._lease = None
            return
        self._lease_reset_if_stale()
        if self._lease is None and self._lease_acks:
            self._renew_lease()

    def _lease_read_index(self) -> int | None:
        """The read index of a read served under the lease now, or None; any thread.

        The clock is read first: if the lease, read after it, is still in
        force, no TimeoutNow had been sent and no other leader elected at that
        instant, which is after the read arrived.  The commit index read next
        is at least what was committed then.
        """
        if not self._read_lease:
            return None
        now = time.monotonic()
        lease = self._lease
        if (
            lease is None
            or now >= lease.until
            or self._SyncObj__raftCurrentTerm != lease.term
            or self._SyncObj__raftState != LEADER
            or not self._voting  # the majority counted this node's own vote
            or self._SyncObj__otherNodes != lease.voters
        ):
            return None
        # Plain attributes and comparisons, no property or max(): every read asks this.
        commit = self._commit_index
        noop = self._SyncObj__noopIDx or 0
        return commit if commit >= noop else noop

    def _count_lease_read(self) -> None:
        with self._lease_reads_lock:  # readers on many threads
            self._lease_reads += 1
