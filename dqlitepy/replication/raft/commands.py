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

**Group commit.**  PySyncObj appends queued commands one by one, each with
its own journal sync and AppendEntries.  Here the regular commands drained
from the queue in one go (concurrent submitters) are appended together (up to
1024 of them or 16 MiB): written with one ``append_unsynced`` (all or
nothing), sent in one AppendEntries, which the followers store with one sync
too (:mod:`.messages`), and only then synced on the leader with one ``flush``:
the leader's fsync overlaps the followers' instead of preceding them (Raft
thesis §10.2.1), and the commit index does not count the leader's copy before
that sync returned (:mod:`.commit`).  A membership change is still appended on
its own (synced, then sent), after the commands queued before it, because it
takes effect when appended.

**What a failed append tells the submitters.**  If the write fails, nothing
was sent: the commands are failed with ``STORAGE_FAILED`` when the journal
proved them absent (``stored is False``), with UNKNOWN_OUTCOME otherwise.  If
the sync fails, the entries were sent already and a follower may hold them
(a later leader may commit them): every command of the batch is failed with
UNKNOWN_OUTCOME, whatever the journal could cut.  Either way the node steps
down once (:mod:`.storage`).  A journal without ``append_unsynced``
(PySyncObj's MemoryJournal) is written and synced before the send, as before.
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


#: Makes a submission's first outcome the one that counts (a leaf lock, held for O(1)).
_FINISHING = threading.Lock()


class Submission:
    """One submitted command's outcome, once known; any number of threads may wait for it.

    Args:
        forget: called with :meth:`finish` once the outcome is known (or the
            wait for it was given up), to drop it from the submitter set.
    """

    def __init__(
        self,
        forget: Callable[[Callable[[Any, int], None]], None],
        command: bytes = b"",
        decoded: object = None,
    ) -> None:
        self._forget = forget
        #: The command as submitted, and what the submitter said it decodes to: the
        #: apply handler gets both with this node's own entry (see ``_wait_for_commit``).
        self.command = command
        self.decoded = decoded
        # Held until the outcome is known (a bare lock, not an Event: this is on
        # every write's path, and an Event's Condition costs a dozen Python calls).
        self._pending = threading.Lock()
        self._pending.acquire()
        self._known = False
        self._outcome: tuple[Any, int] = (None, FAIL_REASON.UNKNOWN_OUTCOME)

    def finish(self, result: Any, reason: int) -> None:
        """The command's callback (tick thread): the first outcome counts.

        :meth:`CommandsMixin.abandon_waiters` may follow the real outcome (a
        failed append steps the leader down) before the waiters wake up.
        """
        with _FINISHING:  # a refusal on the submitter's thread may race abandon_waiters
            if self._known:
                return
            self._outcome = (result, reason)
            self._known = True
        self._pending.release()
        self._forget(self.finish)

    def wait(self, timeout: float) -> tuple[Any, int]:
        """``(result, reason)``; ``(None, UNKNOWN_OUTCOME)`` if none came within ``timeout``."""
        if not self._known:
            if not self._pending.acquire(timeout=max(timeout, 0.0)):
                self._forget(self.finish)
                return None, FAIL_REASON.UNKNOWN_OUTCOME
            self._pending.release()  # for the next waiter
        return self._outcome


# A batch is appended once the queue is drained, or once it is this large: the
# first command of a batch must not wait behind a queue that keeps filling, and
# one write need not hold more than about one large transaction part.
MAX_BATCH_ENTRIES = 1024
MAX_BATCH_BYTES = 16 * 1024 * 1024


class CommandsMixin(RaftBase):
    """Queues commands on the leader, fails them elsewhere, releases waiting submitters."""

    _waiters: set[Callable[[Any, int], None]]
    _waiters_lock: threading.Lock

    def _init_commands(self) -> None:
        self._waiters = set()
        self._waiters_lock = threading.Lock()
        self._submitted = {}

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

    def submit_tracked(self, command: bytes, decoded: object = None) -> Submission:
        """Submit without waiting; the :class:`Submission` learns the outcome.

        Until it has one, :meth:`abandon_waiters` may release it with
        LEADER_CHANGED, so that no submitter waits on a deposed leader.  When this
        node applies the entry it appended for ``command``, the apply handler gets
        ``decoded`` with it (a submitter that built the command from an object
        need not decode it again).
        """
        submission = Submission(self._forget_waiter, command, decoded)
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
        self._submitted.clear()  # whatever is applied later is decoded from the log

    def _commands_queued(self) -> bool:
        """Whether commands wait in PySyncObj's queue (any thread; True if it cannot tell).

        Its FastQueue has no ``empty()``: its deque is read instead.
        """
        return bool(getattr(self._SyncObj__commandsQueue, "_FastQueue__queue", True))

    def _checkCommandsToApply(self) -> None:
        # PySyncObj's loop, on the tick thread (the state cannot change under
        # us but by this loop): a node that does not lead fails its queued
        # commands instead of forwarding them, a failed append fails its
        # commands instead of escaping from the tick with the callbacks lost,
        # and the regular commands drained in one go are appended together
        # (see "Group commit" in the module docstring).
        if self._transfer is not None and self.raft_state == LEADER:
            return  # held until the transfer ends (a new entry would delay the target)
        if not self._commands_queued():
            return  # most ticks (an answer, a heartbeat)
        commands = self._SyncObj__commandsQueue
        started = time.monotonic()
        batch: list[tuple[bytes, Any]] = []
        size = 0
        while self.raft_state != LEADER or (
            time.monotonic() - started < self.conf.appendEntriesPeriod
        ):
            try:
                command, callback = commands.get_nowait()
            except Exception:  # the queue's Empty
                break
            if self.raft_state != LEADER:
                if callable(callback):
                    callback(None, FAIL_REASON.NOT_LEADER)
                continue
            request = (
                self._SyncObj__parseChangeClusterRequest(command)
                if self.conf.dynamicMembershipChange
                else None
            )
            if request is None:
                batch.append((command, callback))
                size += len(command)
                if len(batch) >= MAX_BATCH_ENTRIES or size >= MAX_BATCH_BYTES:
                    self._append_batch(batch)
                    batch, size = [], 0
                continue
            # A configuration takes effect when appended: after the entries
            # queued before it, which therefore go first.
            self._append_batch(batch)
            batch, size = [], 0
            if self.raft_state != LEADER:  # that append failed: this node stepped down
                if callable(callback):
                    callback(None, FAIL_REASON.NOT_LEADER)
                continue
            self._append_membership(command, request, callback)
        self._append_batch(batch)

    def _append_batch(self, batch: list[tuple[bytes, Any]]) -> None:
        """Append queued regular commands as consecutive entries: write, send, then sync."""
        if not batch:
            return
        self._batch_entries.observe(len(batch))
        first = self._SyncObj__getCurrentLogIndex() + 1
        term = self._SyncObj__raftCurrentTerm
        entries = [(command, first + i, term) for i, (command, _) in enumerate(batch)]
        journal = self._SyncObj__raftLog
        write_first = getattr(journal, "append_unsynced", None)
        try:
            if write_first is not None:
                write_first(entries)
            else:
                self._log_append(entries)
        except JournalWriteError as exc:
            # A DurableJournal stores all or none; a journal without add_many may
            # have taken a prefix, whose commands then wait for their commit
            # like any other (they are in the log and may be replicated).
            appended = min(max(self._SyncObj__getCurrentLogIndex() + 1 - first, 0), len(batch))
            self._wait_for_commit(batch[:appended], first, term)
            # Not in the log (memory or disk) and never sent: nobody has them.
            reason = STORAGE_FAILED if exc.stored is False else FAIL_REASON.UNKNOWN_OUTCOME
            for _, callback in batch[appended:]:
                if callable(callback):
                    callback(exc, reason)
            self._storage_failed(exc)
            return
        if write_first is None:
            self._wait_for_commit(batch, first, term)
            self._appended()
            return
        try:
            self._send_appended()
        finally:
            # Even if sending raised: entries must not stay visible unsynced.
            failure = self._flush_log(journal)
        if failure is not None:
            # Sent already: a follower may hold them, and a later leader commit them.
            for _, callback in batch:
                if callable(callback):
                    callback(failure, FAIL_REASON.UNKNOWN_OUTCOME)
            self._storage_failed(failure)
            return
        # Registered only now: a failed sync above has told them their outcome.
        self._wait_for_commit(batch, first, term)
        self._wake_single_voter()

    @staticmethod
    def _flush_log(journal: Any) -> JournalWriteError | None:
        """Sync what ``append_unsynced`` wrote; the failure, if it failed."""
        try:
            journal.flush()
        except JournalWriteError as exc:
            return exc
        return None

    def _append_membership(self, command: bytes, request: Any, callback: Any) -> None:
        """Append a configuration change on its own (tick thread), as PySyncObj does."""
        index = self._SyncObj__getCurrentLogIndex() + 1
        term = self._SyncObj__raftCurrentTerm
        if not self._SyncObj__changeCluster(request):
            if callable(callback):
                callback(None, FAIL_REASON.REQUEST_DENIED)
            return
        try:
            self._SyncObj__raftLog.add(command, index, term)
        except JournalWriteError as exc:
            self._SyncObj__doChangeCluster(request, reverse=True)
            if callable(callback):
                reason = STORAGE_FAILED if exc.stored is False else FAIL_REASON.UNKNOWN_OUTCOME
                callback(exc, reason)
            self._storage_failed(exc)
            return
        self._wait_for_commit([(command, callback)], index, term)
        self._appended()

    def _wait_for_commit(self, batch: list[tuple[bytes, Any]], first: int, term: int) -> None:
        """Register the callbacks of ``batch``, appended from index ``first`` on.

        A command of :meth:`submit_tracked` is also noted with its index and its
        log entry, so that applying that very entry (checked by identity in
        :mod:`.entries`: a new leader's entry at the same index is another object)
        hands the application the command as submitted, not a copy cut from the
        entry, and what the submitter said it decodes to.
        """
        waiting = self._SyncObj__commandsWaitingCommit
        for offset, (entry, callback) in enumerate(batch):
            if callable(callback):
                waiting[first + offset].append((term, callback))
                submission = getattr(callback, "__self__", None)
                if type(submission) is Submission:
                    self._submitted[first + offset] = (
                        entry,
                        submission.command,
                        submission.decoded,
                    )

    def _appended(self) -> None:
        """New entries are durable in the leader's log: send them, once per append."""
        self._send_appended()
        self._wake_single_voter()

    def _send_appended(self) -> None:
        """Send the leader's new entries now (unless PySyncObj batches them for a tick)."""
        if not self.conf.appendEntriesUseBatch:
            self._SyncObj__sendAppendEntries()

    def _wake_single_voter(self) -> None:
        if not self._SyncObj__otherNodes:
            # A single voter commits the entries by itself, but PySyncObj counts
            # them only at the start of a tick: without this they would wait out
            # the tick's poll (about 16 ms per commit), or, woken, a second tick
            # (:meth:`~.commit.CommitMixin._commit_alone`).  Peers' answers wake
            # a larger cluster.
            self._commit_alone()
