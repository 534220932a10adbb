"""The leader's side of the write path: sessions, executions, commits captured and submitted.

A gateway opens its sessions here and runs each execution of a prepared statement inside
:meth:`Leader.execution`: it waits until this node is a *caught-up* leader, admits the
execution as a reader (behind the gate, after confirming leadership — under the leader
lease, or by a ReadIndex round — if it returns rows) or as the writer (the writer slot and
the gate), and after a write execution hands every commit the WAL hook captured to Raft, one
FRAMES command (or its parts) each, chained on the commit before it; it then passes the
writer slot on (group commit: the next writer runs while these commits are in flight) and
returns once Raft committed them. A commit Raft did not accept fences the database
(:meth:`StateMachine.fence`), and every commit built on it is skipped. The rules, the words
and the lock hierarchy are in :mod:`dqlitepy.server.replicated`'s docstring.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType

from ..engine import Engine, EngineError, Session, SessionClosed, StatementInfo
from ..engine.wal import Transaction, WalError
from ..replication.replicator import (
    LeadershipLost,
    NotLeader,
    PendingCommand,
    ReplicationError,
    StorageError,
)
from ..wire import ErrorCode
from .commands import Frames, encode_cluster_id, encode_frames, encode_member, split_pages
from .database import Database, Databases, Locked, NotServing, Origin, Position
from .fsm import StateMachine, is_storage_error
from .gateway import BeginRead, GatewayFailure

__all__ = ["Leader"]

log = logging.getLogger("dqlitepy.server")

_CHECKPOINT_FRAMES = 1000
# How long a writer waits for the commits in flight to settle before a checkpoint.
_CHECKPOINT_WAIT = 1.0
_SUBMIT_TIMEOUT = 10.0
# How long a request waits for a new leader's barrier (applying the log's tail).
_BARRIER_WAIT = 10.0
# How long DUMP on a new leader waits for it to apply what earlier terms committed.
_DUMP_WAIT = 5.0


@functools.lru_cache(maxsize=1024)
def _begins_write(sql: str) -> bool:
    # Cached: asked for every read, of the few statements a client repeats.
    words = sql.split(None, 2)
    return (
        len(words) >= 2
        and words[0].upper() == "BEGIN"
        and words[1].upper().rstrip(";") in ("IMMEDIATE", "EXCLUSIVE")
    )


_INTERRUPT = ErrorCode.SQLITE_INTERRUPT


def _not_leader() -> GatewayFailure:
    return GatewayFailure(ErrorCode.NOT_LEADER, "not leader")


def _leadership_lost() -> GatewayFailure:
    return GatewayFailure(ErrorCode.LEADERSHIP_LOST, "leadership lost")


def _not_stored(error: StorageError) -> GatewayFailure:
    """The answer to a write the Raft log could not store (it did not happen)."""
    if error.full:
        return GatewayFailure(ErrorCode.SQLITE_FULL, "database or disk is full")
    return GatewayFailure(ErrorCode.SQLITE_IOERR, "disk I/O error")


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """Answer a database's refusal the way the client understands it."""
    try:
        yield
    except NotServing:
        # Nothing ran: the client may ask another node for the leader.
        raise _not_leader() from None
    except Locked:
        raise _locked() from None


def _locked() -> GatewayFailure:
    return GatewayFailure(ErrorCode.SQLITE_BUSY, "database is locked")


def _writes(owner: object, session: Session, info: StatementInfo, db: Database) -> bool:
    """Whether an execution goes the write path (it may write, or a write is under way)."""
    return (
        not info.readonly
        or session.in_write_transaction
        or _begins_write(info.sql)
        or db.is_writer(owner)
    )


class _ReaderStart:
    """The ``begun`` callback of a read: tells the database once that the reader began."""

    __slots__ = ("_db",)

    def __init__(self, db: Database) -> None:
        self._db: Database | None = db

    def __call__(self) -> None:
        db = self._db
        if db is not None:
            self._db = None
            db.reader_began()


def _no_op() -> None:
    """The ``begun`` callback of an execution that needs none."""


class _Capture:
    """The commits the WAL hook read during one write execution (the writer's thread only)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._commits: list[tuple[Transaction, Position]] = []
        self._error: Exception | None = None
        self.epoch = 0  # the database's when the execution began (a fence starts another)

    def start(self) -> None:
        self._commits = []
        self._error = None

    def hook(self, frames: int) -> None:
        """SQLite's WAL hook: read what the commit appended (writer's thread, session lock)."""
        try:
            transactions = self._db.tracker.read(frames)
        except (WalError, OSError) as exc:
            self._error = exc
            return
        position = self._db.position()
        self._commits.extend((txn, position) for txn in transactions)

    def take(self) -> tuple[list[tuple[Transaction, Position]], Exception | None]:
        """The commits read since :meth:`start`, and the error that stopped reading."""
        commits, error = self._commits, self._error
        self.start()
        return commits, error


class _Write:
    """:meth:`Leader.execution` of a write (a class, not a generator: every write's path)."""

    __slots__ = ("_capture", "_db", "_leader", "_owner", "_session", "_timeout")

    def __init__(
        self, leader: Leader, db: Database, owner: object, session: Session, timeout: float
    ) -> None:
        self._leader = leader
        self._db = db
        self._owner = owner
        self._session = session
        self._timeout = timeout

    def __enter__(self) -> Callable[[], None]:
        self._capture = self._leader._begin_write(
            self._db, self._owner, self._session, self._timeout
        )
        return _no_op

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Never suppresses: the statement's error, or the one ending the write, goes on.
        self._leader._end_write(self._db, self._owner, self._session, self._capture, exc)


@dataclass(frozen=True)
class _Submitted:
    """One commit handed to Raft: its origin and each part's pending outcome."""

    origin: Origin
    #: A part's outcome to come, or why it could not even be queued.
    parts: list[PendingCommand | ReplicationError]


class Leader:
    """The write path of one node's databases while it leads (it refuses otherwise).

    Args:
        engine: the node's databases.
        databases: their shared state.
        fsm: the node's state machine (its replicator submits the commands).
        node_id: this node's id (tags the commands it originates).
    """

    def __init__(
        self, engine: Engine, databases: Databases, fsm: StateMachine, node_id: int
    ) -> None:
        self._engine = engine
        self._databases = databases
        self._fsm = fsm
        self._replicator = fsm.replicator
        self._node_id = node_id
        # Origins stay unique across restarts: the sequence starts at the clock
        # (in ns), which no node's commit count overtakes.
        self._sequence = itertools.count(time.time_ns())
        # A leaf lock: the capture of each database, created on first use.
        self._lock = threading.Lock()
        self._captures: dict[str, _Capture] = {}

    def _capture_of(self, db: Database) -> _Capture:
        with self._lock:
            capture = self._captures.get(db.name)
            if capture is None:
                capture = self._captures[db.name] = _Capture(db)
            return capture

    def _wait_caught_up(self, timeout: float) -> None:
        if not self._fsm.wait_caught_up_leader(timeout):
            raise _not_leader()

    # --------------------------------------------------------- sessions

    def open_session(self, name: str) -> Session:
        """Open a session on database ``name`` once this node is a caught-up leader."""
        self._wait_caught_up(_BARRIER_WAIT)
        db = self._databases.get(name)
        with _refusals():
            db.start_opening(_BARRIER_WAIT)
        try:
            session = self._engine.session(name)
            session.set_wal_hook(self._capture_of(db).hook)
        except BaseException:
            db.finish_opening(None)
            raise
        db.finish_opening(session)
        return session

    def close_session(self, name: str, session: Session) -> None:
        """Close ``session`` (rolling back an open transaction first)."""
        session.close()
        self._databases.get(name).forget_session(session)

    def dump(self, name: str) -> list[tuple[str, bytes]]:
        """The database file and WAL of ``name`` as Raft committed them, on any node.

        The copy holds committed transactions only, up to some point of the log:
        the WAL is cut after the last commit Raft accepted (commits still in
        flight are left out), and it is taken while no rebuild or checkpoint
        rewrites the files.  A leader first waits (up to
        :data:`_DUMP_WAIT`) until it has applied every entry committed before its
        term, as it does before serving SQL; it does not confirm its leadership
        (DUMP is served from a node's own copy, as in dqlite).
        """
        if self._replicator.is_elected():
            self._fsm.wait_caught_up_leader(_DUMP_WAIT)  # else its copy as it is
        if not self._engine.exists(name):
            return self._engine.dump(name)  # two empty files; no state for a name never used
        db = self._databases.get(name)
        with db.file_lock:
            return self._engine.dump(name, db.committed())

    # --------------------------------------------------------- executions

    def execution(
        self, owner: object, name: str, session: Session, info: StatementInfo, timeout: float
    ) -> AbstractContextManager[Callable[[], None]]:
        """Run one execution of ``owner``'s prepared statement under the write-path rules.

        Enter the context manager returned at once: it yields ``begun``, which
        the caller calls once the statement's first step ran (its read
        transaction, if any, has begun).  A write execution returns once Raft
        committed what it committed.
        """
        self._wait_caught_up(min(timeout, _BARRIER_WAIT))
        db = self._databases.get(name)
        if _writes(owner, session, info, db):
            return _Write(self, db, owner, session, timeout)
        return self._read(db, session, info, timeout)

    @contextlib.contextmanager
    def _read(
        self, db: Database, session: Session, info: StatementInfo, timeout: float
    ) -> Iterator[Callable[[], None]]:
        if not info.reads_database:
            # BEGIN, SELECT last_insert_rowid(): no page is read, so nothing can
            # be stale or uncommitted.  A deferred BEGIN thus does not wait for
            # the commits in flight, which keeps sqlite3's default mode pipelined.
            yield _no_op
            return
        self._admit_read(db, session, info, timeout)
        begun = _ReaderStart(db)
        try:
            yield begun
        finally:
            begun()

    def read_starter(self, name: str) -> BeginRead:
        """:meth:`begin_read` on database ``name``, which a gateway keeps for its session
        (the database's state is looked up once, not for every read)."""
        return functools.partial(self.begin_read, self._databases.get(name))

    def begin_read(
        self, db: Database, owner: object, session: Session, info: StatementInfo, timeout: float
    ) -> Callable[[], None] | None:
        """:meth:`execution` of a plain read that returns rows, without a context manager.

        The read fast path (``docs/server.md``, "The read fast path"): the same checks
        as :meth:`execution`, in the same order, with the same failures, for a
        statement that returns rows and cannot write, outside a write transaction.
        Returns ``begun``, which the caller must call exactly once, after the
        statement's first step ran (or once it will not run); None, having done
        nothing but wait for a caught-up leader, for any other execution (the caller
        then goes through :meth:`execution`).
        """
        if not (info.column_count and info.readonly and info.reads_database):
            return None
        # The usual read: every check one test, none waiting (StateMachine.read_ready,
        # then gate and writer slot at once; a statement returning rows is never BEGIN,
        # and an open write transaction holds the writer slot, so _writes is covered).
        # Else the waiting way below: the same checks in execution's order and failures.
        if self._fsm.read_ready() and db.admit_reader_now(owner, session):
            return db.reader_began
        self._wait_caught_up(min(timeout, _BARRIER_WAIT))
        if _writes(owner, session, info, db):
            return None
        self._admit_read(db, session, info, timeout)
        return db.reader_began

    def _admit_read(
        self, db: Database, session: Session, info: StatementInfo, timeout: float
    ) -> None:
        """Let a read that reads the database begin: confirmed leadership, then the gate."""
        if info.column_count:
            # A statement that returns rows may return stale ones on a deposed
            # leader; one that returns none (BEGIN, a read's COMMIT) cannot.
            self._confirm_leadership(min(timeout, _BARRIER_WAIT))
        # A generator context manager is fine here: the usual read takes begin_read's test.
        with _refusals():
            db.admit_reader(session, timeout)

    def _confirm_leadership(self, timeout: float) -> None:
        """Serve a read only once this node's leadership is confirmed: lease or ReadIndex.

        Under the leader lease no other leader can exist yet (no message
        needed); otherwise a quorum confirms it with a ReadIndex round
        (``docs/replication.md``, "Linearizable reads").

        Then wait until the applier has written everything up to the read index
        (Raft has applied it; pages of other nodes' entries go through the applier).
        """
        deadline = time.monotonic() + timeout
        try:
            self._replicator.read_barrier(timeout)
        except ReplicationError as exc:
            # Nothing was read: the client may ask another node for the leader.
            raise _not_leader() from exc
        if not self._fsm.wait_idle(max(0.0, deadline - time.monotonic())):
            raise _not_leader()

    def _begin_write(
        self, db: Database, owner: object, session: Session, timeout: float
    ) -> _Capture:
        """Take the writer slot (and the gate) for a write; :meth:`_end_write` ends it
        (also when this raises once the slot was taken)."""
        with _refusals():
            db.acquire_writer(owner, session, timeout)
        capture = self._capture_of(db)
        capture.start()
        capture.epoch = db.position()[0]
        try:
            self._checkpoint_if_due(db, session, timeout)
        except BaseException as exc:
            self._end_write(db, owner, session, capture, exc)
            raise
        return capture

    def _end_write(
        self,
        db: Database,
        owner: object,
        session: Session,
        capture: _Capture,
        error: BaseException | None,
    ) -> None:
        """Submit what the execution committed, pass the writer slot on, wait for Raft
        (``error``: what the statement raised; None: it ran)."""
        storage_failed = isinstance(error, EngineError) and is_storage_error(error)
        submitted: list[_Submitted] = []
        try:
            if storage_failed:
                # SQLite's error goes back as it is: nothing was submitted.
                self._storage_trouble(db)
            if not session.in_transaction:
                submitted = self._submit_captured(db, session, capture)
        finally:
            # The next writer runs while these commits are in flight: group commit.
            db.end_write(owner, session)
        self._settle(db, submitted)
        if error is None and not submitted and not session.in_transaction:
            self._await_predecessors(db)
        # Interrupted (or its session closed) by a fence, not by the client: cut off.
        cut = isinstance(error, SessionClosed) or getattr(error, "code", 0) == _INTERRUPT
        if cut and db.position()[0] != capture.epoch:
            raise _leadership_lost() from error

    def _storage_trouble(self, db: Database) -> None:
        """SQLite could not write ``db``: rebuild its files, have the log's storage probed."""
        log.warning("database %r: a write failed for lack of room or an I/O error", db.name)
        self._fsm.fence(db)
        self._replicator.check_storage()

    def _checkpoint_if_due(self, db: Database, session: Session, timeout: float) -> None:
        """Fold a long WAL into the file, once every commit in it is committed.

        Runs with the writer slot and the gate held, so no commit joins the
        WAL meanwhile; it waits for those in flight (a checkpoint must never
        copy a frame Raft may still drop).  If they do not settle in time the
        next writer tries again.
        """
        if db.tracker.frames < _CHECKPOINT_FRAMES:
            return
        if db.await_settled(min(timeout, _CHECKPOINT_WAIT)):
            session.checkpoint(db.file_lock)

    def _await_predecessors(self, db: Database) -> None:
        """A write-path execution that committed nothing still answers only after the commits
        it may have read are committed (it ran on top of the commits in flight)."""
        if not db.await_settled(_SUBMIT_TIMEOUT):
            raise _leadership_lost()

    # --------------------------------------------------------- submitting commits

    def _submit_captured(
        self, db: Database, session: Session, capture: _Capture
    ) -> list[_Submitted]:
        """Hand what the execution committed to Raft, in WAL order; wait for nothing.

        Raises:
            GatewayFailure: the WAL could not be read, or the files were rebuilt
                under the execution (nothing was submitted; its commits are gone).
        """
        commits, error = capture.take()
        if error is not None:
            log.error("reading the WAL of %r failed: %s", db.name, error)
            self._fsm.fence(db)
            raise GatewayFailure(ErrorCode.SQLITE_IOERR, f"disk I/O error: {error}")
        if commits and session.closed:
            # The files were rebuilt under this execution: its commit is gone and
            # was never submitted.
            raise _leadership_lost()
        submitted: list[_Submitted] = []
        for txn, position in commits:
            origin = (self._node_id, next(self._sequence))
            try:
                after = db.link(origin, position)
            except NotServing:
                # Fenced since the commit: it may sit on a lost one.  It is not
                # submitted, and counts as failed when the caller settles those
                # submitted before it (the execution did not entirely happen).
                if not submitted:
                    raise _leadership_lost() from None
                submitted.append(_Submitted(origin, [LeadershipLost("fenced before submission")]))
                break
            submitted.append(self._submit_commit(db, origin, after, txn, position))
        return submitted

    def _submit_commit(
        self,
        db: Database,
        origin: Origin,
        after: Origin | None,
        txn: Transaction,
        position: Position,
    ) -> _Submitted:
        """Queue one commit's FRAMES command (or its parts, in order) for the Raft log.

        A commit split into parts is not pipelined: each part but the last is
        waited for (the writer slot held) before the next is queued, so that
        heartbeats pass between entries of 16 MiB instead of queueing behind
        all of them.  A part that failed ends the submission; the caller
        learns why from the parts (:meth:`_outcome`).
        """
        parts = split_pages(txn.pages)
        # Built on the commit before it, or (the first of its epoch) on the last
        # FRAMES entry applied, which the caught-up leader's files hold.
        base = self._fsm.applied_index(db.name) if after is None else 0
        self._fsm.expect_own(origin, position)
        pending: list[PendingCommand | ReplicationError] = []
        for number, pages in enumerate(parts):
            # The leader applies its own command from ``frames`` (never decoding it).
            frames = Frames(
                db.name, base, origin, txn.page_size, txn.db_size, pages, number, len(parts), after
            )
            try:
                part = self._replicator.submit_async(encode_frames(frames), frames)
                pending.append(part)
                if number < len(parts) - 1 and part.result(_SUBMIT_TIMEOUT) != "applied":
                    break
            except ReplicationError as exc:
                if len(pending) == number:  # not even queued (replication stopped)
                    pending.append(exc)
                break
        return _Submitted(origin, pending)

    def _settle(self, db: Database, submitted: list[_Submitted]) -> None:
        """Wait for the outcome of every commit submitted; raise what the client must hear.

        A commit Raft did not accept fences the database (its frames, and every
        commit built on them, leave the files).  The answer is ``not leader``
        (the client may run the execution again) only if provably nothing of
        it entered any log; else what the log said, or ``leadership lost``.
        """
        deadline = time.monotonic() + _SUBMIT_TIMEOUT
        failures: list[ReplicationError | None] = []
        for commit in submitted:
            failure: ReplicationError | None = LeadershipLost("no outcome")
            try:
                failure = self._outcome(commit, deadline)
            finally:
                if failure is not None:
                    # Fenced before it counts as settled: a writer waiting for
                    # it (await_settled) then sees the new epoch.
                    self._abandon(db, commit.origin)
                db.settled(commit.origin)
            failures.append(failure)
        errors = [failure for failure in failures if failure is not None]
        if not errors:
            return
        if len(errors) == len(failures) and all(isinstance(e, StorageError) for e in errors):
            first = errors[0]
            assert isinstance(first, StorageError)
            raise _not_stored(first) from first
        if len(errors) == len(failures) and all(type(e) is NotLeader for e in errors):
            raise _not_leader() from errors[0]
        raise _leadership_lost() from errors[0]

    def _outcome(self, commit: _Submitted, deadline: float) -> ReplicationError | None:
        """None once every part of ``commit`` was applied; else why not.

        A commit whose first part was not appended counts as not appended (its
        later parts were queued behind it); once a part may be in a log, a later
        failure makes the outcome unknown.
        """
        for number, pending in enumerate(commit.parts):
            try:
                if isinstance(pending, ReplicationError):
                    raise pending
                result = pending.result(max(0.0, deadline - time.monotonic()))
            except NotLeader as exc:
                if number == 0:
                    return exc
                return LeadershipLost(f"a later part was not stored: {exc}")
            except ReplicationError as exc:
                return exc
            if result != "applied":
                # Skipped by every node: built on a commit that failed.
                return LeadershipLost(f"the commit was {result}")
        return None

    def _abandon(self, db: Database, origin: Origin) -> None:
        """Raft did not accept ``origin``: its commit must leave the files."""
        self._fsm.forget_own(origin)
        self._fsm.fence(db)

    # --------------------------------------------------------- membership

    def record_member(self, node_id: int, address: str) -> None:
        """Replicate a member's id (its role is Raft's: ``replicator.roles()``)."""
        self._submit_member(encode_member(node_id, address))

    def record_cluster_id(self, cluster_id: str) -> None:
        """Replicate the cluster's id (the first one in the log counts)."""
        self._submit_member(encode_cluster_id(cluster_id))

    def forget_member(self, address: str) -> None:
        """Replicate a member's removal."""
        self._submit_member(encode_member(0, address, removed=True))

    def _submit_member(self, command: bytes) -> None:
        try:
            self._replicator.submit(command, _SUBMIT_TIMEOUT)
        except StorageError as exc:
            raise _not_stored(exc) from exc
        except ReplicationError as exc:
            raise _leadership_lost() from exc
