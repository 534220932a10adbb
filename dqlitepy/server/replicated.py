"""The write path of a replicated node (``design.md`` §3, ``docs/replication.md``).

Per database the leader keeps:

- a **writer**: the one gateway whose write transaction is open (SQLite's rule);
  others wait for it, up to their lock timeout, instead of meeting SQLite's lock;
- a **gate**: closed while a writer's statement runs and its commit is being
  replicated, so that no statement starts reading pages Raft has not committed;
- the WAL position of the last transaction Raft committed, to cut the WAL back
  to if a commit fails.

A commit's pages become one FRAMES command, submitted to Raft (a transaction
larger than :data:`PART_BYTES` becomes several, its parts, which every node
gathers and applies at once when the last one is committed).  Every node
applies committed commands in log order (:meth:`Replicated.apply`, on Raft's
thread): a command records the index of the last FRAMES entry of its database
it was built on, so a command built on a deposed leader's state is skipped by
every node alike.  The leader's own commands are already in its WAL; other
commands are queued for the applier thread, which writes their pages straight
into the database file once no session has it open.

After a restart the database files are rebuilt from the Raft log (the log is
kept whole until snapshots exist), so a crash can never leave a file ahead of or
apart from the log.
"""

from __future__ import annotations

import contextlib
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

from ..engine import Engine, Session, StatementInfo
from ..engine.wal import Transaction, WalTracker
from ..replication.replicator import LeadershipLost, NotLeader, ReplicationError, Replicator
from .gateway import GatewayFailure

__all__ = ["Replicated"]

log = logging.getLogger("dqlitepy.server")

_COMMAND_VERSION = 1
_NOT_LEADER = 10250
_LEADERSHIP_LOST = 10506
_SQLITE_BUSY = 5
_CHECKPOINT_FRAMES = 1000
_SUBMIT_TIMEOUT = 10.0
# How long a request waits for a new leader's barrier (applying the log's tail).
_BARRIER_WAIT = 10.0
#: A transaction's pages per Raft entry: one entry must fit in one transport frame
#: (64 MiB), and smaller entries keep heartbeats flowing between them.
PART_BYTES = 16 * 1024 * 1024


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
    #: Guards the fields below; statements waiting for the gate wait on it.
    cond: threading.Condition = field(init=False)
    #: Same lock: writers waiting for the slot, woken one per release (no herd).
    writer_turn: threading.Condition = field(init=False)
    writer: object | None = None
    #: The writer's session: closing it (a client gone mid-transaction) frees the slot.
    writer_session: Session | None = None
    gate_closed: bool = False
    #: Index of the last FRAMES entry of this database applied (the same on every node).
    applied_index: int = 0
    #: Frames in the WAL according to the WAL hook, if it fired during the
    #: current write statement (None: the statement committed nothing).
    wal_frames: int | None = None
    #: (salts, frames) of the WAL after the last commit Raft accepted.
    committed: tuple[tuple[int, int] | None, int] = (None, 0)
    #: Open sessions and the lock each holds while it runs a statement.
    sessions: dict[Session, threading.Lock] = field(default_factory=dict)
    #: The local files may hold frames Raft never committed.
    dirty: bool = False
    #: Held while SQLite may write the database file (checkpoints, closing the
    #: last session), so that a snapshot copies a file at rest.
    file_lock: threading.Lock = field(default_factory=threading.Lock)
    #: A transaction whose parts are arriving (Raft's thread only).
    parts: _Parts | None = None

    def __post_init__(self) -> None:
        lock = threading.RLock()
        self.cond = threading.Condition(lock)
        self.writer_turn = threading.Condition(lock)

    def release_writer(self) -> None:
        """Free the writer slot (``cond`` held) and wake one waiting writer."""
        self.writer = None
        self.writer_session = None
        self.writer_turn.notify()


def _in_transaction(session: Session) -> bool:
    # A session closed after a failed commit holds no transaction any more.
    return not session.closed and session.in_transaction


def _begins_write(sql: str) -> bool:
    words = sql.split(None, 2)
    return (
        len(words) >= 2
        and words[0].upper() == "BEGIN"
        and words[1].upper().rstrip(";") in ("IMMEDIATE", "EXCLUSIVE")
    )


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
        # Commands this node submitted, by origin, with the WAL position after them.
        self._own: dict[tuple[int, int], tuple[tuple[int, int] | None, int]] = {}
        self._tasks: queue.Queue[tuple[str, Transaction] | None] = queue.Queue()
        self._busy = 0
        self._busy_cond = threading.Condition()
        self._applier = threading.Thread(
            target=self._apply_loop, name="dqlitepy-applier", daemon=True
        )
        # Member address -> dqlite node id, written by apply() on Raft's thread:
        # readers copy it (dict(self.members)) before iterating.
        self.members: dict[str, int] = {}
        # The log is replayed from the start: begin from empty files.
        engine.remove_all()
        self.replicator = replicator_factory(self.apply, self._leadership)

    def start(self) -> None:
        self._applier.start()
        self.replicator.start()

    def close(self) -> None:
        self.replicator.close()
        self._tasks.put(None)
        self._applier.join(timeout=10)

    # ------------------------------------------------------------- queries

    def is_ready_leader(self) -> bool:
        """Leads, has applied everything before its term, and has no files to fix."""
        if not self.replicator.is_leader():
            return False
        with self._busy_cond:
            return self._busy == 0

    def _wait_ready_leader(self, timeout: float) -> None:
        """Let a just-elected leader finish its barrier rather than send clients away."""
        deadline = time.monotonic() + timeout
        while not self.is_ready_leader():
            if not self.replicator.is_elected() or time.monotonic() >= deadline:
                raise GatewayFailure(_NOT_LEADER, "not leader")
            time.sleep(0.01)

    def _database(self, name: str) -> _Database:
        with self._lock:
            db = self._databases.get(name)
            if db is None:
                wal = self.engine.path(name).with_name(self.engine.path(name).name + "-wal")
                db = self._databases[name] = _Database(name, WalTracker(wal))
            return db

    # --------------------------------------------------------- sessions

    def open_session(self, name: str) -> Session:
        self._wait_ready_leader(_BARRIER_WAIT)
        db = self._database(name)
        with db.cond:
            if db.dirty:
                self._restore(db)
            session = self.engine.session(name)

            def wal_hook(frames: int) -> None:
                db.wal_frames = frames

            session.set_wal_hook(wal_hook)
            db.sessions[session] = threading.Lock()
        return session

    def close_session(self, name: str, session: Session) -> None:
        db = self._database(name)
        lock = db.sessions.get(session)
        if lock is None:
            session.close()
            return
        with lock:
            with db.file_lock:
                session.close()
            with db.cond:
                db.sessions.pop(session, None)
                if db.writer_session is session or not db.sessions:
                    db.release_writer()
                db.cond.notify_all()

    @contextlib.contextmanager
    def statement(
        self, owner: object, name: str, session: Session, info: StatementInfo, timeout: float
    ) -> Iterator[None]:
        """Run one statement of ``owner``'s session under the write-path rules."""
        self._wait_ready_leader(min(timeout, _BARRIER_WAIT))
        db = self._database(name)
        lock = db.sessions.get(session)
        if lock is None or session.closed or db.dirty:
            # A dirty database may hold frames Raft never committed: the client
            # reconnects, and the new session starts from the committed state.
            raise GatewayFailure(_NOT_LEADER, "not leader")
        with lock:
            if session.closed:
                raise GatewayFailure(_NOT_LEADER, "not leader")
            writes = (
                not info.readonly
                or session.in_write_transaction
                or _begins_write(info.sql)
                or db.writer is owner
            )
            if not writes:
                with db.cond:
                    if not db.cond.wait_for(lambda: not db.gate_closed, timeout):
                        raise GatewayFailure(_SQLITE_BUSY, "database is locked")
                yield
                return
            self._acquire_writer(db, owner, timeout)
            db.writer_session = session
            db.wal_frames = None
            try:
                yield
            finally:
                try:
                    if not _in_transaction(session):
                        self._commit(db, session)
                finally:
                    with db.cond:
                        if not _in_transaction(session):
                            db.release_writer()
                        db.gate_closed = False
                        db.cond.notify_all()

    def _acquire_writer(self, db: _Database, owner: object, timeout: float) -> None:
        with db.cond:
            if not db.writer_turn.wait_for(lambda: db.writer in (None, owner), timeout):
                if db.writer is None:
                    db.writer_turn.notify()  # the wake-up this waiter used passes on
                raise GatewayFailure(_SQLITE_BUSY, "database is locked")
            db.writer = owner
            db.gate_closed = True

    def _commit(self, db: _Database, session: Session) -> None:
        if db.wal_frames is None:
            return  # nothing committed (a failed or empty write)
        transactions = db.tracker.read(db.wal_frames)
        db.wal_frames = None
        for txn in transactions:
            origin = (self.node_id, next(self._sequence))
            parts = _split_pages(txn.pages)
            self._own[origin] = (db.tracker.salts, db.tracker.frames)
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
                except (NotLeader, LeadershipLost, ReplicationError) as exc:
                    self._own.pop(origin, None)
                    self._fail(db, session)
                    raise GatewayFailure(_LEADERSHIP_LOST, "leadership lost") from exc
                if result != "applied":
                    self._own.pop(origin, None)
                    self._fail(db, session)
                    raise GatewayFailure(_LEADERSHIP_LOST, "leadership lost")
        if transactions and db.tracker.frames >= _CHECKPOINT_FRAMES:
            with db.file_lock:
                session.checkpoint()

    def _fail(self, db: _Database, session: Session) -> None:
        # The local WAL holds a commit Raft did not accept: no session may read
        # it, and the files go back to the committed state before any new one.
        with db.cond:
            db.dirty = True
            for other in list(db.sessions):
                other.interrupt()
        with db.file_lock:
            session.close()

    def _restore(self, db: _Database) -> None:
        """Close every session and bring the files back to the committed state."""
        for session, lock in list(db.sessions.items()):
            with lock, db.file_lock:
                session.close()
        db.sessions.clear()
        db.release_writer()
        salts, frames = db.committed
        self.engine.restore_committed(db.name, salts, frames)
        db.tracker = WalTracker(db.tracker.path)
        db.committed = (None, 0)
        db.wal_frames = None
        db.dirty = False

    # ------------------------------------------------------------- applying

    def apply(self, index: int, command: bytes) -> Any:
        """Apply one committed command (Raft's thread, log order, every node)."""
        if not command:
            # A new leader's first entry: parts of a transaction begun before it
            # will never be completed (their leader gave up on them).
            with self._lock:
                for db in self._databases.values():
                    db.parts = None
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
            if origin not in self._own:  # the leader has the pages in its WAL
                db.parts.pages.extend(pages)
            db.parts.received += 1
            if part < parts - 1:
                return "applied"
            pages = db.parts.pages + pages
            db.parts = None
        db.applied_index = index
        position = self._own.pop(origin, None)
        if position is not None:
            # Ours: the pages are in the local WAL already, up to `position`.
            db.committed = position
            return "applied"
        with self._busy_cond:
            self._busy += 1
        txn = Transaction(tuple(pages), int(decoded["size"]), int(decoded["ps"]))
        self._tasks.put((db.name, txn))
        return "applied"

    def _apply_loop(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            name, txn = task
            try:
                db = self._database(name)
                with db.cond:
                    if db.sessions or db.dirty or db.tracker.frames:
                        self._restore(db)
                self.engine.apply(name, txn)
            except Exception:
                log.exception("applying pages of %r failed", name)
            finally:
                with self._busy_cond:
                    self._busy -= 1
                    self._busy_cond.notify_all()

    def _leadership(self, leading: bool) -> None:
        if not leading:
            # Sessions of a deposed leader must not read what Raft may drop.
            with self._lock:
                databases = list(self._databases.values())
            for db in databases:
                with db.cond:
                    db.dirty = db.dirty or bool(db.sessions) or db.tracker.frames > 0
                    for session in db.sessions:
                        session.interrupt()

    # ------------------------------------------------------------ snapshots

    def capture_snapshot(self) -> Callable[[BinaryIO], None]:
        """Capture the state at the last applied entry (Raft's thread); return its writer.

        The writer (run on another thread) emits cbor2 state — members and each
        database's last applied FRAMES index, as of now — then per database a
        u64 size and the file's bytes.  The files are copied while writes go
        on, so they may already hold entries applied after now; that is safe
        because entries carry whole page images: replaying the log from this
        entry on rewrites every page such an entry touched and ends in the same
        state.  They never lag behind now (the applier is drained first).
        """
        # Raft's thread must not wait long (heartbeats stop): if the applier is
        # busy, the snapshot is postponed.
        if not self.wait_idle(1.0):
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

        def write(out: BinaryIO) -> None:
            out.write(state)
            with tempfile.TemporaryDirectory(prefix="dqlitepy-snapshot-") as workdir:
                for db in databases:
                    salts, frames = db.committed
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
        """Replace every database with a snapshot's (Raft's thread)."""
        self.wait_idle(600)
        state = cbor2.load(source)
        with self._lock:
            databases = list(self._databases.values())
        for db in databases:
            with db.cond:
                self._restore(db)
        self.engine.remove_all()
        self._own.clear()
        for name, applied in state["databases"]:
            (size,) = struct.unpack("<Q", source.read(8))
            db = self._database(str(name))
            with db.cond:
                db.applied_index = int(applied)
                db.committed = (None, 0)
                db.dirty = False
                if size:
                    self.engine.write_file(db.name, source, size)
        # Older snapshots hold [id, role] per member.
        self.members = {
            str(a): int(v[0] if isinstance(v, list) else v) for a, v in state["members"].items()
        }

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
        """Wait until the applier has written every queued transaction."""
        deadline = time.monotonic() + timeout
        with self._busy_cond:
            return self._busy_cond.wait_for(
                lambda: self._busy == 0, max(0.0, deadline - time.monotonic())
            )
