"""Submitting commands: only a leader appends them, and every submitter learns an outcome.

**Forwarding.**  A stock follower forwards queued commands to the leader; a
transaction's pages only make sense on the state they were computed on, so
commands carry the index they build upon (checked at apply time), and only a
leader submits them: a node that does not lead fails its queued commands with
NOT_LEADER, and drops commands forwarded to it (:mod:`.messages`).

A command whose entry cannot be appended because the journal cannot write is
failed at once (``STORAGE_FAILED`` or UNKNOWN_OUTCOME, see :mod:`.storage`)
instead of escaping from PySyncObj's tick with its callback lost.  While a
leadership transfer is under way (:mod:`.transfer`) queued commands wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pysyncobj.config import FAIL_REASON

from ..journal import JournalWriteError
from .base import RaftBase
from .config import LEADER, REGULAR, STORAGE_FAILED

__all__ = ["CommandsMixin", "Submission"]


class Submission:
    """One submitted command's outcome, once known; any number of threads may wait for it.

    Args:
        forget: called with :meth:`finish` once the outcome is known (or the
            wait for it was given up), to drop it from the submitter set.
    """

    def __init__(self, forget: Callable[[Callable[[Any, int], None]], None]) -> None:
        self._forget = forget
        self._done = threading.Event()
        self._outcome: tuple[Any, int] = (None, FAIL_REASON.UNKNOWN_OUTCOME)

    def finish(self, result: Any, reason: int) -> None:
        """The command's callback (tick thread): the first outcome counts.

        :meth:`CommandsMixin.abandon_waiters` may follow the real outcome (a
        failed append steps the leader down) before the waiters wake up.
        """
        if not self._done.is_set():
            self._outcome = (result, reason)
            self._done.set()
            self._forget(self.finish)

    def wait(self, timeout: float) -> tuple[Any, int]:
        """``(result, reason)``; ``(None, UNKNOWN_OUTCOME)`` if none came within ``timeout``."""
        if not self._done.wait(timeout):
            self._forget(self.finish)
            return None, FAIL_REASON.UNKNOWN_OUTCOME
        return self._outcome


class CommandsMixin(RaftBase):
    """Queues commands on the leader, fails them elsewhere, releases waiting submitters."""

    _waiters: set[Callable[[Any, int], None]]
    _waiters_lock: threading.Lock

    def _init_commands(self) -> None:
        self._waiters = set()
        self._waiters_lock = threading.Lock()

    def submit(self, command: bytes, callback: Callable[[Any, int], None]) -> None:
        """Queue a command; ``callback(result, fail_reason)`` runs on the tick thread.

        Only the leader submits: followers would forward the command to whoever
        they think leads, and a transaction's pages built on one node's state
        must not be appended elsewhere.
        """
        if self.raft_state != LEADER:
            callback(None, FAIL_REASON.NOT_LEADER)
            return
        self._applyCommand(command, callback, REGULAR)

    def submit_tracked(self, command: bytes) -> Submission:
        """Submit without waiting; the :class:`Submission` learns the outcome.

        Until it has one, :meth:`abandon_waiters` may release it with
        LEADER_CHANGED, so that no submitter waits on a deposed leader.
        """
        submission = Submission(self._forget_waiter)
        with self._waiters_lock:
            self._waiters.add(submission.finish)
        self.submit(command, submission.finish)
        return submission

    def submit_and_wait(self, command: bytes, timeout: float) -> tuple[Any, int]:
        """Submit and block until the command is applied or fails; ``(result, reason)``."""
        return self.submit_tracked(command).wait(timeout)

    def _forget_waiter(self, callback: Callable[[Any, int], None]) -> None:
        with self._waiters_lock:
            self._waiters.discard(callback)

    def abandon_waiters(self) -> None:
        """Release every submitter still waiting (:meth:`submit_tracked`) with LEADER_CHANGED.

        Called on the tick thread when this node stops leading: their
        commands' fate is decided by the next leader, and the callers must not
        keep holding what they hold (a database's writer slot) while it is
        decided.  Commands still queued (held by a leadership transfer, say)
        were never appended anywhere: those are failed with NOT_LEADER first,
        so their submitters can say so.
        """
        commands = self._SyncObj__commandsQueue
        while True:
            try:
                _, callback = commands.get_nowait()
            except Exception:  # the queue's Empty
                break
            if callable(callback):
                callback(None, FAIL_REASON.NOT_LEADER)
        with self._waiters_lock:
            waiters = list(self._waiters)
        for callback in waiters:
            callback(None, FAIL_REASON.LEADER_CHANGED)

    def _checkCommandsToApply(self) -> None:
        # PySyncObj's loop, on the tick thread (the state cannot change under
        # us but by this loop): a node that does not lead fails its queued
        # commands instead of forwarding them, and a failed append fails its
        # command instead of escaping from the tick with the callback lost.
        if self._transfer is not None and self.raft_state == LEADER:
            return  # held until the transfer ends (a new entry would delay the target)
        commands = self._SyncObj__commandsQueue
        started = time.monotonic()
        while self.raft_state != LEADER or (
            time.monotonic() - started < self.conf.appendEntriesPeriod
        ):
            try:
                command, callback = commands.get_nowait()
            except Exception:  # the queue's Empty
                return
            if self.raft_state != LEADER:
                if callable(callback):
                    callback(None, FAIL_REASON.NOT_LEADER)
                continue
            self._append_command(command, callback)

    def _append_command(self, command: bytes, callback: Any) -> None:
        """Append a queued command to this leader's log and send it (tick thread)."""
        index = self._SyncObj__getCurrentLogIndex() + 1
        term = self._SyncObj__raftCurrentTerm
        request = (
            self._SyncObj__parseChangeClusterRequest(command)
            if self.conf.dynamicMembershipChange
            else None
        )
        if request is not None and not self._SyncObj__changeCluster(request):
            if callable(callback):
                callback(None, FAIL_REASON.REQUEST_DENIED)
            return
        try:
            self._SyncObj__raftLog.add(command, index, term)
        except JournalWriteError as exc:
            if request is not None:
                self._SyncObj__doChangeCluster(request, reverse=True)
            if callable(callback):
                # Not in the log (memory or disk) and never sent: nobody has it.
                reason = STORAGE_FAILED if exc.stored is False else FAIL_REASON.UNKNOWN_OUTCOME
                callback(exc, reason)
            self._storage_failed(exc)
            return
        if callable(callback):
            self._SyncObj__commandsWaitingCommit[index].append((term, callback))
        if not self.conf.appendEntriesUseBatch:
            self._SyncObj__sendAppendEntries()
        if not self._SyncObj__otherNodes:
            # A single voter commits the entry by itself, but PySyncObj counts it
            # only at the start of a tick: without a wake-up the entry would wait
            # out the tick's poll (about 16 ms per commit).  Peers' answers wake a
            # larger cluster.
            self._wake()
