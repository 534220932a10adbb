"""**Adaptive tick**: Raft's thread sleeps until its next timer or message.

PySyncObj's tick thread runs a whole tick (timers, commit rule, apply, queued
commands, log compaction, callbacks) and then waits in ``poll`` for at most
``autoTickPeriod`` (10 ms): an idle node ran 100 ticks a second, 26-41 ms of
CPU per second per node on this machine, on 2 cores shared with the clients.
Everything that needs the thread *now* wakes ``poll`` anyway: a message from a
peer (its socket), a submitted command, a read, :meth:`~.node.HardenedSyncObj.on_tick`
and a storage check (PySyncObj's notifier pipe).  What remains are timers,
and their deadlines are known, so the tick's ``poll`` waits until the nearest
one (:meth:`TickMixin._tick_wait`, computed at the end of the tick, when the
tick's own sends have set the next heartbeat):

- a leader: its next AppendEntries (``__newAppendEntriesTime``: the 100 ms
  heartbeat, or the delayed commit announcement of :mod:`.commit`);
- a follower: its election deadline (heartbeats wake it before);
- every node: at most :data:`IDLE_TICK_MAX` (0.1 s, the heartbeat period), which
  bounds how late the coarse timers run (the transport's pings and
  timeouts, the leader's 2 s fallback check, the journal's one-second timer,
  log compaction): all measured in seconds.

It keeps the 10 ms period while anything is in progress that PySyncObj or
dqlitepy polls for: a candidate, a leadership transfer, reads or remote reads
waiting, a journal being probed, commands queued, a transport that is not
dqlitepy's (no ``next_dial``) or not ready; and it wakes for the transport's
next dial of a peer that is not connected (every ``connectionRetryTime``).
Elections, heartbeats and leases keep their timing: a follower's election
timer fires at its deadline (not later than with 10 ms ticks, give or take
``poll``'s resolution), a leader's heartbeats leave at their time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .base import RaftBase
from .config import FOLLOWER, LEADER

__all__ = ["IDLE_TICK_MAX", "TickMixin"]

#: The longest an idle tick thread sleeps (seconds): the heartbeat period.
IDLE_TICK_MAX = 0.1


class _AdaptivePoller:
    """PySyncObj's poller, whose ``poll`` waits as long as the node allows."""

    def __init__(self, inner: Any, wait: Callable[[float], float]) -> None:
        self._inner = inner
        self._wait = wait

    def subscribe(self, descr: Any, callback: Any, eventMask: int) -> None:
        self._inner.subscribe(descr, callback, eventMask)

    def unsubscribe(self, descr: Any) -> None:
        self._inner.unsubscribe(descr)

    def poll(self, timeout: float) -> None:
        self._inner.poll(self._wait(timeout))


class TickMixin(RaftBase):
    """How long the tick thread may wait for a message before its next tick."""

    #: False: always the configured period (PySyncObj's behaviour), for comparison.
    _adaptive_tick: bool
    _tick_poller: Any

    def _init_tick(self, adaptive: bool) -> None:
        self._adaptive_tick = adaptive

    # SyncObj.__init__ creates its poller (``self._poller = ...``) before the
    # transport subscribes to it and the tick thread polls it: wrapped here,
    # its last call of the tick, ``self._poller.poll(timeToWait)``, comes to
    # ``_tick_wait`` after everything the tick sent.
    @property
    def _poller(self) -> Any:
        return self._tick_poller

    @_poller.setter
    def _poller(self, poller: Any) -> None:
        self._tick_poller = _AdaptivePoller(poller, self._tick_wait)

    def _tick_wait(self, period: float) -> float:
        """Seconds the tick's ``poll`` may wait: ``period``, or up to the next timer."""
        if period <= 0 or not self._adaptive_tick or self._busy():
            return period
        now = time.monotonic()
        state = self.raft_state
        if state == LEADER:
            deadline = self._SyncObj__newAppendEntriesTime
        elif state == FOLLOWER:
            deadline = self._SyncObj__raftElectionDeadline
        else:
            return period  # a candidate counts votes and retries elections
        next_dial = float(self._SyncObj__transport.next_dial())
        return max(period, min(deadline - now, next_dial - now, IDLE_TICK_MAX))

    def _busy(self) -> bool:
        """Something is in progress that a tick checks on without being woken."""
        if self._transfer is not None or self._remote_waiting:
            return True
        if self._read_round is not None or self._read_queue or self._read_applying:
            return True
        if self._storage_down or self._probe_requested:
            return True
        if self._commands_queued():  # commands left by a batch cut short
            return True
        transport = self._SyncObj__transport
        return not getattr(transport, "ready", False) or not hasattr(transport, "next_dial")
