"""Leadership transfer as Raft's thesis (§3.10) describes it.

**Leadership transfer.**  PySyncObj's ``transferLeadership`` refuses unless
the target's log is complete at that instant, which under a steady stream of
writes it almost never is.  :meth:`TransferMixin.transfer` does what Raft's
thesis says: the leader stops appending new commands (they wait in the queue,
see :mod:`.commands`), lets the target catch up, sends it TimeoutNow, and
gives up and resumes appending if the target has not taken over within an
election timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pysyncobj.config import FAIL_REASON

from .base import RaftBase
from .config import LEADER

__all__ = ["Transfer", "TransferMixin"]

log = logging.getLogger("dqlitepy.replication")


@dataclass
class Transfer:
    """A leadership transfer under way (leader's tick thread)."""

    target: Any
    deadline: float
    callback: Callable[[int], None]
    sent: bool = False  # TimeoutNow went out


class TransferMixin(RaftBase):
    """Hands leadership to a caught-up voter, holding new commands meanwhile."""

    def _init_transfer(self) -> None:
        self._transfer = None

    def transfer(self, target: Any | None, callback: Callable[[int], None]) -> None:
        """Hand leadership to ``target`` (None: the most caught-up voter); tick thread.

        ``callback(reason)`` runs on the tick thread once: SUCCESS when this
        node stopped leading after sending TimeoutNow, NOT_LEADER when it did
        not lead, REQUEST_DENIED when the target is not a connected voter, is
        this node, or did not take over within an election timeout (appending
        then resumes).  Commands queued meanwhile wait: they are appended if
        the transfer fails and refused as NOT_LEADER if it succeeds.
        """
        if self.raft_state != LEADER:
            callback(FAIL_REASON.NOT_LEADER)
            return
        if self._transfer is not None:
            callback(FAIL_REASON.REQUEST_DENIED)  # one at a time, as in Raft
            return
        voters = self._SyncObj__otherNodes
        connected = self._SyncObj__connectedNodes
        match = self._SyncObj__raftMatchIndex
        if target is None:
            candidates = [n for n in voters if n in connected]
            if not candidates:
                callback(FAIL_REASON.REQUEST_DENIED)
                return
            target = max(candidates, key=lambda n: (match.get(n, 0), str(n.id)))
        if target not in voters or target not in connected:
            callback(FAIL_REASON.REQUEST_DENIED)
            return
        deadline = time.monotonic() + self.conf.raftMaxTimeout
        self._transfer = Transfer(target, deadline, callback)
        self._drive_transfer()

    def _drive_transfer(self) -> None:
        """Each tick: send TimeoutNow once the target is caught up; end the transfer."""
        transfer = self._transfer
        if transfer is None:
            return
        if self.raft_state != LEADER:
            self._transfer = None
            transfer.callback(FAIL_REASON.SUCCESS if transfer.sent else FAIL_REASON.NOT_LEADER)
            return
        if time.monotonic() > transfer.deadline:
            self._transfer = None
            log.warning(
                "%s: %s did not take over leadership in time; serving writes again",
                self._self_address(),
                transfer.target.id,
            )
            transfer.callback(FAIL_REASON.REQUEST_DENIED)
            self._wake()  # the commands held meanwhile
            return
        if transfer.sent:
            return
        last = self._SyncObj__getCurrentLogIndex()
        if self._SyncObj__raftMatchIndex.get(transfer.target, 0) != last:
            return  # still catching up: the next acknowledgement brings it closer
        self._SyncObj__transport.send(
            transfer.target, {"type": "timeout_now", "term": self._SyncObj__raftCurrentTerm}
        )
        transfer.sent = True
