"""ReadIndex for any node: a follower asks the leader for its read index (thesis §6.4).

:mod:`.reads` answers a leader's own question "may I serve a read now?".  A
follower needs the same index to know whether it is *current*: whether it has
applied everything the leader had committed when the question was asked (the
node's ``/readyz``, ``docs/metrics.md``).  The leader's commit index as the
follower last heard it proves nothing about that moment: the AppendEntries
that carried it may have been sent before the question was asked.  So, as
Raft's thesis describes for reads on followers (§6.4, and etcd's forwarded
ReadIndex), the follower sends ``read_index`` to the leader it knows, which
takes the request up like one of its own reads (:meth:`.ReadsMixin._read_arrived`:
the commit index when the request arrives, confirmed by its lease or a round
of a quorum) and answers ``read_index_answer`` with that index, or
``confirmed: False`` if it does not lead.  Every index the leader had
committed when the follower asked is at most the one it answers.

On the follower a request waits for its answer until its deadline passes, or
until the leader it asked is no longer the one it knows; then it fails
(TIMEOUT, LEADERSHIP_LOST).  On a leader the request is its own read.  Both
messages travel only between members, authenticated like every Raft message
(``transport/``), and a leader does the same for them as for a client's read:
rounds are shared, nothing is stored.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .base import RaftBase
from .config import LEADER
from .reads import ReadCallback, ReadResult

__all__ = ["RemoteReadsMixin"]


class RemoteReadsMixin(RaftBase):
    """A follower's read index, asked of the leader (tick thread but :meth:`leader_read_index`)."""

    _remote_number: int
    #: request number -> (the leader asked, deadline, callback); tick thread only.
    _remote_waiting: dict[int, tuple[Any, float, ReadCallback]]

    def _init_remote_reads(self) -> None:
        self._remote_number = 0
        self._remote_waiting = {}

    def leader_read_index(self, timeout: float) -> tuple[ReadResult, int]:
        """The leader's read index, asked now; waits up to ``timeout`` (any thread).

        Returns ``(CONFIRMED, index)``: the leader led when it took the request
        up, after this call began, and every entry it had committed then is at
        or before ``index`` (on a leader: its own read, applied here too).
        Otherwise NOT_LEADER (no leader known, or the one asked does not lead),
        LEADERSHIP_LOST (the leader changed meanwhile) or TIMEOUT, with 0.
        """
        done = threading.Event()
        outcome: list[Any] = [ReadResult.TIMEOUT, 0]

        def callback(result: ReadResult, index: int) -> None:
            outcome[0], outcome[1] = result, index
            done.set()

        deadline = time.monotonic() + timeout
        self.on_tick(lambda: self._ask_leader(callback, deadline))
        if not done.wait(timeout):
            return ReadResult.TIMEOUT, 0
        return ReadResult(outcome[0]), int(outcome[1])

    def _ask_leader(self, callback: ReadCallback, deadline: float) -> None:
        if self.raft_state == LEADER:
            self._read_arrived(callback)
            return
        leader = self._SyncObj__raftLeader
        if leader is None:
            callback(ReadResult.NOT_LEADER, 0)
            return
        self._remote_number += 1
        number = self._remote_number
        self._remote_waiting[number] = (leader, deadline, callback)
        self._SyncObj__transport.send(leader, {"type": "read_index", "request": number})

    def _read_index_asked(self, node: Any, message: dict[str, Any]) -> None:
        """A member asks this node, which it takes for the leader, for its read index."""
        request = message["request"]
        transport = self._SyncObj__transport

        def answer(result: ReadResult, index: int) -> None:
            confirmed = result is ReadResult.CONFIRMED
            transport.send(
                node,
                {
                    "type": "read_index_answer",
                    "request": request,
                    "index": index if confirmed else 0,
                    "confirmed": confirmed,
                },
            )

        self._read_arrived(answer)  # NOT_LEADER at once on a node that does not lead

    def _read_index_answered(self, node: Any, message: dict[str, Any]) -> None:
        """The leader's answer to one of this node's requests."""
        waiting = self._remote_waiting.get(message["request"])
        if waiting is None or waiting[0] != node:
            return  # given up already, or not the node asked
        del self._remote_waiting[message["request"]]
        if message["confirmed"]:
            waiting[2](ReadResult.CONFIRMED, int(message["index"]))
        else:
            waiting[2](ReadResult.NOT_LEADER, 0)

    def _expire_remote_reads(self) -> None:
        """Each tick: fail requests past their deadline, or asked of a former leader."""
        if not self._remote_waiting:
            return
        now = time.monotonic()
        leader = self._SyncObj__raftLeader
        for number, (asked, deadline, callback) in list(self._remote_waiting.items()):
            if asked != leader:
                del self._remote_waiting[number]
                callback(ReadResult.LEADERSHIP_LOST, 0)
            elif now > deadline:
                del self._remote_waiting[number]
                callback(ReadResult.TIMEOUT, 0)
