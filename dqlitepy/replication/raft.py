"""Raft through PySyncObj, with its defects neutralised (``libraries.md``).

:class:`HardenedSyncObj` subclasses PySyncObj's ``SyncObj`` and replaces the
parts that break Raft's guarantees.  PySyncObj hides them behind name-mangled
methods (``SyncObj.__x`` is ``_SyncObj__x``); a subclass defining a method of
that mangled name overrides it, which is how the fixes below hook in.  The
version is pinned (``pysyncobj==0.3.17``) because of that coupling.

Fixes, each with a test in ``tests/test_replication_raft.py``:

- **Follower truncation (defect 2).**  PySyncObj deletes every entry after
  ``prevLogIdx`` on *any* AppendEntries whose ``prevLogIdx`` is behind the log
  end, even entries it already acknowledged.  Raft (§5.3, Figure 2) allows
  deleting only from the first entry whose term conflicts.  Our handler skips
  entries already present with the same term, truncates only on a conflict,
  acknowledges only the entries the message proved, and advances the commit
  index only that far.
- **Leader nextIndex rewind (defect 2).**  A late success acknowledgement could
  move ``nextIndex`` back below ``matchIndex + 1``; we clamp it.
- **Pickle (defect 4).**  Commands are cbor2 (our own encoding, applied through
  an overridden ``__doApplyCommand``); PySyncObj's own membership entries are
  unpickled with a whitelist; chunked "transmission" messages (the buggy
  large-entry path, defect 5, which also unpickles) are refused — the batch
  size is configured so PySyncObj never produces them.
- **Latency floor (defect 6).**  ``appendEntriesUseBatch=False``: each command
  is sent as soon as it is queued.
- **Roles.**  PySyncObj knows only voters (and anonymous read-only nodes that
  its transports announce).  Membership entries here carry dqlite's roles:
  ``["role", address, old, new]`` (cbor2).  Voters are PySyncObj's
  ``otherNodes``; standbys go into its read-only set, which the leader
  replicates to without counting them; spares take no part.  A node that does
  not vote never starts an election.  As Raft requires, a configuration takes
  effect when its entry is appended (and is undone if the entry is truncated);
  a restarted node rebuilds it from its snapshot and its log.
- **Forwarding.**  A stock follower forwards queued commands to the leader; a
  transaction's pages only make sense on the state they were computed on, so
  commands carry the index they build upon (checked at apply time), and only
  a leader submits them.
- **Terms in answers.**  PySyncObj's followers answer AppendEntries without
  their term and ignore a stale leader's messages, so a deposed leader learns
  its fate only from the new leader or its own silence timeout.  As Raft's
  Figure 2 says, our answers carry the follower's term, a follower answers a
  stale AppendEntries with its newer term, and a leader that sees a newer term
  steps down (and ignores answers from its own earlier terms).
- **Leadership transfer.**  PySyncObj's ``transferLeadership`` refuses
  unless the target's log is complete at that instant, which under a steady
  stream of writes it almost never is.  :meth:`transfer` does what Raft's
  thesis (§3.10) says: the leader stops appending new commands (they wait in
  the queue), lets the target catch up, sends it TimeoutNow, and gives up and
  resumes appending if the target has not taken over within an election
  timeout.
- **Linearizable reads.**  PySyncObj has no read path.  :meth:`read_index`
  implements ReadIndex (Raft thesis §6.4), see "Linearizable reads" below.
- **Storage failures.**  A journal write that raises inside PySyncObj's tick
  aborts the tick half-way (the leader's command callback is lost and its
  client waits for a timeout, while heartbeats go on and the leader keeps its
  role).  Here a node whose journal cannot write stops taking part in Raft
  until it can, see "Storage failures" below.

Storage failures
----------------
Raft needs a node's log, term and vote on disk before it answers anything
that reflects them (Figure 2, "Persistent state ... updated on stable storage
before responding to RPCs").  When a :class:`~.journal.DurableJournal` write
fails (``ENOSPC``, ``EDQUOT``, ``EIO``...), the journal refuses writes
(FAILED) until a probe succeeds, and this node, on Raft's thread:

- as leader, asks its most caught-up follower to start an election at once
  (TimeoutNow) and steps down; a command whose entry could not be appended is
  failed with :data:`STORAGE_FAILED` when the journal proved the entry absent
  (the submitter may say "not stored"), with UNKNOWN_OUTCOME otherwise;
- stands for no election (its timeout is infinite), grants no vote and ignores
  TimeoutNow: a vote or a new term it cannot persist must not be sent;
- as follower, acknowledges only entries it stored: an append that fails is
  answered "reset" at its log's end, so the leader neither counts it nor
  skips it;
- keeps answering what needs no write (a heartbeat of its term, a stale
  leader's message), so clients are still sent to the leader;
- probes the journal every ``storage_probe_interval`` seconds (1 s), and
  immediately when :meth:`HardenedSyncObj.request_storage_check` asks (the
  server does when SQLite reports a full disk or an I/O error): once the probe
  works, it restarts its election timer and rejoins as an ordinary member,
  catching up from the leader, without a restart.

The term and vote are also persisted *before* PySyncObj's memory changes
(it changes memory first), so a failed write leaves the node in the state it
can prove.  Nothing here takes a lock that another thread holds for long: the
journal's own lock is contended only by ``close``.

Linearizable reads
------------------
A leader may serve a read only once it knows that no other leader had
committed anything newer when the read arrived.  :meth:`read_index`, on Raft's
thread:

1. records the read index: the commit index when the request is taken up, but
   at least the index of the leader's no-op (until an entry of its own term is
   committed, a new leader's commit index may lag the cluster's; every entry
   committed by earlier leaders precedes its no-op);
2. confirms leadership with a *round*: every AppendEntries the leader sends
   carries its current round number (``read_round``), a follower echoes it in
   its answer along with its term, and a round is confirmed once a majority of
   voters (the leader included) answered, in the leader's term, a message sent
   after the round began.  A follower answers in our term only while it has
   not moved to a newer one, so any leader of a newer term was elected after
   the read arrived and anything it commits is concurrent with the read;
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

import contextlib
import enum
import io
import logging
import math
import pickle
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cbor2
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.config import FAIL_REASON
from pysyncobj.node import TCPNode

from ..wire import NodeRole
from .journal import JournalWriteError

__all__ = [
    "FAILURES",
    "HardenedSyncObj",
    "PeerHealth",
    "PeerNode",
    "ReadResult",
    "STORAGE_FAILED",
    "raft_config",
    "role_change",
    "safe_unpickle",
]

log = logging.getLogger("dqlitepy.replication")

# PySyncObj's command type byte (syncobj._COMMAND_TYPE).
_REGULAR = 0
_NO_OP = 1
_MEMBERSHIP = 2
_VERSION = 3

# PySyncObj's raft states (syncobj._RAFT_STATE).
FOLLOWER = 0
CANDIDATE = 1
LEADER = 2

#: A command's failure reason (ours, beside PySyncObj's FAIL_REASON): its entry
#: could not be appended because this node's journal cannot write, and the
#: journal proved it absent.  The callback's result is the JournalWriteError.
STORAGE_FAILED = 100

#: PySyncObj's failure reasons, by name.
FAILURES = {
    value: name
    for name, value in vars(FAIL_REASON).items()
    if not name.startswith("_") and isinstance(value, int)
}
FAILURES[STORAGE_FAILED] = "STORAGE_FAILED"


@dataclass
class _Transfer:
    """A leadership transfer under way (leader's tick thread)."""

    target: Any
    deadline: float
    callback: Callable[[int], None]
    sent: bool = False  # TimeoutNow went out


class PeerNode(TCPNode):  # type: ignore[misc]
    """A cluster member; its PySyncObj id is its dqlite address (one address per node)."""


class _WhitelistUnpickler(pickle.Unpickler):
    """Builds only plain data and :class:`PeerNode` (PySyncObj's membership entries)."""

    _ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("dqlitepy.replication.raft", "PeerNode"),
            ("pysyncobj.node", "Node"),
            ("pysyncobj.node", "TCPNode"),
            ("copyreg", "_reconstructor"),
            ("builtins", "object"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def safe_unpickle(data: bytes) -> Any:
    """Unpickle PySyncObj's own membership/version entries with a whitelist."""
    return _WhitelistUnpickler(io.BytesIO(data)).load()


def role_change(address: str, old: int | None, new: int | None) -> bytes:
    """The membership entry moving ``address`` from role ``old`` to ``new`` (None: not a member)."""
    return bytes([_MEMBERSHIP]) + cbor2.dumps(["role", address, old, new])


def raft_config(**overrides: Any) -> Any:
    """PySyncObj configuration tuned for dqlitepy (see the module docstring)."""
    settings: dict[str, Any] = {
        "autoTick": True,
        "autoTickPeriod": 0.01,
        "appendEntriesUseBatch": False,
        # Heartbeats every 100 ms and elections after 0.8-1.2 s of silence: a
        # loaded 2-core machine (server threads share the GIL with the tick
        # thread) must not see spurious elections, and failover stays ~1 s.
        "appendEntriesPeriod": 0.1,
        "raftMinTimeout": 0.8,
        "raftMaxTimeout": 1.2,
        "connectionTimeout": 3.5,
        "connectionRetryTime": 0.5,
        "leaderFallbackTimeout": 2.0,
        # One message may carry a large transaction: never take the chunked path.
        "appendEntriesBatchSizeBytes": 1 << 30,
        "dynamicMembershipChange": True,
        "commandsWaitLeader": False,
        # Snapshots are taken by dqlitepy, not by PySyncObj's pickle of the object.
        "logCompactionMinEntries": 1 << 62,
        "logCompactionMinTime": 1 << 40,
        "useFork": False,
    }
    settings.update(overrides)
    return SyncObjConf(**settings)


ApplyHandler = Callable[[int, bytes], Any]


class ReadResult(enum.IntEnum):
    """How a :meth:`HardenedSyncObj.read_index` request ended."""

    #: Leadership confirmed after the request arrived, and applied up to its read index.
    CONFIRMED = 0
    #: This node did not lead when the request was taken up.
    NOT_LEADER = 1
    #: This node stopped leading (or saw a newer term) before the request was confirmed.
    LEADERSHIP_LOST = 2
    #: :meth:`HardenedSyncObj.read_barrier` only: no answer within the timeout.
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


class PeerHealth(NamedTuple):
    """What a leader knows of one peer it replicates to (:meth:`HardenedSyncObj.peer_health`)."""

    #: Seconds since the peer last answered; a peer that has not answered yet counts from
    #: when the leader began replicating to it (or began leading), so that it is not
    #: taken for offline at once.
    silent: float
    #: Entries of the leader's log the peer has not acknowledged.
    behind: int
    #: Whether the peer acknowledged entries in this leader's term.  Until it has,
    #: ``behind`` is an assumption (the leader knows nothing of the peer's log), and
    #: ``silent`` says nothing about whether it is reachable at all.
    acknowledged: bool


class HardenedSyncObj(SyncObj):  # type: ignore[misc]
    """A PySyncObj node with the fixes above; commands are opaque bytes.

    Args:
        self_address: this node's address.
        peers: the other voters' addresses.
        conf: a configuration from :func:`raft_config`.
        apply: called on the tick thread, in log order, with ``(index, command)``
            for every committed command (``command`` is empty for the no-op
            entry each new leader appends); its return value goes to the submitter.
        voting: whether this node starts as a voter (a joining node does not:
            the log tells it its role).
        snapshot_roles: returns the roles recorded in the snapshot being
            installed (PySyncObj passes on only the voters).
        storage_probe_interval: seconds between probes of a journal that
            cannot write (see "Storage failures").
        **kwargs: passed to ``SyncObj`` (``transportClass``...).
    """

    # PySyncObj's private state that the fixes below write (name-mangled there).
    _SyncObj__raftLeader: Any
    _SyncObj__raftCommitIndex: int
    _SyncObj__leaderCommitIndex: int | None
    _SyncObj__raftElectionDeadline: float
    _SyncObj__transferInProgress: bool

    def __init__(
        self,
        self_address: str | None,
        peers: Sequence[str],
        conf: Any,
        apply: ApplyHandler,
        *,
        voting: bool = True,
        snapshot_roles: Callable[[], Mapping[str, int] | None] | None = None,
        storage_probe_interval: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self._dqlitepy_apply = apply
        # The configuration: every member's role, this node's included. Read
        # and written on the tick thread only (other threads read copies).
        self._roles: dict[str, int] = {str(p): NodeRole.VOTER for p in peers if p != self_address}
        if voting and self_address is not None:
            self._roles[self_address] = NodeRole.VOTER
        self._voting = voting and self_address is not None
        self._snapshot_roles = snapshot_roles
        self._waiters: set[Callable[[Any, int], None]] = set()
        self._waiters_lock = threading.Lock()
        self_node = PeerNode(self_address) if self_address is not None else None
        others = [PeerNode(p) for p in peers]
        self._tick_calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        # Linearizable reads; all of it belongs to the tick thread.  Defined
        # before SyncObj.__init__, which starts that thread (and so that
        # PySyncObj's own serializer would leave it out).
        self._read_number = 0  # the latest round; every AppendEntries carries it
        self._read_round: _ReadRound | None = None  # the round in flight
        self._read_queue: list[_ReadRequest] = []  # requests for the next round
        self._read_applying: list[_ReadRequest] = []  # confirmed, waiting for apply
        self._read_requests = 0
        self._read_rounds = 0
        # The read_round of the AppendEntries being answered (follower side).
        self._answering_round: int | None = None
        # Leader side: the term in which each peer last acknowledged entries (a peer
        # unheard of is not "caught up", however short the log; see peer_health).
        self._acknowledged: dict[Any, int] = {}
        # Storage failures (see above); tick thread, but _probe_requested,
        # which any thread may set.
        self._storage_probe_interval = storage_probe_interval
        self._next_probe = 0.0
        self._probe_requested = False
        self._storage_down = False  # a failure was handled and not yet recovered from
        self._transfer: _Transfer | None = None  # the leadership transfer under way
        super().__init__(self_node, others, conf, nodeClass=PeerNode, **kwargs)
        self._tag_append_entries()
        self.addOnTickCallback(self._run_tick_calls)
        self.addOnTickCallback(self._serve_reads)
        self.addOnTickCallback(self._watch_storage)
        self.addOnTickCallback(self._drive_transfer)
        self._admit_strangers()
        # After the snapshot (loaded on the first tick), the log's own changes.
        self.on_tick(self._replay_configuration)

    def on_tick(self, call: Callable[[], None]) -> None:
        """Run ``call`` on Raft's thread at its next tick.

        PySyncObj's state and the transport belong to that thread; calls that
        touch them directly (``transferLeadership``) must not run elsewhere.
        The thread is woken, so the call runs within a tick, not after the
        tick's poll timeout.
        """
        self._tick_calls.put(call)
        self._wake()

    def _wake(self) -> None:
        # PySyncObj's own wake-up pipe (it exists when batching is off, as here).
        notifier = getattr(self, "_SyncObj__pipeNotifier", None)
        if notifier is None:
            return
        # A full pipe means a wake-up is pending already; a closed one, destroyed.
        with contextlib.suppress(OSError):
            notifier.notify()

    def _run_tick_calls(self) -> None:
        while True:
            try:
                call = self._tick_calls.get_nowait()
            except queue.Empty:
                return
            try:
                call()
            except Exception:
                log.exception("a call on Raft's thread failed")

    # --------------------------------------------------------------- submitting

    def submit(self, command: bytes, callback: Callable[[Any, int], None]) -> None:
        """Queue a command; ``callback(result, fail_reason)`` runs on the tick thread.

        Only the leader submits: followers would forward the command to whoever
        they think leads, and a transaction's pages built on one node's state
        must not be appended elsewhere.
        """
        if self.raft_state != LEADER:
            callback(None, FAIL_REASON.NOT_LEADER)
            return
        self._applyCommand(command, callback, _REGULAR)

    def submit_and_wait(self, command: bytes, timeout: float) -> tuple[Any, int]:
        """Submit and block until the command is applied or fails; ``(result, reason)``."""
        done = threading.Event()
        outcome: list[Any] = [None, FAIL_REASON.UNKNOWN_OUTCOME]

        def callback(result: Any, reason: int) -> None:
            # The first outcome counts: abandon_waiters() may follow the real
            # one (a failed append steps the leader down) before we wake up.
            if not done.is_set():
                outcome[0], outcome[1] = result, reason
                done.set()

        with self._waiters_lock:
            self._waiters.add(callback)
        try:
            self.submit(command, callback)
            if not done.wait(timeout):
                return None, FAIL_REASON.UNKNOWN_OUTCOME
            return outcome[0], outcome[1]
        finally:
            with self._waiters_lock:
                self._waiters.discard(callback)

    def abandon_waiters(self) -> None:
        """Release every :meth:`submit_and_wait` caller with LEADER_CHANGED.

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

    # ---------------------------------------------------- leadership transfer

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
        self._transfer = _Transfer(target, deadline, callback)
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

    # ------------------------------------------------------- storage failures

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

    def _self_address(self) -> str:
        node = self.selfNode
        return "?" if node is None else str(node.id)

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

    def postpone_election(self) -> None:
        """Restart the election timer (after a long pause of Raft's thread)."""
        self._SyncObj__raftElectionDeadline = (
            time.monotonic() + self._SyncObj__generateRaftTimeout()
        )

    # ------------------------------------------------------- linearizable reads

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
        """:meth:`read_index`, waiting up to ``timeout``: ``(result, read_index)``."""
        if self.raft_state != LEADER:
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

    @property
    def read_stats(self) -> tuple[int, int]:
        """``(requests, rounds)`` so far: how well concurrent reads share rounds."""
        return self._read_requests, self._read_rounds

    def _read_arrived(self, callback: ReadCallback) -> None:
        """Take a read request up (tick thread): record its read index, join a round."""
        if self.raft_state != LEADER:
            self._finish(callback, ReadResult.NOT_LEADER, 0)
            return
        self._read_requests += 1
        # Until its no-op commits, a new leader's commit index may be behind
        # what earlier leaders committed; all of that precedes the no-op.
        noop = self._SyncObj__noopIDx or 0
        index = max(int(self._SyncObj__raftCommitIndex), int(noop))
        request = _ReadRequest(callback, int(self._SyncObj__raftCurrentTerm), index)
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
        transport instance is the narrowest place to add a field.
        """
        transport = self._SyncObj__transport
        send = transport.send

        def tagged_send(node: Any, message: Any) -> Any:
            if isinstance(message, dict) and message.get("type") == "append_entries":
                message["read_round"] = self._read_number  # a fresh dict per message
            return send(node, message)

        transport.send = tagged_send

    def _SyncObj__sendNextNodeIdx(
        self,
        node: Any,
        reset: bool = False,
        nextNodeIdx: int | None = None,  # PySyncObj's keyword
        success: bool = False,
    ) -> None:
        # PySyncObj's answer to AppendEntries, plus our term (Raft's responses
        # carry it) and the read round of the message answered.
        if nextNodeIdx is None:
            nextNodeIdx = self._SyncObj__getCurrentLogIndex() + 1
        self._SyncObj__transport.send(
            node,
            {
                "type": "next_node_idx",
                "next_node_idx": nextNodeIdx,
                "reset": reset,
                "success": success,
                "term": self._SyncObj__raftCurrentTerm,
                "read_round": self._answering_round,
            },
        )

    def _deposed(self, term: int) -> None:
        """A follower answered with a newer term: another leader may exist; step down."""
        log.info("a follower is at term %d: this leader steps down", term)
        self._SyncObj__setCurrentTerm(term, None)
        self._SyncObj__setState(FOLLOWER)
        self._SyncObj__raftLeader = None
        # Wait for the new leader's heartbeat instead of an election at once.
        self.postpone_election()
        self._fail_reads(ReadResult.LEADERSHIP_LOST)

    def _doDestroy(self) -> None:
        # The tick thread ends here: nobody would ever answer the reads waiting.
        self._fail_reads(ReadResult.NOT_LEADER)
        SyncObj._doDestroy(self)

    # ------------------------------------------------------------ state access

    @property
    def raft_state(self) -> int:
        """FOLLOWER, CANDIDATE or LEADER."""
        return int(self._SyncObj__raftState)

    @property
    def leader_address(self) -> str | None:
        """The address of the last known leader, or None."""
        leader = self._SyncObj__raftLeader
        return None if leader is None else str(leader.id)

    @property
    def barrier_done(self) -> bool:
        """True once this leader applied the no-op of its term (all earlier entries)."""
        noop = self._SyncObj__noopIDx
        return (
            self.raft_state == LEADER
            and noop is not None
            and self._SyncObj__raftLastApplied >= noop
        )

    @property
    def noop_index(self) -> int | None:
        """While leading: the index of the no-op entry that began this term."""
        noop = self._SyncObj__noopIDx
        return None if self.raft_state != LEADER or noop is None else int(noop)

    @property
    def commit_index(self) -> int:
        """Index of the last entry known to be committed."""
        return int(self._SyncObj__raftCommitIndex)

    @property
    def last_applied(self) -> int:
        """Index of the last applied entry."""
        return int(self._SyncObj__raftLastApplied)

    @property
    def voters(self) -> list[str]:
        """Addresses of the voters (this node included if it votes)."""
        return sorted(a for a, role in dict(self._roles).items() if role == NodeRole.VOTER)

    @property
    def roles(self) -> dict[str, int]:
        """The configuration: each member's address and role."""
        return dict(self._roles)

    def peer_health(self) -> dict[str, PeerHealth]:
        """For a leader (tick thread): each replicated peer's silence and lag.

        Maps the address of every voter and standby but this node to its
        :class:`PeerHealth`.
        """
        if self.raft_state != LEADER:
            return {}
        now = time.monotonic()
        last = self._SyncObj__getCurrentLogIndex()
        term = self._SyncObj__raftCurrentTerm
        answered = self._SyncObj__lastResponseTime
        match = self._SyncObj__raftMatchIndex
        return {
            str(node.id): PeerHealth(
                now - answered.get(node, -math.inf),
                last - match.get(node, 0),
                self._acknowledged.get(node) == term,
            )
            for node in self._SyncObj__otherNodes | self._SyncObj__readonlyNodes
        }

    @property
    def voting(self) -> bool:
        """Whether this node is a voter (only voters stand for election)."""
        return self._voting

    def change_role(
        self, address: str, role: int | None, callback: Callable[[Any, int], None]
    ) -> None:
        """Append the entry giving ``address`` ``role`` (None removes it); leader only.

        PySyncObj takes one change at a time: a second one before the first is
        applied fails with REQUEST_DENIED.
        """

        def append() -> None:  # on the tick thread, where the current role is known
            entry = role_change(address, self._roles.get(address), role)
            self._applyCommand(entry[1:], callback, _MEMBERSHIP)

        self.on_tick(append)

    # ------------------------------------------------------------ configuration

    def _set_role(self, address: str, role: int | None) -> bool:
        """Make ``address``'s role ``role`` here (tick thread); False if it already was."""
        if self._roles.get(address, None) == role:
            return False
        if role is None:
            self._roles.pop(address, None)
        else:
            self._roles[address] = role
        if self.selfNode is not None and address == str(self.selfNode.id):
            self._set_voting(role == NodeRole.VOTER)
            return True
        node = PeerNode(address)
        voters = self._SyncObj__otherNodes
        standbys = self._SyncObj__readonlyNodes
        replicated_before = node in voters or node in standbys
        voters.discard(node)
        standbys.discard(node)
        if role == NodeRole.VOTER:
            voters.add(node)
        elif role == NodeRole.STANDBY:
            standbys.add(node)
        next_index = self._SyncObj__raftNextIndex
        match_index = self._SyncObj__raftMatchIndex
        if role in (NodeRole.VOTER, NodeRole.STANDBY):
            if not replicated_before:
                next_index[node] = self._SyncObj__getCurrentLogIndex() + 1
                match_index[node] = 0
                self._acknowledged.pop(node, None)
                self._SyncObj__transport.addNode(node)
            # A voter the leader never heard from would count as silent at once.
            self._SyncObj__lastResponseTime.setdefault(node, time.monotonic())
        elif replicated_before:
            next_index.pop(node, None)
            match_index.pop(node, None)
            self._acknowledged.pop(node, None)
            self._SyncObj__lastResponseTime.pop(node, None)
            self._SyncObj__transport.dropNode(node)
        return True

    def _set_voting(self, voting: bool) -> None:
        if voting == self._voting:
            return
        self._voting = voting
        self.postpone_election()  # a fresh timeout, or none at all for a non-voter
        if not voting and self.raft_state == LEADER:
            log.warning("this leader is no longer a voter: stepping down")
            self._SyncObj__setState(FOLLOWER)
            self._SyncObj__raftLeader = None
        self._admit_strangers()

    def _admit_strangers(self) -> None:
        # A node that does not vote cannot disrupt elections, and must hear from
        # leaders its stale configuration does not know yet.
        transport = self._SyncObj__transport
        if hasattr(transport, "accept_strangers"):
            transport.accept_strangers = not self._voting

    def _replay_configuration(self) -> None:
        """Apply the membership entries of the log (after the snapshot), as Raft does at append."""
        first = self._SyncObj__raftLog[0][1]
        for command, _, _ in self._SyncObj__getEntries(first):
            request = self._SyncObj__parseChangeClusterRequest(bytes(command))
            if request is not None:
                self._SyncObj__doChangeCluster(request)

    def _SyncObj__updateClusterConfiguration(self, voters: list[Any]) -> None:
        # PySyncObj's hook for the configuration of a snapshot being loaded.
        roles = self._snapshot_roles() if self._snapshot_roles is not None else None
        if roles is None:
            roles = {str(n.id): NodeRole.VOTER for n in voters}
            if self._voting and self.selfNode is not None:
                roles[str(self.selfNode.id)] = NodeRole.VOTER
        for address in set(self._roles) - set(roles):
            self._set_role(address, None)
        for address, role in roles.items():
            self._set_role(str(address), int(role))

    def _SyncObj__generateRaftTimeout(self) -> float:
        if not self._voting or not self.storage_writable:
            return math.inf  # never stands for election
        return float(SyncObj._SyncObj__generateRaftTimeout(self))

    def _SyncObj__doChangeCluster(self, request: Any, reverse: bool = False) -> bool:
        if isinstance(request, list) and len(request) == 4 and request[0] == "role":
            _, address, old, new = request
            return self._set_role(str(address), old if reverse else new)
        if isinstance(request, list) and len(request) >= 2 and request[0] in ("add", "rem"):
            # PySyncObj's own entries (logs written before roles existed).
            adding = (request[0] == "add") != reverse
            return self._set_role(str(request[1]), NodeRole.VOTER if adding else None)
        return False

    # ------------------------------------------------------------- the fixes

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:
        kind = command[0] if command else _NO_OP
        if kind == _REGULAR:
            index = self._SyncObj__raftLastApplied + 1
            return self._dqlitepy_apply(index, bytes(command[1:]))
        if kind == _NO_OP:
            # Each leader's first entry: the application learns a term began.
            return self._dqlitepy_apply(self._SyncObj__raftLastApplied + 1, b"")
        # MEMBERSHIP entries took effect when appended; VERSION entries (we never
        # change the code version) do nothing.
        return None

    def _SyncObj__parseChangeClusterRequest(self, command: bytes) -> Any:
        if not command or command[0] != _MEMBERSHIP:
            return None
        payload = bytes(command[1:])
        try:
            # A pickle is PySyncObj's own add/rem entry; ours are cbor2.
            pickled = payload[:1] == b"\x80"
            request = safe_unpickle(payload) if pickled else cbor2.loads(payload)
        except Exception:
            log.error("ignoring an undecodable membership entry")
            return None
        return request

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind in ("request_vote", "timeout_now") and not self.storage_writable:
            # A vote, or the term of an election, that cannot be persisted must
            # not be sent (see "Storage failures").
            return
        try:
            self._on_message(node, message, kind)
        except JournalWriteError as exc:
            self._storage_failed(exc)  # nothing reflecting the failed write was sent

    def _on_message(self, node: Any, message: dict[str, Any], kind: Any) -> None:
        if kind == "append_entries":
            self._answering_round = message.get("read_round")
            try:
                self._on_append_entries(node, message)
            finally:
                self._answering_round = None
            return
        if kind == "apply_command":
            # Nobody forwards commands in a dqlitepy cluster (see submit()).
            return
        if kind == "next_node_idx" and self.raft_state == LEADER:
            self._next_node_idx(node, message)
            return
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _on_append_entries(self, node: Any, message: dict[str, Any]) -> None:
        if message["term"] < self._SyncObj__raftCurrentTerm:
            # A stale leader: tell it our term so that it steps down (Figure 2)
            # instead of believing it leads until its silence timeout.
            self._SyncObj__sendNextNodeIdx(node, success=False, reset=False)
            return
        if "prevLogIdx" not in message:  # a snapshot chunk
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            return
        if "transmission" in message:
            log.error("refusing a chunked append_entries from %s", node.id)
            return
        self._append_entries(node, message)

    def _next_node_idx(self, node: Any, message: dict[str, Any]) -> None:
        """A follower's answer to AppendEntries, counted without rewinding."""
        term = message.get("term")  # absent from a stock PySyncObj node
        if term is not None and term > self._SyncObj__raftCurrentTerm:
            self._deposed(term)
            return
        if term is not None and term < self._SyncObj__raftCurrentTerm:
            # An answer to a message of an earlier term of ours: the log it
            # describes may not be this term's log.
            return
        match = self._SyncObj__raftMatchIndex
        next_index = self._SyncObj__raftNextIndex
        if node not in match:
            return
        proposed = message["next_node_idx"]
        if message["success"]:
            # Several AppendEntries may be in flight: an early acknowledgement
            # must not send nextIndex back over entries already on their way.
            match[node] = max(match[node], proposed - 1)
            next_index[node] = max(next_index[node], match[node] + 1)
            self._acknowledged[node] = self._SyncObj__raftCurrentTerm
        elif message["reset"]:
            next_index[node] = proposed
            # The follower lacks what comes from `proposed` on: never count it.
            match[node] = min(match[node], proposed - 1)
        self._SyncObj__lastResponseTime[node] = time.monotonic()
        if term is not None:
            self._read_answer(node, message)

    def _append_entries(self, node: Any, message: dict[str, Any]) -> None:
        """AppendEntries as Raft's Figure 2 says (see the module docstring)."""
        term = message["term"]
        if term < self._SyncObj__raftCurrentTerm:
            return
        if term > self._SyncObj__raftCurrentTerm:
            self._SyncObj__transferInProgress = False
        if not self._SyncObj__transferInProgress:
            self._SyncObj__raftElectionDeadline = (
                time.monotonic() + self._SyncObj__generateRaftTimeout()
            )
        if self._SyncObj__raftLeader != node:
            self._SyncObj__onLeaderChanged()
        self._SyncObj__raftLeader = node
        if term > self._SyncObj__raftCurrentTerm:
            self._SyncObj__setCurrentTerm(term, None)
        self._SyncObj__setState(FOLLOWER)
        leader_commit = message["commit_index"]
        self._SyncObj__leaderCommitIndex = leader_commit

        prev_index, prev_term = message["prevLogIdx"], message["prevLogTerm"]
        entries = message.get("entries") or []
        prev = self._SyncObj__getEntries(prev_index, 1)
        if not prev:
            self._SyncObj__sendNextNodeIdx(node, success=False, reset=True)
            return
        if prev[0][2] != prev_term:
            self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=prev_index, success=False, reset=True)
            return

        last = self._SyncObj__getCurrentLogIndex()
        start = 0
        while start < len(entries) and entries[start][1] <= last:
            ours = self._SyncObj__getEntries(entries[start][1], 1)
            if ours and ours[0][2] == entries[start][2]:
                start += 1
                continue
            self._truncate_from(entries[start][1])
            break
        membership = self.conf.dynamicMembershipChange
        for command, index, entry_term in entries[start:]:
            try:
                self._SyncObj__raftLog.add(bytes(command), index, entry_term)
            except JournalWriteError as exc:
                self._storage_failed(exc)
                # Everything up to our log's end matches the leader's (checked
                # above); from there on the leader must send again.
                self._SyncObj__sendNextNodeIdx(
                    node,
                    nextNodeIdx=self._SyncObj__getCurrentLogIndex() + 1,
                    success=False,
                    reset=True,
                )
                return
            if membership:
                request = self._SyncObj__parseChangeClusterRequest(bytes(command))
                if request is not None:
                    self._SyncObj__doChangeCluster(request)

        # Only what this message proved matches the leader's log.
        verified = prev_index + len(entries)
        self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=verified + 1, success=True)
        commit = self._SyncObj__raftCommitIndex
        if leader_commit > commit:
            self._SyncObj__raftCommitIndex = min(leader_commit, verified)
            self._SyncObj__raftLog.setRaftCommitIndex(self._SyncObj__raftCommitIndex)

    def _truncate_from(self, index: int) -> None:
        """Delete a conflicting suffix, undoing the membership changes it held."""
        if index <= self._SyncObj__raftLastApplied:
            # Committed entries never conflict in Raft; refuse rather than diverge.
            raise RuntimeError(f"refusing to truncate applied entry {index}")
        doomed = self._SyncObj__getEntries(index) if self.conf.dynamicMembershipChange else []
        try:
            self._SyncObj__deleteEntriesFrom(index)
        finally:
            # Undo the membership changes of the entries actually gone (a failed
            # deletion may have cut the log or not).
            last = self._SyncObj__getCurrentLogIndex()
            for command, entry_index, _ in reversed(doomed):
                if entry_index <= last:
                    continue
                request = self._SyncObj__parseChangeClusterRequest(bytes(command))
                if request is not None:
                    self._SyncObj__doChangeCluster(request, reverse=True)
