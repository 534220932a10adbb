"""The replication layer's one small interface: :class:`Replicator`.

It assembles the hardened parts — :class:`~.raft.HardenedSyncObj` (Raft),
:class:`~.journal.DurableJournal` (fsync'd log) and
:class:`~.transport.SecureTransport` (authenticated cbor2 over the node's one
address) — and exposes what the server needs: submit a command and wait for
its outcome, confirm leadership before a read (:meth:`Replicator.read_barrier`),
know whether this node leads, hand over Raft sockets, change members' roles.
Nothing else in dqlitepy sees PySyncObj.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from pysyncobj.config import FAIL_REASON

from .errors import (
    LeadershipLost,
    LeadershipUnconfirmed,
    NotLeader,
    ReplicationError,
    StorageError,
)
from .journal import JournalWriteError, durable_journal_for_syncobj
from .raft import (
    FAILURES,
    LEADER,
    STORAGE_FAILED,
    ApplyHandler,
    HardenedSyncObj,
    PeerHealth,
    PeerNode,
    ReadResult,
    Submission,
    raft_config,
)
from .snapshot_files import SnapshotFiles
from .stats import RaftStats, SnapshotStats
from .transport import SecureTransport, secure_transport_class

__all__ = [
    "DEFAULT_SNAPSHOT_ENTRIES",
    "ApplyHandler",
    "LeadershipLost",
    "LeadershipUnconfirmed",
    "NotLeader",
    "PeerHealth",
    "PendingCommand",
    "ReplicationError",
    "Replicator",
    "StorageError",
]

#: Compact the log (write a snapshot) once it holds this many entries.
DEFAULT_SNAPSHOT_ENTRIES = 10_000
#: A snapshot travels to a lagging node in chunks of this size.
SNAPSHOT_CHUNK = 4 * 1024 * 1024

log = logging.getLogger("dqlitepy.replication")

# Reasons meaning "the command never entered the log".
_NOT_APPENDED = {FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER, FAIL_REASON.QUEUE_FULL}


class PendingCommand:
    """A command submitted by :meth:`Replicator.submit_async`, its outcome still to come."""

    def __init__(self, submission: Submission) -> None:
        self._submission = submission

    def result(self, timeout: float) -> Any:
        """Wait up to ``timeout`` for the outcome; what applying the command returned.

        Several threads may wait; each learns the same outcome.

        Raises:
            StorageError: this node could not store the command; it was not
                appended anywhere (and this node stepped down).
            NotLeader: this node does not lead; nothing was appended.
            LeadershipLost: the outcome is unknown (or none came in time).
        """
        result, reason = self._submission.wait(timeout)
        if reason == FAIL_REASON.SUCCESS:
            return result
        if reason == STORAGE_FAILED and isinstance(result, JournalWriteError):
            raise StorageError(f"the Raft log cannot be written: {result.cause}", full=result.full)
        name = FAILURES.get(reason, str(reason))
        if reason in _NOT_APPENDED:
            raise NotLeader(f"not leader ({name})")
        raise LeadershipLost(f"leadership lost ({name})")


class Replicator:
    """One node's Raft participation.

    Args:
        address: this node's address (also its Raft identity).
        data_dir: where the Raft journal lives (``raft/journal``).
        voters: the other voters this node starts with.
        voting: whether this node starts as a voter (the first node of a
            cluster does; a joining node learns its role from the log).
        node_id: this node's dqlite id (sent in CONNECT).
        cluster_key: the key every member shares (authenticates Raft traffic).
        apply: called on Raft's thread, in log order, with ``(index, command)``
            for every committed command; its return value is the submitter's result.
            ``command`` is empty for the no-op entry each new leader appends.
        on_leadership: called on Raft's thread with True/False when this node
            gains or loses the leader role.
        ssl_context: dial peers with TLS using this (client) context; peers'
            connections handed over by :meth:`adopt` are then TLS sockets too.
        read_lease: let :meth:`read_barrier` serve reads under the leader's
            lease (no message); False confirms every read with a ReadIndex round.
        cluster_id: returns this node's cluster id (None while it knows none): the
            transport refuses peers that name another one.
    """

    def __init__(
        self,
        address: str,
        data_dir: Path,
        voters: Sequence[str],
        *,
        voting: bool = True,
        node_id: int,
        cluster_key: bytes,
        apply: ApplyHandler,
        on_leadership: Callable[[bool], None] | None = None,
        snapshot: Callable[[], Callable[[BinaryIO], None]] | None = None,
        restore: Callable[[BinaryIO], None] | None = None,
        snapshot_entries: int = DEFAULT_SNAPSHOT_ENTRIES,
        ssl_context: ssl.SSLContext | None = None,
        read_lease: bool = True,
        cluster_id: Callable[[], str | None] | None = None,
    ) -> None:
        self.address = address
        self._cluster_id = cluster_id
        self._read_lease = read_lease
        self._ssl_context = ssl_context
        self._raft_dir = Path(data_dir) / "raft"
        self._voters = [v for v in voters if v != address]
        self._voting = voting
        self._node_id = node_id
        self._cluster_key = cluster_key
        self._apply = apply
        self._on_leadership = on_leadership
        self._transport: SecureTransport | None = None
        self._core: HardenedSyncObj | None = None
        self._was_leader = False
        self._lock = threading.Lock()
        self._snapshot_entries = snapshot_entries
        self._snapshots = (
            None
            if snapshot is None or restore is None
            else SnapshotFiles(
                address,
                self._raft_dir / "snapshot",
                capture=snapshot,
                restore=restore,
                core=lambda: self._core,
                check_storage=self.check_storage,
            )
        )

    # ----------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Open the journal, start Raft and the transport."""
        self._raft_dir.mkdir(parents=True, exist_ok=True)

        def created(transport: SecureTransport) -> None:
            self._transport = transport

        transport_class = secure_transport_class(
            self._cluster_key,
            node_id=self._node_id,
            on_created=created,
            ssl_context=self._ssl_context,
            cluster_id=self._cluster_id,
        )
        options: dict[str, Any] = {}
        snapshots = self._snapshots
        if snapshots is not None:
            # Log compaction: dqlitepy writes the snapshot itself (the databases,
            # streamed to a file), PySyncObj ships the file to lagging nodes.
            options = {
                "fullDumpFile": str(snapshots.path),
                "serializer": snapshots.write,
                "serializeChecker": snapshots.progress,
                "deserializer": snapshots.read,
                "logCompactionMinEntries": self._snapshot_entries,
                "logCompactionBatchSize": SNAPSHOT_CHUNK,
            }
        conf = raft_config(
            journalFile=str(self._raft_dir / "journal"),
            onStateChanged=self._state_changed,
            **options,
        )
        with durable_journal_for_syncobj():
            self._core = HardenedSyncObj(
                self.address,
                self._voters,
                conf,
                self._apply,
                voting=self._voting,
                snapshot_roles=lambda: None if snapshots is None else snapshots.roles,
                snapshot_head=None if snapshots is None else snapshots.head,
                read_lease=self._read_lease,
                transportClass=transport_class,
            )

    def close(self) -> None:
        """Stop Raft (hand leadership over first if this node leads)."""
        core = self._core
        if core is None:
            return
        if core.raft_state == LEADER and core.otherNodes:
            # Hand over first, as dqlite does, so clients find a leader at once.
            try:
                self.transfer(None, timeout=3.0)
            except ReplicationError as exc:
                log.warning("could not hand leadership over before stopping: %s", exc)
        self._core = None
        core.destroy_synchronous()

    # -------------------------------------------------------------- queries

    @property
    def core(self) -> HardenedSyncObj:
        if self._core is None:
            raise ReplicationError("replication is not running")
        return self._core

    def is_leader(self) -> bool:
        """True once this node leads and has applied every earlier entry (barrier)."""
        core = self._core
        return core is not None and core.barrier_done

    def caught_up(self) -> bool:
        """True once this node has applied every entry it knows to be committed."""
        core = self._core
        return core is not None and core.last_applied >= core.commit_index

    def barrier_index(self) -> int | None:
        """While this node leads: the index of its term's first entry (its barrier)."""
        core = self._core
        return None if core is None else core.noop_index

    def is_elected(self) -> bool:
        """True while Raft has made this node leader, its barrier possibly pending."""
        core = self._core
        return core is not None and core.raft_state == LEADER

    def storage_writable(self) -> bool:
        """False while this node's Raft log refuses writes (it then takes no part in elections)."""
        core = self._core
        return core is None or core.storage_writable

    def check_storage(self) -> None:
        """Have Raft's thread probe the log's storage soon (any thread, never waits).

        If the probe fails, this node steps down and stays out of elections
        until its storage works again.
        """
        core = self._core
        if core is not None:
            core.request_storage_check()

    def leader_address(self) -> str | None:
        """The last known leader's address."""
        core = self._core
        return None if core is None else core.leader_address

    def roles(self) -> dict[str, int]:
        """Every member's address and role (VOTER, STANDBY or SPARE), as Raft has them."""
        return self.core.roles

    def stats(self) -> RaftStats | None:
        """This node's Raft figures, read without waiting for Raft's thread; None if stopped."""
        core = self._core
        if core is None:
            return None
        figures = core.raft_figures()
        stats = SnapshotStats() if self._snapshots is None else self._snapshots.stats
        return {**figures, "snapshots": stats.data()}

    def leader_read_index(self, timeout: float) -> int:
        """The leader's read index, asked now, from any member (``raft/remote.py``).

        Every entry the leader had committed when this call began is at or before it.

        Raises:
            NotLeader: no leader is known, or the node asked does not lead
                (or stopped leading meanwhile).
            LeadershipUnconfirmed: no answer within ``timeout``.
        """
        core = self._core
        if core is None:
            raise NotLeader("no leader known (replication is not running)")
        result, index = core.leader_read_index(timeout)
        if result is ReadResult.CONFIRMED:
            return index
        if result is ReadResult.TIMEOUT:
            raise LeadershipUnconfirmed(f"the leader did not answer within {timeout:g} s")
        if result is ReadResult.LEADERSHIP_LOST:
            raise NotLeader("the leader changed before it answered")
        raise NotLeader(
            "no leader known" if core.leader_address is None else "the leader asked does not lead"
        )

    def applied_index(self) -> int:
        """Index of the last entry this node applied (0 when Raft is not running)."""
        core = self._core
        return 0 if core is None else core.last_applied

    def peer_health(self, timeout: float = 2.0) -> dict[str, PeerHealth]:
        """On the leader: each voter's and standby's :class:`PeerHealth`.

        Empty on a node that does not lead (or when Raft's thread is too busy).
        """
        core = self._core
        if core is None:
            return {}
        done = threading.Event()
        result: dict[str, PeerHealth] = {}

        def measure() -> None:
            result.update(core.peer_health())
            done.set()

        core.on_tick(measure)
        done.wait(timeout)
        return dict(result) if done.is_set() else {}

    # ------------------------------------------------------------ commands

    def submit(self, command: bytes, timeout: float) -> Any:
        """Replicate ``command`` and return what applying it returned.

        Raises:
            StorageError: this node could not store the command; it was not
                appended anywhere (and this node stepped down).
            NotLeader: this node does not lead; nothing was appended.
            LeadershipLost: the outcome is unknown.
        """
        return self.submit_async(command).result(timeout)

    def submit_async(self, command: bytes, decoded: object = None) -> PendingCommand:
        """Queue ``command`` for this leader's log and return at once.

        Commands submitted one after the other enter the log in that order
        (or not at all): a later one can build on an earlier one still in flight.
        ``decoded``, what the command decodes to, is handed to this node's apply
        handler with the command, if this node applies the entry it appended for it.
        """
        return PendingCommand(self.core.submit_tracked(command, decoded))

    def read_now(self) -> bool:
        """Whether a read arriving now may be served at once, with no wait (any thread).

        True while this node leads, holds its lease (or is the only voter) and
        has applied everything up to the read index: what :meth:`read_barrier`
        answers on the caller's thread, as one check.  False says nothing more:
        call :meth:`read_barrier`, which waits, confirms leadership with a round
        or raises.
        """
        core = self._core
        return core is not None and core.read_index_now() is not None

    def read_barrier(self, timeout: float) -> int:
        """Wait until a read served by this node now would be linearizable.

        Call it after a read request arrived and before running it.  While
        this leader holds a lease (thesis §6.4.1, ``raft/lease.py``) it
        returns at once with the commit index, once that is applied, and
        sends nothing; otherwise it runs Raft's ReadIndex (thesis §6.4): it
        records the commit index (at least this
        leader's no-op entry, so a new leader's barrier is included), confirms
        with a majority of the voters, through an AppendEntries round started
        after the call, that this node still leads in its term, and waits
        until this node has applied up to that index.  Concurrent callers
        share rounds; a round costs about one round trip to the followers, a
        single-voter cluster needs none.  The caller holds no lock while it
        waits, and Raft's thread never waits for it.

        Returns:
            The read index: Raft has applied at least this far (a server that
            applies entries on its own thread must wait until it has too).

        Raises:
            NotLeader: this node does not lead, or stopped leading (another
                node was elected, a follower answered with a newer term)
                before leadership was confirmed.  Nothing was read.
            LeadershipUnconfirmed: no quorum confirmed leadership (or the
                entries were not applied) within ``timeout``.  Nothing was read.
        """
        core = self._core
        if core is None:
            raise NotLeader("not leader (replication is not running)")
        result, index = core.read_barrier(timeout)
        if result is ReadResult.CONFIRMED:
            return index
        if result is ReadResult.NOT_LEADER:
            raise NotLeader("not leader")
        if result is ReadResult.LEADERSHIP_LOST:
            raise NotLeader("not leader (leadership lost before the read was confirmed)")
        raise LeadershipUnconfirmed(
            f"leadership not confirmed by a quorum within {timeout:g} s; nothing was read"
        )

    def adopt(self, sock: socket.socket, peer_id: int, peer_address: str, initial: bytes) -> None:
        """Hand a socket that sent CONNECT over to Raft."""
        transport = self._transport
        if transport is None:
            sock.close()
            return
        transport.adopt(sock, peer_id, peer_address, initial)

    def set_role(self, address: str, role: int | None, timeout: float = 10.0) -> None:
        """Give ``address`` a role in the Raft configuration (None: remove it).

        One change at a time, as Raft requires; returns once it is committed.

        Raises:
            NotLeader: this node does not lead, or lost leadership first.
            LeadershipLost: the change may or may not have been committed.
            ReplicationError: another change is still in progress.
        """
        if self._core is None or self.core.raft_state != LEADER:
            raise NotLeader("not leader")
        done = threading.Event()
        outcome: list[int] = [FAIL_REASON.UNKNOWN_OUTCOME]

        def callback(result: Any, reason: int) -> None:
            outcome[0] = reason
            done.set()

        self.core.change_role(address, role, callback)
        if not done.wait(timeout):
            raise LeadershipLost("membership change timed out")
        if outcome[0] != FAIL_REASON.SUCCESS:
            name = FAILURES.get(outcome[0], str(outcome[0]))
            if outcome[0] == FAIL_REASON.REQUEST_DENIED:
                raise ReplicationError("a configuration change is already in progress")
            if outcome[0] in _NOT_APPENDED:
                raise NotLeader(f"membership change failed ({name})")
            raise LeadershipLost(f"membership change failed ({name})")

    def transfer(self, address: str | None, timeout: float = 10.0) -> None:
        """Hand leadership to ``address`` (None: the most caught-up voter).

        Returns once this node no longer leads, as dqlite's TRANSFER does.
        Meanwhile new writes wait (see "Leadership transfer" in ``raft``); a
        target that does not take over within an election timeout is asked
        again until ``timeout`` runs out.
        """
        target = None if address is None else PeerNode(address)
        deadline = time.monotonic() + timeout
        while True:
            reason = self._transfer_once(target, deadline)
            if reason == FAIL_REASON.SUCCESS:
                return
            if reason == FAIL_REASON.NOT_LEADER:
                raise NotLeader("not leader")
            if time.monotonic() > deadline:
                raise ReplicationError("leadership transfer failed: the target did not take over")
            time.sleep(0.05)  # e.g. a target far behind, or briefly disconnected

    def _transfer_once(self, target: PeerNode | None, deadline: float) -> int:
        """One transfer attempt on Raft's thread; its FAIL_REASON."""
        core = self.core
        done = threading.Event()
        outcome: list[int] = [FAIL_REASON.UNKNOWN_OUTCOME]

        def finished(reason: int) -> None:
            outcome[0] = reason
            done.set()

        core.on_tick(lambda: core.transfer(target, finished))
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise ReplicationError("leadership transfer failed: no answer in time")
        return outcome[0]

    # -------------------------------------------------------------- events

    def _state_changed(self, old: int, new: int) -> None:
        leading = new == LEADER
        if leading != self._was_leader:
            self._was_leader = leading
            log.info("%s %s leadership", self.address, "took" if leading else "lost")
            if not leading and self._core is not None:
                self._core.abandon_waiters()
            if self._on_leadership is not None:
                self._on_leadership(leading)
