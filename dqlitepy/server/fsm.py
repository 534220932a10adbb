"""Every node's state machine: committed commands applied, the applier thread, snapshots.

Raft's thread calls :meth:`StateMachine.apply` with every committed entry, in
log order, on every node, and :meth:`StateMachine.install_snapshot` with a
snapshot; neither waits for a database lock.  They record what happened
(members, each database's last FRAMES index, parts still arriving) and queue
the file work for the **applier** thread, the only thread that rebuilds files:
it writes other nodes' pages, cuts a fenced database's WAL back to the last
committed frame, swaps a snapshot's files in.  This module also knows how far
that work has come, which is what makes a leader *caught up*.  The rules are in
:mod:`dqlitepy.server.replicated`'s docstring.
"""

from __future__ import annotations

import itertools
import logging
import queue
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import cbor2

from ..engine import Engine, EngineError
from ..engine.wal import Transaction
from ..replication.replicator import ApplyHandler, Replicator
from ..wire import ErrorCode
from .commands import ClusterId, Frames, InvalidCommand, Member, Page, decode
from .database import Database, Databases, Origin, Position

__all__ = ["ReplicatorFactory", "StateMachine", "is_storage_error"]

log = logging.getLogger("dqlitepy.server")

#: Builds the node's Raft participation from the apply and leadership callbacks.
ReplicatorFactory = Callable[[ApplyHandler, Callable[[bool], None]], Replicator]

# How often the applier checks whether the files of the last run can go.
_PREVIOUS_CHECK = 0.5
# How long the applier waits before trying a failed rebuild again.
_REBUILD_RETRY = 0.5


def is_storage_error(exc: BaseException) -> bool:
    """A SQLite error saying the disk is full or failing (any extended code)."""
    return isinstance(exc, EngineError) and exc.code & 0xFF in (
        ErrorCode.SQLITE_FULL,
        ErrorCode.SQLITE_IOERR,
    )


@dataclass(frozen=True)
class _Pages:
    """Applier task: write committed transactions' pages, in order."""

    name: str
    transactions: tuple[Transaction, ...]


@dataclass(frozen=True)
class _Rebuild:
    """Applier task: bring a database's files back to the committed state."""

    name: str


@dataclass(frozen=True)
class _Deposed:
    """Applier task: this node stopped leading; fence every database with sessions."""


@dataclass(frozen=True)
class _Install:
    """Applier task: swap in a snapshot's files (None: the database is not in it)."""

    files: dict[str, Path | None]
    #: The databases swapped in already (a retry after a failure skips them:
    #: their staged files are gone).
    done: set[str] = field(default_factory=set, compare=False)


_Task = _Pages | _Rebuild | _Deposed | _Install
#: Taken from the queue by a batch: the applier stops after the batch.
_STOP = _Deposed()
#: At most this many commits are written by one rebuild of the applier.
_PAGES_BATCH = 256


@dataclass
class _Parts:
    """The parts of one transaction applied so far (all but its last)."""

    origin: tuple[int, int]
    received: int = 0
    pages: list[Page] = field(default_factory=list)


@dataclass
class _Applied:
    """What Raft's thread knows of one database's entries (the same on every node)."""

    #: Index of the last FRAMES entry of this database applied.
    index: int = 0
    #: The origin of that entry (None: from before origins were kept).
    origin: Origin | None = None
    #: A transaction whose parts are arriving.
    parts: _Parts | None = None


def _builds_on(applied: _Applied, frames: Frames) -> bool:
    """Whether ``frames`` was built on the state ``applied`` describes (the same on every node).

    A command chained on an earlier one (``after``) needs that one to be the
    last applied; else its ``base`` must be the last applied index.  Either
    way a command built on a deposed leader's, or a failed command's, state
    is skipped.
    """
    if frames.after is not None:
        return applied.origin == frames.after
    return applied.index == frames.base


class StateMachine:
    """Applies committed commands to one node's databases.

    Args:
        engine: the node's databases.
        databases: their shared state.
        replicator_factory: builds the node's Raft participation from
            :meth:`apply` and the leadership callback (available as
            :attr:`replicator`; started by the caller).
    """

    def __init__(
        self,
        engine: Engine,
        databases: Databases,
        replicator_factory: ReplicatorFactory,
        on_cluster_id: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self._databases = databases
        # -- Raft's thread only (the leader reads an index when it builds a command)
        self._applied: dict[str, _Applied] = {}
        #: Member address -> dqlite node id: readers copy it (dict(...)) before iterating.
        self.members: dict[str, int] = {}
        #: The cluster's id, once the log (or a snapshot) named it: the first one counts.
        self.cluster_id: str | None = None
        self._on_cluster_id = on_cluster_id
        # Commands this node submitted, by origin, with the WAL position after them:
        # their pages are in the WAL already (if its epoch did not change).
        self._own: dict[Origin, Position] = {}
        self._stage_sequence = itertools.count(1)
        #: Transactions applied (every part received), for monitoring; others only read it.
        self.commits = 0
        # -- the applier -------------------------------------------------------------
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        # The applier's backlog and whether this leader's barrier entry is applied.
        self._progress = threading.Condition()
        self._backlog = 0
        self._barrier_applied = False
        self._closing = threading.Event()
        self._applier = threading.Thread(
            target=self._apply_loop, name="dqlitepy-applier", daemon=True
        )
        # The log is replayed from the start into empty files.  The files of the
        # last run are set aside, not deleted, until the replay has caught up with
        # every entry this node knew to be committed (_discard_previous).
        self._previous = engine.set_aside()
        self.replicator = replicator_factory(self.apply, self._leadership)

    def start(self) -> None:
        """Start the applier thread (before Raft, which feeds it)."""
        self._applier.start()

    def close(self) -> None:
        """Stop the applier once its current task is done (after Raft stopped)."""
        self._closing.set()
        self._tasks.put(None)
        self._applier.join(timeout=10)

    # ------------------------------------------------------------- progress

    def is_caught_up_leader(self) -> bool:
        """Elected, this term's barrier entry applied, and the applier has no backlog."""
        with self._progress:
            return self._caught_up_leader()

    def _caught_up_leader(self) -> bool:
        # _barrier_applied is set by this term's no-op entry itself, in apply():
        # Raft counts it applied only after apply() returns, which would make
        # the waiters woken there see "not yet" and sleep on.
        return self._barrier_applied and self._backlog == 0 and self.replicator.is_elected()

    def wait_caught_up_leader(self, timeout: float) -> bool:
        """Wait until :meth:`is_caught_up_leader`; False once not elected, or at ``timeout``.

        Lets a just-elected leader finish its barrier rather than send clients away.
        """
        if self._caught_up_leader():
            # The usual case, without the lock: the lock orders waiting, not this
            # check, which reads three values another thread may change either way.
            return True
        deadline = time.monotonic() + timeout
        with self._progress:
            while not self._caught_up_leader():
                remaining = deadline - time.monotonic()
                if not self.replicator.is_elected() or remaining <= 0:
                    return False
                # Woken by the barrier entry, the applier's progress and leadership
                # changes; the timeout only bounds the wait.
                self._progress.wait(remaining)
        return True

    def read_ready(self) -> bool:
        """Whether a read arriving now may begin at once (any thread; no lock, no wait).

        The checks of :meth:`wait_caught_up_leader` and of a confirmed read
        (``Leader._confirm_leadership``) as one test, in their order: this
        term's barrier applied; leadership confirmed with no wait (the lease, or
        the only voter) and the read index applied (``Replicator.read_now``,
        which also makes sure this node is elected); then, read after that
        index, no task queued for the applier, so it has written everything up
        to it.  False says nothing more: the caller takes the waiting way, which
        makes the same checks and gives the reason.
        """
        return self._barrier_applied and self.replicator.read_now() and self._backlog == 0

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the applier has done every queued task."""
        if self._backlog == 0:
            return True  # the usual case, without the lock (as wait_caught_up_leader)
        with self._progress:
            return self._progress.wait_for(lambda: self._backlog == 0, timeout)

    # ------------------------------------------------------------- the leader's side

    def applied_index(self, name: str) -> int:
        """Index of the last FRAMES entry of database ``name`` applied (a command's base)."""
        applied = self._applied.get(name)
        return 0 if applied is None else applied.index

    def expect_own(self, origin: Origin, position: Position) -> None:
        """This node submits ``origin``, whose pages end at ``position`` in its WAL."""
        self._own[origin] = position

    def forget_own(self, origin: Origin) -> None:
        """The submission of ``origin`` failed."""
        self._own.pop(origin, None)

    def fence(self, db: Database) -> None:
        """The files may hold a commit Raft did not accept: stop serving, queue a rebuild."""
        sessions = db.fence()
        if sessions is None:
            return
        for session in sessions:
            session.interrupt()
        self._enqueue(_Rebuild(db.name))

    # ------------------------------------------------------------- applying

    def apply(self, index: int, command: bytes, decoded: object = None) -> Any:
        """Apply one committed command (Raft's thread, log order, every node).

        ``decoded`` is what ``command`` decodes to when this node submitted it
        (:meth:`Replicator.submit_async`), so that the leader never decodes its own
        commits; None for any other entry.
        """
        if not command:
            self._apply_barrier(index)
            return None
        if type(decoded) is Frames:
            return self._apply_frames(index, decoded)
        try:
            decoded = decode(command)
        except InvalidCommand as exc:
            log.error("entry %d %s; skipped", index, exc)
            return "invalid"
        if isinstance(decoded, Member):
            if decoded.removed:
                self.members.pop(decoded.address, None)
            else:
                self.members[decoded.address] = decoded.node_id
            return "applied"
        if isinstance(decoded, Frames):
            return self._apply_frames(index, decoded)
        if isinstance(decoded, ClusterId):
            if self.cluster_id is None:  # two leaders may both have proposed one
                self._learn_cluster_id(decoded.cluster_id)
            return "applied"
        return "invalid"

    def _learn_cluster_id(self, cluster_id: str) -> None:
        self.cluster_id = cluster_id
        if self._on_cluster_id is not None:
            try:
                self._on_cluster_id(cluster_id)
            except Exception:
                # Recording it is the node's business; Raft's thread must go on applying.
                log.exception("could not record the cluster id %s", cluster_id)

    def _apply_barrier(self, index: int) -> None:
        # A leader's first entry: parts of a transaction begun before it will
        # never be completed (their leader gave up on them).
        for applied in self._applied.values():
            applied.parts = None
        if self.replicator.barrier_index() == index:
            with self._progress:
                self._barrier_applied = True
                self._progress.notify_all()

    def _apply_frames(self, index: int, frames: Frames) -> str:
        db = self._databases.get(frames.db)
        applied = self._applied.setdefault(db.name, _Applied())
        if applied.parts is not None and applied.parts.origin != frames.origin:
            applied.parts = None  # an abandoned transaction's parts
        if not _builds_on(applied, frames):
            return "stale"
        pages = frames.pages
        if frames.parts > 1:
            gathered = self._gather(index, applied, frames)
            if isinstance(gathered, str):
                return gathered
            pages = gathered
        applied.index = index
        applied.origin = frames.origin
        self.commits += 1
        position = self._own.pop(frames.origin, None)
        if position is not None and db.commit_own(position):
            return "applied"  # ours, and the WAL still holds its pages up to `position`
        txn = Transaction(tuple(pages), frames.db_size, frames.page_size)
        self._enqueue(_Pages(db.name, (txn,)))
        return "applied"

    def _gather(self, index: int, applied: _Applied, frames: Frames) -> list[Page] | str:
        """Keep a part; all pages once the last part came, else the entry's outcome."""
        if frames.part == 0:
            applied.parts = _Parts(frames.origin)
        parts = applied.parts
        if parts is None or parts.received != frames.part:
            log.error(
                "entry %d: part %d of %d without the earlier ones", index, frames.part, frames.parts
            )
            applied.parts = None
            return "stale"
        # Kept even for our own parts: a rebuild meanwhile cuts them from the WAL.
        parts.pages.extend(frames.pages)
        parts.received += 1
        if frames.part < frames.parts - 1:
            return "applied"
        applied.parts = None
        return parts.pages

    def _leadership(self, leading: bool) -> None:
        """Raft's thread: this node gained or lost leadership."""
        with self._progress:
            self._barrier_applied = False
            self._progress.notify_all()
        if not leading:
            # Sessions of a deposed leader must not read what Raft may drop.
            self._enqueue(_Deposed())

    # ------------------------------------------------------------- the applier

    def _enqueue(self, task: _Task) -> None:
        with self._progress:
            self._backlog += 1
        self._tasks.put(task)

    def _apply_loop(self) -> None:
        held: _Task | None = None  # taken from the queue, not part of the last batch
        while True:
            if held is not None:
                task, held = held, None
            else:
                try:
                    # While files of the last run are kept, look in now and then.
                    wait = None if self._previous is None else _PREVIOUS_CHECK
                    next_task = self._tasks.get(timeout=wait)
                except queue.Empty:
                    self._discard_previous()
                    continue
                if next_task is None:
                    return
                task = next_task
            done = 1
            if isinstance(task, _Pages):
                task, held, done = self._gather_pages(task)
            try:
                self._run_task(task)
            finally:
                with self._progress:
                    self._backlog -= done
                    self._progress.notify_all()
            if held is _STOP:
                return
            self._discard_previous()

    def _gather_pages(self, first: _Pages) -> tuple[_Pages, _Task | None, int]:
        """``first`` and the page tasks of its database queued right behind it, as one.

        Under a stream of commits the applier then rebuilds (cuts the WAL back,
        opens the file) once per batch instead of once per commit.  Returns
        the batch, the next task taken but not in it, and how many tasks the
        batch holds.
        """
        transactions = list(first.transactions)
        count = 1
        while len(transactions) < _PAGES_BATCH:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is None:
                return _Pages(first.name, tuple(transactions)), _STOP, count
            if not isinstance(task, _Pages) or task.name != first.name:
                return _Pages(first.name, tuple(transactions)), task, count
            transactions.extend(task.transactions)
            count += 1
        return _Pages(first.name, tuple(transactions)), None, count

    def _discard_previous(self) -> None:
        """Delete the last run's files once the rebuild from the log has caught up."""
        if self._previous is None or not self.replicator.caught_up():
            return
        with self._progress:
            if self._backlog:
                return  # pages of entries already applied by Raft are still queued
        self.engine.discard_previous()
        log.info("the databases are rebuilt from the log; %s deleted", self._previous)
        self._previous = None

    def _run_task(self, task: _Task) -> None:
        # A failed rebuild is tried again in place: later tasks build on it.
        failures = 0
        while True:
            try:
                self._do_task(task)
                if failures:
                    log.warning("rebuilding the database files worked after %d failures", failures)
                return
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.exception("rebuilding the database files failed; trying again")
                else:
                    log.debug("rebuilding the database files failed again: %s", exc)
                if isinstance(exc, OSError) or is_storage_error(exc):
                    # A full or failing disk: Raft must stop counting on this node.
                    self.replicator.check_storage()
                if self._closing.wait(_REBUILD_RETRY):
                    return

    def _do_task(self, task: _Task) -> None:
        if isinstance(task, _Pages):
            self._roll_back(self._databases.get(task.name), then=task.transactions)
        elif isinstance(task, _Rebuild):
            self._roll_back(self._databases.get(task.name))
        elif isinstance(task, _Deposed):
            for db in self._databases.all():
                if db.may_hold_uncommitted():
                    self._roll_back(db)
        else:
            self._swap_in(task)

    def _roll_back(self, db: Database, *, then: tuple[Transaction, ...] = ()) -> None:
        """Cut ``db``'s WAL back to the committed state, then write ``then``'s pages."""
        with db.restoring() as (salts, frames):
            self.engine.restore_committed(db.name, salts, frames)
            self.engine.apply(db.name, *then)

    def _swap_in(self, task: _Install) -> None:
        """Replace every database by its file staged from a snapshot (None: delete it)."""
        for name in sorted(self._databases.names() | set(task.files)):
            if name in task.done:
                continue  # swapped in before an earlier attempt failed
            staged = task.files.get(name)
            db = self._databases.get(name)
            with db.restoring():
                if staged is None:
                    self.engine.remove(name)
                else:
                    self.engine.install(name, staged)
            task.done.add(name)

    # ------------------------------------------------------------ snapshots

    def capture_snapshot(self) -> Callable[[BinaryIO], None]:
        """Capture the state at the last applied entry (Raft's thread); return its writer.

        The writer (run on another thread) emits cbor2 state — members, the
        cluster id and each
        database's last applied FRAMES index, as of now — then per database a
        u64 size and the file's bytes.  The files are copied while writes go
        on, so they may already hold entries applied after now; that is safe
        because entries carry whole page images: replaying the log from this
        entry on rewrites every page such an entry touched and ends in the same
        state.  They never lag behind now (the applier has no backlog).
        """
        # Raft's thread never waits for the applier: the snapshot is postponed.
        with self._progress:
            if self._backlog:
                raise RuntimeError("pages are still being applied")
        databases = self._databases.all()
        if any(applied.parts is not None for applied in self._applied.values()):
            # The parts so far are in no file: the log must keep them.
            raise RuntimeError("a transaction's parts are still arriving")
        state = cbor2.dumps(
            {
                "members": dict(self.members),
                "cluster_id": self.cluster_id,
                "databases": [
                    [db.name, applied.index, applied.origin and list(applied.origin)]
                    for db in databases
                    for applied in [self._applied.get(db.name, _Applied())]
                ],
            }
        )
        positions = {db.name: db.committed() for db in databases}

        def write(out: BinaryIO) -> None:
            out.write(state)
            with tempfile.TemporaryDirectory(prefix="dqlitepy-snapshot-") as workdir:
                for db in databases:
                    salts, frames = positions[db.name]
                    # No checkpoint may rewrite the file while it is copied: its
                    # pages would come from entries before now, which are not
                    # replayed.
                    with db.file_lock:
                        image = self.engine.snapshot_image(db.name, salts, frames, Path(workdir))
                    if image is None:
                        out.write(struct.pack("<Q", 0))
                        continue
                    out.write(struct.pack("<Q", image.stat().st_size))
                    with image.open("rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                    image.unlink()

        return write

    def install_snapshot(self, source: BinaryIO) -> None:
        """Take a snapshot's state (Raft's thread); the applier swaps its files in.

        The files are copied aside here (reading the snapshot is all Raft's
        thread does); the swap waits in the applier's queue behind the pages
        already queued, and ahead of every entry applied after the snapshot.
        """
        state = cbor2.load(source)
        files: dict[str, Path | None] = {}
        for name, index, *rest in state["databases"]:
            (size,) = struct.unpack("<Q", source.read(8))
            db = self._databases.get(str(name))
            # Snapshots written before commits were chained hold no origin.
            origin = rest[0] if rest else None
            self._applied[db.name] = _Applied(
                int(index), None if origin is None else (int(origin[0]), int(origin[1]))
            )
            files[db.name] = (
                self.engine.stage(db.name, source, size, next(self._stage_sequence))
                if size
                else None
            )
        self._own.clear()
        # Older snapshots hold [id, role] per member.
        self.members = {
            str(a): int(v[0] if isinstance(v, list) else v) for a, v in state["members"].items()
        }
        cluster_id = state.get("cluster_id")  # absent from older snapshots
        if isinstance(cluster_id, str) and cluster_id != self.cluster_id:
            self._learn_cluster_id(cluster_id)
        self._enqueue(_Install(files))
