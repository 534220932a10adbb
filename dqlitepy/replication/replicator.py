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
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import cbor2
from pysyncobj.config import FAIL_REASON, SERIALIZER_STATE

from .journal import JournalWriteError, durable_journal_for_syncobj
from .raft import (
    FAILURES,
    LEADER,
    STORAGE_FAILED,
    HardenedSyncObj,
    PeerHealth,
    PeerNode,
    ReadResult,
    Submission,
    raft_config,
)
from .transport import SecureTransport, secure_transport_class

__all__ = [
    "DEFAULT_SNAPSHOT_ENTRIES",
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
SNAPSHOT_VERSION = 1

log = logging.getLogger("dqlitepy.replication")

Entry = tuple[bytes, int, int]

# Reasons meaning "the command never entered the log".
_NOT_APPENDED = {FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER, FAIL_REASON.QUEUE_FULL}


class ReplicationError(Exception):
    """A command could not be replicated."""


class NotLeader(ReplicationError):
    """This node does not lead: the command was not appended anywhere."""


class LeadershipLost(ReplicationError):
    """The command's fate is unknown (leadership changed or time ran out)."""


class StorageError(NotLeader):
    """This node's Raft log cannot be written: the command was not appended anywhere.

    The node has stepped down (see ``raft/storage.py``, "Storage failures").

    Attributes:
        full: the storage is full (no space left, quota exhausted), rather
            than failing (an I/O error).
    """

    def __init__(self, message: str, *, full: bool) -> None:
        super().__init__(message)
        self.full = full


class LeadershipUnconfirmed(ReplicationError):
    """A read barrier timed out: this node may still lead, but no quorum confirmed it.

    Nothing was read.  The node may be cut off from its followers (or they
    are slow); a new leader may already exist elsewhere.
    """


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
        apply: Callable[[int, bytes], Any],
        on_leadership: Callable[[bool], None] | None = None,
        snapshot: Callable[[], Callable[[BinaryIO], None]] | None = None,
        restore: Callable[[BinaryIO], None] | None = None,
        snapshot_entries: int = DEFAULT_SNAPSHOT_ENTRIES,
        ssl_context: ssl.SSLContext | None = None,
        read_lease: bool = True,
    ) -> None:
        self.address = address
        self._read_lease = read_lease
        self._ssl_context = ssl_context
        self._raft_dir = Path(data_dir) / "raft"
        self._voters = [v for v in voters if v != address]
        self._voting = voting
        # The roles recorded in the snapshot being installed (see _read_snapshot).
        self._snapshot_roles: dict[str, int] | None = None
        self._node_id = node_id
        self._cluster_key = cluster_key
        self._apply = apply
        self._on_leadership = on_leadership
        self._transport: SecureTransport | None = None
        self._core: HardenedSyncObj | None = None
        self._was_leader = False
        self._lock = threading.Lock()
        self._snapshot = snapshot
        self._restore = restore
        self._snapshot_entries = snapshot_entries
        self._snapshot_state = SERIALIZER_STATE.NOT_SERIALIZING

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
        )
        options: dict[str, Any] = {}
        if self._snapshot is not None and self._restore is not None:
            # Log compaction: dqlitepy writes the snapshot itself (the databases,
            # streamed to a file), PySyncObj ships the file to lagging nodes.
            options = {
                "fullDumpFile": str(self._raft_dir / "snapshot"),
                "serializer": self._write_snapshot,
                "serializeChecker": self._snapshot_progress,
                "deserializer": self._read_snapshot,
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
                snapshot_roles=lambda: self._snapshot_roles,
                snapshot_head=self._snapshot_head if options else None,
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

    def submit_async(self, command: bytes) -> PendingCommand:
        """Queue ``command`` for this leader's log and return at once.

        Commands submitted one after the other enter the log in that order
        (or not at all): a later one can build on an earlier one still in flight.
        """
        return PendingCommand(self.core.submit_tracked(command))

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

    # ------------------------------------------------------------- snapshots

    def _write_snapshot(self, path: str, raft_data: Any) -> None:
        """PySyncObj's serializer, on Raft's thread: capture now, write in the background.

        Copying gigabytes on Raft's thread would stop heartbeats and depose the
        leader, so only the capture (Raft's bookmarks and the server's state at
        this entry) happens here; a thread streams the databases into a
        separate file and renames it over the snapshot when complete.
        :meth:`_snapshot_progress` tells PySyncObj when it is done, and until
        then it neither compacts the log nor sends the snapshot anywhere.
        """
        last, previous, cluster = raft_data
        assert self._snapshot is not None
        header = {
            "version": SNAPSHOT_VERSION,
            "last": [bytes(last[0]), int(last[1]), int(last[2])],
            "previous": [bytes(previous[0]), int(previous[1]), int(previous[2])],
            "cluster": sorted(str(node.id) for node in cluster),
        }
        core = self._core
        if core is not None:
            header["roles"] = core.roles  # on Raft's thread: as of this moment
        try:
            write_state = self._snapshot()
        except Exception as exc:
            # E.g. pages still queued for the applier: PySyncObj tries again later.
            log.warning("%s postponed a snapshot: %s", self.address, exc)
            self._snapshot_state = SERIALIZER_STATE.FAILED
            return
        final = path.removesuffix(".tmp")
        self._snapshot_state = SERIALIZER_STATE.SERIALIZING

        def run() -> None:
            partial = final + ".partial"
            try:
                with open(partial, "wb") as f:
                    cbor2.dump(header, f)
                    write_state(f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(partial, final)
                log.info("%s wrote a snapshot at entry %d", self.address, last[1])
                self._snapshot_state = SERIALIZER_STATE.SUCCESS
            except Exception as exc:
                log.exception("%s could not write a snapshot", self.address)
                self._snapshot_state = SERIALIZER_STATE.FAILED
                if isinstance(exc, OSError):
                    self.check_storage()  # a full disk: the log's next append fails too

        threading.Thread(target=run, name="dqlitepy-snapshot", daemon=True).start()

    def _snapshot_progress(self) -> int:
        """PySyncObj's serializeChecker: SUCCESS or FAILED are reported once."""
        state = self._snapshot_state
        if state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
            self._snapshot_state = SERIALIZER_STATE.NOT_SERIALIZING
        return int(state)

    def _snapshot_head(self) -> tuple[Entry, Entry] | None:
        """The last two entries of this node's snapshot (Raft's thread, at start); None: none."""
        path = self._raft_dir / "snapshot"
        try:
            with path.open("rb") as f:
                header = cbor2.load(f)
        except FileNotFoundError:
            return None
        if not isinstance(header, dict) or header.get("version") != SNAPSHOT_VERSION:
            raise ReplicationError(f"{path}: not a dqlitepy snapshot")
        previous, last = header["previous"], header["last"]
        return (
            (bytes(previous[0]), int(previous[1]), int(previous[2])),
            (bytes(last[0]), int(last[1]), int(last[2])),
        )

    def _read_snapshot(self, path: str) -> tuple[Any, Any, set[PeerNode]]:
        """PySyncObj's deserializer: install the state, give Raft its bookmarks back."""
        assert self._restore is not None
        core = self._core
        if core is not None and not core.storage_writable:
            # The log could not be replaced by the snapshot's entries: installing the
            # databases alone would put them ahead of the log.  The leader sends it again.
            raise ReplicationError(f"{path}: not installed while the Raft log cannot be written")
        with open(path, "rb") as f:
            header = cbor2.load(f)
            if not isinstance(header, dict) or header.get("version") != SNAPSHOT_VERSION:
                raise ReplicationError(f"{path}: not a dqlitepy snapshot")
            self._restore(f)
        roles = header.get("roles")
        self._snapshot_roles = None if roles is None else {str(a): int(r) for a, r in roles.items()}
        last = tuple(header["last"])
        previous = tuple(header["previous"])
        log.info("%s installed a snapshot at entry %d", self.address, last[1])
        core = self._core
        if core is not None:
            # Installing took Raft's thread a while; the leader's messages are
            # waiting in the socket, not missing: do not start an election.
            core.postpone_election()
        return last, previous, {PeerNode(a) for a in header["cluster"]}

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
