"""HardenedSyncObj: PySyncObj's ``SyncObj`` with one mixin per fix, and its state accessors.

The fixes live in the mixins (see the package docstring for the list); this
module composes them, runs calls other threads hand to Raft's thread, and
answers what the rest of dqlitepy asks about the node's state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from pysyncobj import SyncObj

from .commands import CommandsMixin
from .commit import CommitMixin
from .config import LEADER, ApplyHandler, PeerNode
from .entries import EntriesMixin
from .lease import LeaseMixin
from .messages import MessagesMixin
from .reads import ReadResult, ReadsMixin
from .remote import RemoteReadsMixin
from .roles import RolesMixin
from .snapshot import SnapshotHead, SnapshotMixin
from .stats import StatsMixin
from .storage import StorageMixin
from .tick import TickMixin
from .transfer import TransferMixin

__all__ = ["HardenedSyncObj", "PeerHealth"]

log = logging.getLogger("dqlitepy.replication")


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


class HardenedSyncObj(
    EntriesMixin,
    MessagesMixin,
    RolesMixin,
    CommandsMixin,
    TransferMixin,
    StorageMixin,
    SnapshotMixin,
    ReadsMixin,
    RemoteReadsMixin,
    LeaseMixin,
    CommitMixin,
    StatsMixin,
    TickMixin,
    SyncObj,  # type: ignore[misc]  # pysyncobj is untyped
):
    """A PySyncObj node with the fixes of this package; commands are opaque bytes.

    Each mixin overrides PySyncObj's private methods by their mangled names
    (``_SyncObj__x``); they come before ``SyncObj`` in the method resolution
    order, and no two of them define the same name.

    Args:
        self_address: this node's address.
        peers: the other voters' addresses.
        conf: a configuration from :func:`~.config.raft_config`.
        apply: called on the tick thread, in log order, with ``(index, command)``
            for every committed command (``command`` is empty for the no-op
            entry each new leader appends); its return value goes to the submitter.
        voting: whether this node starts as a voter (a joining node does not:
            the log tells it its role).
        snapshot_roles: returns the roles recorded in the snapshot being
            installed (PySyncObj passes on only the voters).
        snapshot_head: returns the last two entries of this node's snapshot
            (None without one), read at start (see :mod:`.snapshot`).
        storage_probe_interval: seconds between probes of a journal that
            cannot write (see "Storage failures" in :mod:`.storage`).
        read_lease: serve reads under a leader lease when it holds one
            (:mod:`.lease`); False confirms every read with a ReadIndex round.
        adaptive_tick: let the tick thread sleep until its next timer while
            idle (:mod:`.tick`); False ticks every ``autoTickPeriod`` as PySyncObj does.
        **kwargs: passed to ``SyncObj`` (``transportClass``...).
    """

    def __init__(
        self,
        self_address: str | None,
        peers: Sequence[str],
        conf: Any,
        apply: ApplyHandler,
        *,
        voting: bool = True,
        snapshot_roles: Callable[[], Mapping[str, int] | None] | None = None,
        snapshot_head: SnapshotHead | None = None,
        storage_probe_interval: float = 1.0,
        read_lease: bool = True,
        adaptive_tick: bool = True,
        **kwargs: Any,
    ) -> None:
        # Every part's state is set before SyncObj.__init__, which starts the
        # tick thread (and so that PySyncObj's own serializer leaves it out).
        self._init_entries(apply)
        self._init_roles(self_address, peers, voting, snapshot_roles)
        self._init_commands()
        self._init_reads()
        self._init_lease(read_lease)
        self._init_messages()
        self._init_storage(storage_probe_interval)
        self._init_snapshot(snapshot_head)
        self._init_transfer()
        self._init_commit()
        self._init_remote_reads()
        self._init_stats()
        self._init_tick(adaptive_tick)
        self._tick_calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self_node = PeerNode(self_address) if self_address is not None else None
        others = [PeerNode(p) for p in peers]
        super().__init__(self_node, others, conf, nodeClass=PeerNode, **kwargs)
        self._tag_append_entries()
        self.addOnTickCallback(self._run_tick_calls)
        self.addOnTickCallback(self._tend_lease)
        self.addOnTickCallback(self._serve_reads)
        self.addOnTickCallback(self._expire_remote_reads)
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
        if self._tick_calls.empty():
            return  # most ticks: without raising and catching queue.Empty
        while True:
            try:
                call = self._tick_calls.get_nowait()
            except queue.Empty:
                return
            try:
                call()
            except Exception:
                log.exception("a call on Raft's thread failed")

    def postpone_election(self) -> None:
        """Restart the election timer (after a long pause of Raft's thread)."""
        self._SyncObj__raftElectionDeadline = (
            time.monotonic() + self._SyncObj__generateRaftTimeout()
        )

    def _self_address(self) -> str:
        node = self.selfNode
        return "?" if node is None else str(node.id)

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
