"""Linearizable reads: ReadIndex (Raft thesis §6.4), which PySyncObj does not have.

A leader holding a lease (:mod:`.lease`, thesis §6.4.1) skips step 2 below:
:meth:`ReadsMixin.read_barrier` then answers on the caller's thread when the
read index is applied already, and :meth:`ReadsMixin.read_index` confirms the
request at once.  Without a lease (a new leader, one that sent TimeoutNow, a
node built with ``read_lease=False``) every read takes a round.

Linearizable reads
------------------
A leader may serve a read only once it knows that no other leader had
committed anything newer when the read arrived.
:meth:`ReadsMixin.read_index`, on Raft's thread:

1. records the read index: the commit index when the request is taken up, but
   at least the index of the leader's no-op (until an entry of its own term is
   committed, a new leader's commit index may lag the cluster's; every entry
   committed by earlier leaders precedes its no-op);
2. confirms leadership with a *round*: every AppendEntries the leader sends
   carries its current round number (``read_round``), a follower echoes it in
   its answer along with its term (:mod:`.messages`), and a round is confirmed
   once a majority of voters (the leader included) answered, in the leader's
   term, a message sent after the round began.  A follower answers in our term
   only while it has not moved to a newer one, so any leader of a newer term
   was elected after the read arrived and anything it commits is concurrent
   with the read;
3. waits until the entries up to the read index are applied.

Rounds are shared: a request arriving while a round is in flight joins the
next one (the running round began before it arrived, so it proves nothing
about leadership at its arrival), which starts as soon as the running round is
confirmed.  Each round sends AppendEntries to every follower at once instead
of waiting for the next heartbeat, so a read costs about one round trip.
Periodic heartbeats carry the round number too, so a round whose messages were
lost completes with the next heartbeat that gets through.  A request fails as
soon as this node stops leading or its term changes; a single voter needs no
round.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .base import RaftBase
from .config import LEADER

__all__ = ["ReadCallback", "ReadResult", "ReadsMixin"]

log = logging.getLogger("dqlitepy.replication")


class ReadResult(enum.IntEnum):
    """How a :meth:`ReadsMixin.read_index` request ended."""

    #: Leadership confirmed after the request arrived, and applied up to its read index.
    CONFIRMED = 0
    #: This node did not lead when the request was taken up.
    NOT_LEADER = 1
    #: This node stopped leading (or saw a newer term) before the request was confirmed.
    LEADERSHIP_LOST = 2
    #: :meth:`ReadsMixin.read_barrier` only: no answer within the timeout.
    TIMEOUT = 3


ReadCallback = Callable[[ReadResult, int], None]


@dataclass(eq=False, slots=True)
class _ReadRequest:
    """One read waiting on Raft's thread (see "Linearizable reads" above)."""

    callback: ReadCallback
    term: int  # the leader's term when the request was taken up
    index: int  # its read index


@dataclass(slots=True)
class _ReadRound:
    """One confirmation of leadership, shared by the requests that arrived before it."""

    number: int  # answers echoing a read_round >= this answer a message sent after it began
    term: int
    requests: list[_ReadRequest]
    acks: set[Any] = field(default_factory=set)  # voters (PeerNode) that answered


class ReadsMixin(RaftBase):
    """ReadIndex on the leader: read rounds confirmed by a quorum; all on the tick thread."""

    _read_number: int  # the latest round; every AppendEntries carries it
    _read_round: _ReadRound | None  # the round in flight
    _read_queue: list[_ReadRequest]  # requests for the next round
    _read_applying: list[_ReadRequest]  # confirmed, waiting for apply
    _read_requests: int
    _read_rounds: int

    def _init_reads(self) -> None:
        self._read_number = 0
        self._read_round = None
        self._read_queue = []
        self._read_applying = []
        self._read_requests = 0
        self._read_rounds = 0

    def read_index(self, callback: ReadCallback) -> None:
        """Ask, from any thread, when a read may be served here (ReadIndex, see above).

        ``callback(result, read_index)`` runs once on Raft's thread, which it
        must not block: CONFIRMED once this node's leadership was confirmed by
        a quorum after the request arrived and the entries up to
        ``read_index`` are applied; NOT_LEADER or LEADERSHIP_LOST otherwise
        (``read_index`` is then 0).  Without an answer from a quorum the
        request waits, until this node steps down.
        """
        self.on_tick(lambda: self._read_arrived(callback))

    def read_barrier(self, timeout: float) -> tuple[ReadResult, int]:
        """:meth:`read_index`, waiting up to ``timeout``: ``(result, read_index)``.

        Under a valid lease (:mod:`.lease`) with the read index applied
        already, it answers on the caller's thread without waking Raft's
        (:meth:`read_index_now`).
        """
        index = self.read_index_now()
        if index is not None:
            return ReadResult.CONFIRMED, index
        if self._SyncObj__raftState != LEADER:
            return ReadResult.NOT_LEADER, 0
        done = threading.Event()
        outcome: list[Any] = [ReadResult.TIMEOUT, 0]

        def callback(result: ReadResult, index: int) -> None:
            outcome[0], outcome[1] = result, index
            done.set()

        self.read_index(callback)
        if not done.wait(timeout):
            # The request stays queued until its round ends; its answer is dropped.
            return ReadResult.TIMEOUT, 0
        return ReadResult(outcome[0]), int(outcome[1])

    def read_index_now(self) -> int | None:
        """The read index of a read arriving now, if it may be served at once; any thread.

        One check for what lets a read skip Raft's thread: this node leads and
        either holds a valid lease (:mod:`.lease`) or is the only voter, and it
        has applied everything up to the read index.  None otherwise (not
        leading, no lease, entries still to apply): :meth:`read_barrier` then
        waits, confirms with a round, or says why not.  Reads served under the
        lease are counted (``lease_reads``).
        """
        if self._SyncObj__otherNodes:
            # Only a lease can spare a round.  (Voters may come or go meanwhile: each
            # way reads the state in its own safe order, and a stale choice of way
            # only errs towards None.)
            index = self._lease_read_index()
            if index is None or self._SyncObj__raftLastApplied < index:
                return None
            with self._lease_reads_lock:  # _count_lease_read, without the call
                self._lease_reads += 1
            return index
        index = self._alone_read_index()  # a single voter never holds a lease
        if index is None or self._SyncObj__raftLastApplied < index:
            return None
        return index

    def _alone_read_index(self) -> int | None:
        """The read index of a leader that is the only voter, or None; any thread.

        A single voter is its own quorum, as :meth:`_read_arrived` says on
        Raft's thread; answering on the caller's spares a one-node cluster a
        wake-up of Raft's thread per read.  The state is read in the order
        that makes a stale view err towards None: leading first, then the
        voters, then the term's no-op and the commit index.
        """
        if self._SyncObj__raftState != LEADER or self._SyncObj__otherNodes:
            return None
        noop = self._SyncObj__noopIDx
        if noop is None:
            return None
        commit = self._commit_index
        return commit if commit >= noop else noop

    @property
    def read_stats(self) -> tuple[int, int]:
        """``(requests, rounds)`` so far: how well concurrent reads share rounds.

        Requests are those taken up on Raft's thread; reads the caller's
        thread answered under the lease are counted by ``lease_reads`` only.
        """
        return self._read_requests, self._read_rounds

    def _read_arrived(self, callback: ReadCallback) -> None:
        """Take a read request up (tick thread): record its read index, join a round."""
        if self.raft_state != LEADER:
            self._finish(callback, ReadResult.NOT_LEADER, 0)
            return
        self._read_requests += 1
        term = int(self._SyncObj__raftCurrentTerm)
        leased = self._lease_read_index()
        if leased is not None:  # no round needed: see .lease
            self._count_lease_read()
            self._read_confirmed(_ReadRequest(callback, term, leased))
            return
        # Until its no-op commits, a new leader's commit index may be behind
        # what earlier leaders committed; all of that precedes the no-op.
        noop = self._SyncObj__noopIDx or 0
        index = max(int(self._SyncObj__raftCommitIndex), int(noop))
        request = _ReadRequest(callback, term, index)
        if not self._SyncObj__otherNodes:
            self._read_confirmed(request)  # a single voter is its own quorum
            return
        self._read_queue.append(request)
        if self._read_round is None:
            self._start_read_round()

    def _start_read_round(self) -> None:
        """Start a round for the queued requests and send AppendEntries to everyone now."""
        self._read_number += 1
        self._read_rounds += 1
        self._read_round = _ReadRound(
            self._read_number, int(self._SyncObj__raftCurrentTerm), self._read_queue
        )
        self._read_queue = []
        # Rather than wait up to appendEntriesPeriod for the next heartbeat.
        self._SyncObj__sendAppendEntries()

    def _read_answer(self, node: Any, message: dict[str, Any]) -> None:
        """Count a follower's answer (in our term) toward the round in flight."""
        current = self._read_round
        number = message.get("read_round")
        if current is None or number is None or number < current.number:
            return  # no round, or an answer to a message sent before it began
        if current.term != self._SyncObj__raftCurrentTerm:
            return
        if node in self._SyncObj__otherNodes:  # standbys do not count
            current.acks.add(node)
            self._check_read_round()

    def _check_read_round(self) -> None:
        """Confirm the round in flight if a majority of the voters answered it."""
        current = self._read_round
        if current is None:
            return
        voters = self._SyncObj__otherNodes
        # The configuration may have changed since the round began: count the
        # voters of now, the leader included.
        if 2 * (len(current.acks & voters) + 1) <= len(voters) + 1:
            return
        self._read_round = None
        for request in current.requests:
            self._read_confirmed(request)
        if self._read_queue:
            self._start_read_round()

    def _read_confirmed(self, request: _ReadRequest) -> None:
        if self._SyncObj__raftLastApplied >= request.index:
            self._finish(request.callback, ReadResult.CONFIRMED, request.index)
        else:
            self._read_applying.append(request)

    def _serve_reads(self) -> None:
        """Each tick, after PySyncObj applied what it could: finish or fail waiting reads."""
        current = self._read_round
        if current is None and not self._read_queue and not self._read_applying:
            return
        term = self._SyncObj__raftCurrentTerm
        if self.raft_state != LEADER or (current is not None and current.term != term):
            self._fail_reads(ReadResult.LEADERSHIP_LOST)
            return
        self._check_read_round()  # voters may have been removed
        applied = self._SyncObj__raftLastApplied
        waiting = []
        for request in self._read_applying:
            if request.term != term:
                self._finish(request.callback, ReadResult.LEADERSHIP_LOST, 0)
            elif applied >= request.index:
                self._finish(request.callback, ReadResult.CONFIRMED, request.index)
            else:
                waiting.append(request)
        self._read_applying = waiting

    def _fail_reads(self, result: ReadResult) -> None:
        requests = [*self._read_applying, *self._read_queue]
        if self._read_round is not None:
            requests += self._read_round.requests
        self._read_round, self._read_queue, self._read_applying = None, [], []
        for request in requests:
            self._finish(request.callback, result, 0)

    @staticmethod
    def _finish(callback: ReadCallback, result: ReadResult, index: int) -> None:
        try:
            callback(result, index)
        except Exception:
            log.exception("a read callback failed")

    def _tag_append_entries(self) -> None:
        """Make every AppendEntries this node sends carry its current read round.

        PySyncObj builds its messages inside ``__sendAppendEntries`` and hands
        them straight to ``transport.send``; wrapping that one method of the
        transport instance is the narrowest place to add a field.  The lease
        (:mod:`.lease`) adds its own fields there too.
        """
        transport = self._SyncObj__transport
        send = transport.send

        def tagged_send(node: Any, message: Any) -> Any:
            if isinstance(message, dict):  # a fresh dict per message
                if message.get("type") == "append_entries":
                    message["read_round"] = self._read_number
                self._tag_outgoing(message)
            return send(node, message)

        transport.send = tagged_send
