"""The write path of a replicated node (``design.md`` §3, ``docs/replication.md``).

Theory of operation
===================

Per database the leader keeps (:class:`_Database`):

- a **writer**: the one gateway whose write transaction is open (SQLite's rule);
  others queue for it, up to their lock timeout, instead of meeting SQLite's lock;
- a **gate**, held by the writer while one of its statements runs and its
  commit is being replicated: no read transaction *begins* meanwhile, so nobody
  reads pages Raft has not committed (readers that began before keep their
  snapshot, which holds none of them);
- the WAL position of the last transaction Raft committed, to cut the WAL back
  to if a commit fails, tagged with an **epoch** that every rebuild of the files
  increments.

A commit's pages are read from the WAL inside SQLite's WAL hook (on the
writer's thread, under its session's lock, so atomically with the commit) and
become one FRAMES command, submitted to Raft (a transaction larger than
:data:`PART_BYTES` becomes several, its parts, gathered by every node and applied
at once when the last one is committed).  Every node applies committed commands
in log order (:meth:`Replicated.apply`, on Raft's thread): a command records the
index of the last FRAMES entry of its database it was built on, so a command
built on a deposed leader's state is skipped by every node alike.  The leader's
own commands are already in its WAL, unless the files were rebuilt since (the
epoch says); every other command is queued for the **applier** thread, which
writes its pages into the database file.

The applier is the only thread that rebuilds files.  A database moves through
three phases (:class:`Phase`, transitions in :data:`_PHASE_MOVES`):

========== ===============================================================
SERVING    sessions open and statements run
FENCED     the files may hold a commit Raft did not accept (a failed commit,
           a deposed leader): no statement starts, running ones are
           interrupted, a rebuild is queued
RESTORING  the applier closes every session, cuts the WAL back to the last
           committed frame, writes replicated pages or a snapshot's file
========== ===============================================================

Lock hierarchy
==============

A thread holding a lock takes only locks further down this list, never one above it:

1. ``_Database.mutex`` (its conditions ``changed`` and ``writer_turn`` share it):
   the database's phase, sessions, writer slot and gate.  Held only to read or
   change them: never across SQLite work, file I/O or a wait for Raft; the only
   waits under it are on its own conditions, which release it.
2. A :class:`~dqlitepy.engine.Session`'s own lock (in the engine): held across
   one call into SQLite and nothing else.  The applier closes another thread's
   session by interrupting it and then taking this lock.
3. ``_Database.file_lock``: held while a database file is rewritten or copied
   (rebuild, applying pages, a snapshot's copy, DUMP).  A checkpoint on the
   write path only *tries* it: the next commit checkpoints instead.
4. Leaf locks, held for O(1) work with nothing taken under them:
   ``_Database.position_lock`` (the committed position and its epoch),
   ``Replicated._lock`` (the database map), ``Replicated._progress`` (the
   applier's backlog and the barrier; a condition), Raft's waiter set.

No lock is held while waiting for another thread: a writer waiting for Raft
holds the writer slot and the gate, which are states, not locks.

Reads are linearizable: a statement that returns rows runs only after
:meth:`Replicator.read_barrier` (Raft's ReadIndex) confirmed, after the request
arrived, that this node still leads, and the applier has caught up with the
read index.  A deposed leader that does not know it yet therefore never serves
a stale row (``docs/replication.md``, "Linearizable reads").  Raft's thread
takes only leaf locks: :meth:`Replicated.apply`, :meth:`Replicated.restore` and
the leadership callback record what happened and queue the rest for the applier.

After a restart the database files are rebuilt from the Raft log (from the
last snapshot and the entries after it), so a crash can never leave a file ahead
of or apart from the log.  The files of the last run are set aside, not deleted,
until the rebuild has caught up with every entry the node knew to be committed.

Disk full and I/O errors
========================
A write statement can fail for lack of room (or an I/O error) in two places,
and the client is told what provably happened (``docs/replication.md``):

- **SQLite** (the leader's WAL), before anything was submitted: SQLite's own
  error goes back (``SQLITE_FULL``, 13, "database or disk is full", or an
  ``SQLITE_IOERR`` code).  The database is fenced and rebuilt like after a
  failed commit — its files are a cache of the log, and a rebuild is the one
  way back that does not depend on how SQLite left them — and Raft's thread is
  asked to probe the log's storage (:meth:`Replicator.check_storage`), so a
  leader whose disk is full steps down before its next append fails.
- **The Raft log** (:class:`~dqlitepy.replication.replicator.StorageError`):
  the leader's journal proved the entry absent, the leader stepped down, and
  the commit in the WAL is cut off by the fence: 13 (or 10, "disk I/O error",
  for an I/O error).  A transaction split into parts whose later part could
  not be stored is never completed (the next leader's first entry drops its
  parts), so it too did not happen.

Any other failure of a submitted entry leaves its outcome unknown: ``leadership
lost`` (10506), never a disk-full error.  While the applier cannot write a
database file (a follower's full disk) it retries every
:data:`_REBUILD_RETRY` seconds, logging the first failure of a streak, and
asks for the same probe: Raft acknowledges only what the journal stored, so a
lagging file costs time, never a write.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import queue
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import cbor2

from ..engine import Engine, EngineError, Session, StatementInfo
from ..engine.wal import Transaction, WalError, WalTracker
from ..replication.replicator import (
    LeadershipLost,
    NotLeader,
    ReplicationError,
    Replicator,
    StorageError,
)
from .gateway import GatewayFailure

__all__ = ["PART_BYTES", "Phase", "Replicated"]

log = logging.getLogger("dqlitepy.server")

_COMMAND_VERSION = 1
_NOT_LEADER = 10250
_LEADERSHIP_LOST = 10506
_SQLITE_BUSY = 5
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_CHECKPOINT_FRAMES = 1000
_SUBMIT_TIMEOUT = 10.0
# How long a request waits for a new leader's barrier (applying the log's tail).
_BARRIER_WAIT = 10.0
# How often the applier checks whether the files of the last run can go.
_PREVIOUS_CHECK = 0.5
# How long the applier waits before trying a failed rebuild again.
_REBUILD_RETRY = 0.5
#: A transaction's pages per Raft entry: one entry must fit in one transport frame
#: (64 MiB), and smaller entries keep heartbeats flowing between them.
PART_BYTES = 16 * 1024 * 1024

#: (epoch, WAL salts, WAL frames) after a commit: where the committed state ends.
_Position = tuple[int, tuple[int, int] | None, int]


class Phase(enum.Enum):
    """Where a database's files stand (see the module docstring)."""

    SERVING = "serving"
    FENCED = "fenced"
    RESTORING = "restoring"


_PHASE_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.SERVING: frozenset({Phase.FENCED, Phase.RESTORING}),
    Phase.FENCED: frozenset({Phase.RESTORING}),
    Phase.RESTORING: frozenset({Phase.SERVING, Phase.FENCED}),
}


@dataclass
class _Parts:
    """The parts of one transaction applied so far (all but its last)."""

    origin: tuple[int, int]
    received: int = 0
    pages: list[tuple[int, bytes]] = field(default_factory=list)


def _split_pages(pages: tuple[tuple[int, bytes], ...]) -> list[list[tuple[int, bytes]]]:
    """Cut a transaction's pages into runs of at most PART_BYTES (at least one page each)."""
    parts: list[list[tuple[int, bytes]]] = [[]]
    size = 0
    for pgno, page in pages:
        if parts[-1] and size + len(page) > PART_BYTES:
            parts.append([])
            size = 0
        parts[-1].append((pgno, page))
        size += len(page)
    return parts


@dataclass(eq=False)
class _Database:
    name: str
    tracker: WalTracker
    # -- under mutex (level 1) ------------------------------------------------
    mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Phase, sessions, gate and readers changed.
    changed: threading.Condition = field(init=False, repr=False)
    #: The writer slot was released: one waiting writer is woken (no herd).
    writer_turn: threading.Condition = field(init=False, repr=False)
    phase: Phase = Phase.SERVING
    sessions: set[Session] = field(default_factory=set)
    #: Sessions being opened right now (the applier waits for them to settle).
    opening: int = 0
    writer: object | None = None
    writer_session: Session | None = None
    #: The writer whose statement runs: no read transaction begins meanwhile.
    gate_holder: object | None = None
    #: Readers admitted past the gate whose read transaction has not begun yet.
    starting_readers: int = 0
    # -- under file_lock (level 3) ---------------------------------------------
    file_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # -- under position_lock (level 4) ---------------------------------------
    position_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Incremented by every rebuild: positions of an older epoch point into a WAL
    #: that no longer exists.
    epoch: int = 0
    #: (salts, frames) of the WAL after the last commit Raft accepted.
    committed: tuple[tuple[int, int] | None, int] = (None, 0)
    # -- the writer's thread only (inside its statement) ---------------------
    #: Transactions the WAL hook read during the current write statement.
    captured: list[tuple[Transaction, _Position]] = field(default_factory=list)
    capture_error: Exception | None = None
    # -- Raft's thread only ------------------------------------------------------
    #: Index of the last FRAMES entry of this database applied (the same on every node).
    applied_index: int = 0
    #: A transaction whose parts are arriving.
    parts: _Parts | None = None

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.mutex)
        self.writer_turn = threading.Condition(self.mutex)

    def set_phase(self, phase: Phase) -> None:
        """Move to ``phase`` (``mutex`` held) and wake everyone waiting on the database."""
        if phase not in _PHASE_MOVES[self.phase]:
            raise RuntimeError(f"database {self.name!r}: {self.phase.value} -> {phase.value}")
        self.phase = phase
        self.changed.notify_all()
        self.writer_turn.notify_all()

    def release_writer(self) -> None:
        """Free the writer slot (``mutex`` held) and wake one waiting writer."""
        self.writer = None
        self.writer_session = None
        self.writer_turn.notify()


@dataclass(frozen=True)
class _Pages:
    """Applier task: write a committed transaction's pages."""

    name: str
    transaction: Transaction


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


_Task = _Pages | _Rebuild | _Deposed | _Install


def _begins_write(sql: str) -> bool:
    words = sql.split(None, 2)
    return (
        len(words) >= 2
        and words[0].upper() == "BEGIN"
        and words[1].upper().rstrip(";") in ("IMMEDIATE", "EXCLUSIVE")
    )


def _not_leader() -> GatewayFailure:
    return GatewayFailure(_NOT_LEADER, "not leader")


def _not_stored(error: StorageError) -> GatewayFailure:
    """The answer to a write the Raft log could not store (it did not happen)."""
    if error.full:
        return GatewayFailure(_SQLITE_FULL, "database or disk is full")
    return GatewayFailure(_SQLITE_IOERR, "disk I/O error")


def _is_storage_error(exc: BaseException) -> bool:
    """A SQLite error saying the disk is full or failing (any extended code)."""
    return isinstance(exc, EngineError) and exc.code & 0xFF in (_SQLITE_FULL, _SQLITE_IOERR)


def _no_op() -> None:
    """The ``begun`` callback of a statement that needs none."""


class Replicated:
    """Replication state of one node's databases.

    Args:
        engine: the node's databases.
        replicator_factory: builds the node's Raft participation from the apply
            and leadership callbacks of this object (started by :meth:`start`).
        node_id: this node's id (tags the commands it originates).
    """

    def __init__(
        self,
        engine: Engine,
        replicator_factory: Callable[
            [Callable[[int, bytes], Any], Callable[[bool], None]], Replicator
        ],
        node_id: int,
    ) -> None:
        self.engine = engine
        self.node_id = node_id
        self._databases: dict[str, _Database] = {}
        self._lock = threading.Lock()
        self._sequence = itertools.count(1)
        self._stage_sequence = itertools.count(1)
        # Commands this node submitted, by origin, with the WAL position after them.
        self._own: dict[tuple[int, int], _Position] = {}
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        # The applier's backlog and whether this leader's barrier entry is applied.
        self._progress = threading.Condition()
        self._backlog = 0
        self._barrier_applied = False
        self._closing = threading.Event()
        self._applier = threading.Thread(
            target=self._apply_loop, name="dqlitepy-applier", daemon=True
        )
        # Member address -> dqlite node id, written by apply() on Raft's thread:
        # readers copy it (dict(self.members)) before iterating.
        self.members: dict[str, int] = {}
        # The log is replayed from the start into empty files.  The files of the
        # last run are set aside, not deleted, until the replay has caught up with
        # every entry this node knew to be committed (_discard_previous).
        self._previous = engine.set_aside()
        self.replicator = replicator_factory(self.apply, self._leadership)

    def start(self) -> None:
        self._applier.start()
        self.replicator.start()

    def close(self) -> None:
        self.replicator.close()
        self._closing.set()
        self._tasks.put(None)
        self._applier.join(timeout=10)

    # ------------------------------------------------------------- queries

    def is_ready_leader(self) -> bool:
        """Leads, has applied everything before its term, and has no files to fix."""
        with self._progress:
            return self._ready()

    def _ready(self) -> bool:
        # _barrier_applied is set by this term's no-op entry itself, in apply():
        # Raft counts it applied only after apply() returns, which would make
        # the waiters woken there see "not yet" and sleep on.
        return self._barrier_applied and self._backlog == 0 and self.replicator.is_elected()

    def _wait_ready_leader(self, timeout: float) -> None:
        """Let a just-elected leader finish its barrier rather than send clients away."""
        deadline = time.monotonic() + timeout
        with self._progress:
            while not self._ready():
                remaining = deadline - time.monotonic()
                if not self.replicator.is_elected() or remaining <= 0:
                    raise _not_leader()
                # Woken by the barrier entry, the applier's progress and leadership
                # changes; the timeout only bounds the wait.
                self._progress.wait(remaining)

    def _database(self, name: str) -> _Database:
        with self._lock:
            db = self._databases.get(name)
            if db is None:
                path = self.engine.path(name)
                db = self._databases[name] = _Database(
                    name, WalTracker(path.with_name(path.name + "-wal"))
                )
            return db

    # --------------------------------------------------------- sessions

    def open_session(self, name: str) -> Session:
        self._wait_ready_leader(_BARRIER_WAIT)
        db = self._database(name)
        with db.mutex:
            # A database being rebuilt (after a failed commit) serves again shortly.
            if not db.changed.wait_for(lambda: db.phase is Phase.SERVING, _BARRIER_WAIT):
                raise _not_leader()
            db.opening += 1
        try:
            session = self.engine.session(name)
            session.set_wal_hook(lambda frames: self._capture(db, frames))
        except BaseException:
            with db.mutex:
                db.opening -= 1
                db.changed.notify_all()
            raise
        with db.mutex:
            db.opening -= 1
            db.sessions.add(session)
            db.changed.notify_all()
        return session

    def close_session(self, name: str, session: Session) -> None:
        db = self._database(name)
        session.close()  # rolls back an open transaction first
        with db.mutex:
            db.sessions.discard(session)
            if db.writer_session is session:
                db.release_writer()
            db.changed.notify_all()

    def dump(self, name: str) -> list[tuple[str, bytes]]:
        """The database file and WAL of ``name``, copied while no rebuild runs."""
        db = self._database(name)
        with db.file_lock:
            return self.engine.dump(name)

    @contextlib.contextmanager
    def statement(
        self, owner: object, name: str, session: Session, info: StatementInfo, timeout: float
    ) -> Iterator[Callable[[], None]]:
        """Run one statement of ``owner``'s session under the write-path rules.

        Yields ``begun``, which the caller calls once the statement's first
        step ran (its read transaction, if any, has begun).
        """
        self._wait_ready_leader(min(timeout, _BARRIER_WAIT))
        db = self._database(name)
        writes = (
            not info.readonly
            or session.in_write_transaction
            or _begins_write(info.sql)
            or db.writer is owner
        )
        if writes:
            with self._write(db, owner, session, timeout):
                yield _no_op
            return
        if info.column_count:
            # A statement that returns rows may return stale ones on a deposed
            # leader; one that returns none (BEGIN, a read's COMMIT) cannot.
            self._confirm_leadership(min(timeout, _BARRIER_WAIT))
        with self._read(db, session, timeout) as begun:
            yield begun

    def _confirm_leadership(self, timeout: float) -> None:
        """Raft's ReadIndex: serve a read only once a quorum confirmed this node leads.

        Then wait until the applier has written everything up to the read index
        (Raft has applied it; pages of other nodes' entries go through the applier).
        """
        deadline = time.monotonic() + timeout
        try:
            self.replicator.read_barrier(timeout)
        except ReplicationError as exc:
            # Nothing was read: the client may ask another node for the leader.
            raise _not_leader() from exc
        with self._progress:
            if not self._progress.wait_for(
                lambda: self._backlog == 0, max(0.0, deadline - time.monotonic())
            ):
                raise _not_leader()

    @contextlib.contextmanager
    def _read(
        self, db: _Database, session: Session, timeout: float
    ) -> Iterator[Callable[[], None]]:
        with db.mutex:
            admitted = db.changed.wait_for(
                lambda: db.phase is not Phase.SERVING or db.gate_holder is None, timeout
            )
            if db.phase is not Phase.SERVING or session not in db.sessions:
                raise _not_leader()
            if not admitted:
                raise GatewayFailure(_SQLITE_BUSY, "database is locked")
            db.starting_readers += 1
        starting = True

        def begun() -> None:
            nonlocal starting
            if starting:
                starting = False
                with db.mutex:
                    db.starting_readers -= 1
                    db.changed.notify_all()

        try:
            yield begun
        finally:
            begun()

    @contextlib.contextmanager
    def _write(
        self, db: _Database, owner: object, session: Session, timeout: float
    ) -> Iterator[None]:
        self._acquire_writer(db, owner, session, timeout)
        db.captured = []
        db.capture_error = None
        storage_failed = False
        try:
            yield
        except EngineError as exc:
            storage_failed = _is_storage_error(exc)
            raise
        finally:
            try:
                if storage_failed:
                    # SQLite's error goes back as it is: nothing was submitted.
                    self._storage_trouble(db)
                if not session.in_transaction:
                    self._replicate(db, session)
            finally:
                with db.mutex:
                    if db.gate_holder is owner:
                        db.gate_holder = None
                    if db.writer is owner and not session.in_transaction:
                        db.release_writer()
                    db.changed.notify_all()

    def _acquire_writer(
        self, db: _Database, owner: object, session: Session, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        with db.mutex:
            turn = db.writer_turn.wait_for(
                lambda: db.phase is not Phase.SERVING or db.writer in (None, owner), timeout
            )
            if db.phase is not Phase.SERVING or session not in db.sessions:
                raise _not_leader()
            if not turn:
                if db.writer is None:
                    db.writer_turn.notify()  # the wake-up this waiter used passes on
                raise GatewayFailure(_SQLITE_BUSY, "database is locked")
            db.writer = owner
            db.writer_session = session
            db.gate_holder = owner
            # Readers admitted before the gate closed begin their read transaction
            # first (a step of their statement): after this commit they would see it.
            quiet = db.changed.wait_for(
                lambda: db.phase is not Phase.SERVING or db.starting_readers == 0,
                max(0.0, deadline - time.monotonic()),
            )
            if db.phase is not Phase.SERVING or not quiet:
                db.gate_holder = None
                if not session.in_transaction:
                    db.release_writer()
                db.changed.notify_all()
                if db.phase is not Phase.SERVING:
                    raise _not_leader()
                raise GatewayFailure(_SQLITE_BUSY, "database is locked")

    def _capture(self, db: _Database, frames: int) -> None:
        """SQLite's WAL hook: read what the commit appended (writer's thread, session lock)."""
        try:
            transactions = db.tracker.read(frames)
        except (WalError, OSError) as exc:
            db.capture_error = exc
            return
        with db.position_lock:
            position = (db.epoch, db.tracker.salts, db.tracker.frames)
        db.captured.extend((txn, position) for txn in transactions)

    def _replicate(self, db: _Database, session: Session) -> None:
        """Hand what the statement committed to Raft; return once Raft committed it."""
        captured, db.captured = db.captured, []
        if db.capture_error is not None:
            error, db.capture_error = db.capture_error, None
            log.error("reading the WAL of %r failed: %s", db.name, error)
            self._fence(db)
            raise GatewayFailure(_SQLITE_IOERR, f"disk I/O error: {error}")
        if captured and session.closed:
            # The files were rebuilt under this statement: its commit is gone and
            # was never submitted.
            raise GatewayFailure(_LEADERSHIP_LOST, "leadership lost")
        for txn, position in captured:
            origin = (self.node_id, next(self._sequence))
            parts = _split_pages(txn.pages)
            self._own[origin] = position
            for number, pages in enumerate(parts):
                command: dict[str, Any] = {
                    "v": _COMMAND_VERSION,
                    "t": "frames",
                    "db": db.name,
                    "base": db.applied_index,
                    "origin": list(origin),
                    "ps": txn.page_size,
                    "size": txn.db_size,
                    "pages": [[pgno, page] for pgno, page in pages],
                }
                if len(parts) > 1:
                    command.update(part=number, parts=len(parts))
                try:
                    result = self.replicator.submit(cbor2.dumps(command), _SUBMIT_TIMEOUT)
                except StorageError as exc:
                    # Provably in no log (see "Disk full and I/O errors").
                    self._own.pop(origin, None)
                    self._fence(db)
                    raise _not_stored(exc) from exc
                except NotLeader as exc:
                    self._own.pop(origin, None)
                    self._fence(db)
                    if number == 0:
                        # Appended nowhere (a leadership transfer held it, say): the
                        # transaction is rolled back and the client may run it again.
                        raise _not_leader() from exc
                    raise GatewayFailure(_LEADERSHIP_LOST, "leadership lost") from exc
                except (LeadershipLost, ReplicationError) as exc:
                    result = exc
                if result != "applied":
                    self._own.pop(origin, None)
                    self._fence(db)
                    cause = result if isinstance(result, BaseException) else None
                    raise GatewayFailure(_LEADERSHIP_LOST, "leadership lost") from cause
        if captured and db.tracker.frames >= _CHECKPOINT_FRAMES:
            session.checkpoint(db.file_lock)

    def _storage_trouble(self, db: _Database) -> None:
        """SQLite could not write ``db``: rebuild its files, have the log's storage probed."""
        log.warning("database %r: a write failed for lack of room or an I/O error", db.name)
        self._fence(db)
        self.replicator.check_storage()

    def _fence(self, db: _Database) -> None:
        """The files may hold a commit Raft did not accept: stop serving, queue a rebuild."""
        with db.mutex:
            if db.phase is not Phase.SERVING:
                return  # fenced or being rebuilt already: that rebuild covers it
            db.set_phase(Phase.FENCED)
            sessions = list(db.sessions)
        for session in sessions:
            session.interrupt()
        self._enqueue(_Rebuild(db.name))

    # ------------------------------------------------------------- the applier

    def _enqueue(self, task: _Task) -> None:
        with self._progress:
            self._backlog += 1
        self._tasks.put(task)

    def _apply_loop(self) -> None:
        while True:
            try:
                # While files of the last run are kept, look in now and then.
                wait = None if self._previous is None else _PREVIOUS_CHECK
                task = self._tasks.get(timeout=wait)
            except queue.Empty:
                self._discard_previous()
                continue
            if task is None:
                return
            try:
                self._run_task(task)
            finally:
                with self._progress:
                    self._backlog -= 1
                    self._progress.notify_all()
            self._discard_previous()

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
                if isinstance(task, _Pages):
                    self._rebuild(self._database(task.name), pages=task.transaction)
                elif isinstance(task, _Rebuild):
                    self._rebuild(self._database(task.name))
                elif isinstance(task, _Deposed):
                    with self._lock:
                        databases = list(self._databases.values())
                    for db in databases:
                        if db.sessions or db.tracker.frames or db.phase is not Phase.SERVING:
                            self._rebuild(db)
                else:
                    self._install(task)
                if failures:
                    log.warning("rebuilding the database files worked after %d failures", failures)
                return
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.exception("rebuilding the database files failed; trying again")
                else:
                    log.debug("rebuilding the database files failed again: %s", exc)
                if isinstance(exc, OSError) or _is_storage_error(exc):
                    # A full or failing disk: Raft must stop counting on this node.
                    self.replicator.check_storage()
                if self._closing.wait(_REBUILD_RETRY):
                    return

    def _rebuild(
        self,
        db: _Database,
        *,
        pages: Transaction | None = None,
        install: Path | None = None,
        remove: bool = False,
    ) -> None:
        """Close every session, cut the WAL back to the committed state, write what is new.

        ``pages``: a committed transaction's pages to write; ``install``: a
        snapshot's file to swap in; ``remove``: delete the database (a snapshot
        without it).  Runs on the applier thread only.
        """
        with db.mutex:
            if db.phase is not Phase.RESTORING:
                db.set_phase(Phase.RESTORING)
            # Sessions being opened are file I/O away from registering.
            db.changed.wait_for(lambda: db.opening == 0)
            sessions = list(db.sessions)
            db.sessions.clear()
            db.writer = db.writer_session = None
            db.gate_holder = None
            db.changed.notify_all()
        for session in sessions:
            session.interrupt()
            session.close()  # waits for the SQLite call in progress, if any
        # Every session is closed: no commit can be captured any more.  Positions
        # of earlier epochs no longer point into the WAL (apply() checks).
        with db.position_lock:
            db.epoch += 1
            salts, frames = db.committed
            db.committed = (None, 0)
        with db.file_lock:
            if install is not None:
                self.engine.install(db.name, install)
            elif remove:
                self.engine.remove(db.name)
            else:
                self.engine.restore_committed(db.name, salts, frames)
                if pages is not None:
                    self.engine.apply(db.name, pages)
            db.tracker = WalTracker(db.tracker.path)
        with db.mutex:
            db.set_phase(Phase.SERVING)

    def _install(self, task: _Install) -> None:
        with self._lock:
            names = set(self._databases) | set(task.files)
        for name in sorted(names):
            staged = task.files.get(name)
            db = self._database(name)
            if staged is None:
                self._rebuild(db, remove=True)
            else:
                self._rebuild(db, install=staged)

    # ------------------------------------------------------------- applying

    def apply(self, index: int, command: bytes) -> Any:
        """Apply one committed command (Raft's thread, log order, every node)."""
        if not command:
            # A leader's first entry: parts of a transaction begun before it will
            # never be completed (their leader gave up on them).
            with self._lock:
                for db in self._databases.values():
                    db.parts = None
            if self.replicator.barrier_index() == index:
                with self._progress:
                    self._barrier_applied = True
                    self._progress.notify_all()
            return None
        try:
            decoded = cbor2.loads(command)
        except Exception:
            log.error("entry %d is not a dqlitepy command; skipped", index)
            return "invalid"
        if not isinstance(decoded, dict) or decoded.get("v") != _COMMAND_VERSION:
            log.error("entry %d has an unknown command version; skipped", index)
            return "invalid"
        if decoded.get("t") == "member":
            address = str(decoded["address"])
            # Entries written before roles moved into Raft mark a removal with role -1.
            if decoded.get("removed") or int(decoded.get("role", 0)) < 0:
                self.members.pop(address, None)
            else:
                self.members[address] = int(decoded["id"])
            return "applied"
        if decoded.get("t") != "frames":
            return "invalid"
        return self._apply_frames(index, decoded)

    def _apply_frames(self, index: int, decoded: dict[str, Any]) -> str:
        db = self._database(str(decoded["db"]))
        origin = (int(decoded["origin"][0]), int(decoded["origin"][1]))
        if db.parts is not None and db.parts.origin != origin:
            db.parts = None  # an abandoned transaction's parts
        if decoded["base"] != db.applied_index:
            return "stale"
        pages = [(int(p), bytes(d)) for p, d in decoded["pages"]]
        part, parts = int(decoded.get("part", 0)), int(decoded.get("parts", 1))
        if parts > 1:
            if part == 0:
                db.parts = _Parts(origin)
            if db.parts is None or db.parts.received != part:
                log.error("entry %d: part %d of %d without the earlier ones", index, part, parts)
                db.parts = None
                return "stale"
            # Kept even for our own parts: a rebuild meanwhile cuts them from the WAL.
            db.parts.pages.extend(pages)
            db.parts.received += 1
            if part < parts - 1:
                return "applied"
            pages = db.parts.pages
            db.parts = None
        db.applied_index = index
        position = self._own.pop(origin, None)
        if position is not None:
            epoch, salts, frames = position
            with db.position_lock:
                if db.epoch == epoch:
                    # Ours, and the WAL still holds its pages up to `position`.
                    db.committed = (salts, frames)
                    return "applied"
        txn = Transaction(tuple(pages), int(decoded["size"]), int(decoded["ps"]))
        self._enqueue(_Pages(db.name, txn))
        return "applied"

    def _leadership(self, leading: bool) -> None:
        """Raft's thread: this node gained or lost leadership."""
        with self._progress:
            self._barrier_applied = False
            self._progress.notify_all()
        if not leading:
            # Sessions of a deposed leader must not read what Raft may drop.
            self._enqueue(_Deposed())

    # ------------------------------------------------------------ snapshots

    def capture_snapshot(self) -> Callable[[BinaryIO], None]:
        """Capture the state at the last applied entry (Raft's thread); return its writer.

        The writer (run on another thread) emits cbor2 state — members and each
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
        with self._lock:
            databases = sorted(self._databases.values(), key=lambda d: d.name)
        if any(db.parts is not None for db in databases):
            # The parts so far are in no file: the log must keep them.
            raise RuntimeError("a transaction's parts are still arriving")
        state = cbor2.dumps(
            {
                "members": dict(self.members),
                "databases": [[db.name, db.applied_index] for db in databases],
            }
        )
        positions = {}
        for db in databases:
            with db.position_lock:
                positions[db.name] = db.committed

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

    def restore(self, source: BinaryIO) -> None:
        """Take a snapshot's state (Raft's thread); the applier swaps its files in.

        The files are copied aside here (reading the snapshot is all Raft's
        thread does); the swap waits in the applier's queue behind the pages
        already queued, and ahead of every entry applied after the snapshot.
        """
        state = cbor2.load(source)
        files: dict[str, Path | None] = {}
        for name, applied in state["databases"]:
            (size,) = struct.unpack("<Q", source.read(8))
            db = self._database(str(name))
            db.applied_index = int(applied)
            db.parts = None
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
        self._enqueue(_Install(files))

    def record_member(self, node_id: int, address: str) -> None:
        """Replicate a member's id (its role is Raft's: ``replicator.roles()``)."""
        self._submit_member({"id": node_id, "address": address})

    def forget_member(self, address: str) -> None:
        """Replicate a member's removal."""
        self._submit_member({"id": 0, "address": address, "removed": True})

    def _submit_member(self, fields: dict[str, Any]) -> None:
        command = cbor2.dumps({"v": _COMMAND_VERSION, "t": "member", **fields})
        try:
            self.replicator.submit(command, _SUBMIT_TIMEOUT)
        except StorageError as exc:
            raise _not_stored(exc) from exc
        except ReplicationError as exc:
            raise GatewayFailure(_LEADERSHIP_LOST, "leadership lost") from exc

    def register_self(self, node_id: int, address: str, closing: threading.Event) -> None:
        """Once this node leads, record its id if the cluster does not know it yet."""
        while not closing.is_set():
            if address in self.members:
                return
            if self.is_ready_leader():
                with contextlib.suppress(GatewayFailure):
                    self.record_member(node_id, address)
            closing.wait(0.1)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the applier has done every queued task."""
        with self._progress:
            return self._progress.wait_for(lambda: self._backlog == 0, timeout)
