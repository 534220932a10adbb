"""The write path of a replicated node (``docs/replication.md``, "Rules").

Theory of operation
===================

Per database the leader keeps (:class:`~.database.Database`):

- a **writer**: the one gateway whose write transaction is open (SQLite's rule);
  others queue for it, up to their lock timeout, instead of meeting SQLite's lock;
- a **gate**, held by the writer while one of its statements runs: no read
  transaction *begins* meanwhile, nor while any commit is **in flight**
  (submitted to Raft, not yet settled), so nobody reads pages Raft has not
  committed (readers that began before keep their snapshot, which holds none
  of them); waiting readers go before the next writer's statement;
- the WAL position of the last transaction Raft committed, to cut the WAL back
  to if a commit fails, tagged with an **epoch** that every rebuild of the files
  increments.

A commit's pages are read from the WAL inside SQLite's WAL hook (on the
writer's thread, under its session's lock, so atomically with the commit) and
become one FRAMES command, submitted to Raft with the writer slot still held
(log order is WAL order), after which the slot passes to the next writer while
this commit is in flight: **group commit**.  A command names what it was built
on — the commit submitted before it in this *epoch* (``after``), or the last
FRAMES entry applied — and a failure fences the database, which starts a new
epoch, so no later commit builds on a lost one (a transaction larger than
:data:`~.commands.PART_BYTES` becomes several, its parts, gathered by every node
and applied at once when the last one is committed).  Every node applies
committed commands in log order (:meth:`~.fsm.StateMachine.apply`, on Raft's
thread): a command records the
index of the last FRAMES entry of its database it was built on, so a command
built on a deposed leader's state is skipped by every node alike.  The leader's
own commands are already in its WAL, unless the files were rebuilt since (the
epoch says); every other command is queued for the **applier** thread, which
writes its pages into the database file.

The applier is the only thread that rebuilds files.  A database moves through
three phases (:class:`~.database.Phase`, transitions in ``database._PHASE_MOVES``):

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

1. ``Database._mutex`` (its conditions ``_changed`` and ``_writer_turn`` share it):
   the database's phase, sessions, writer slot and gate.  Held only to read or
   change them: never across SQLite work, file I/O or a wait for Raft; the only
   waits under it are on its own conditions, which release it.
2. A :class:`~dqlitepy.engine.Session`'s own lock (in the engine): held across
   one call into SQLite and nothing else.  The applier closes another thread's
   session by interrupting it and then taking this lock.
3. ``Database.file_lock``: held while a database file is rewritten or copied
   (rebuild, applying pages, a snapshot's copy, DUMP).  A checkpoint on the
   write path only *tries* it: the next commit checkpoints instead.
4. Leaf locks, held for O(1) work with nothing taken under them:
   ``Database._position_lock`` (the committed position and its epoch),
   ``Databases._lock`` (the database map), ``Leader._lock`` (its map of WAL
   captures), ``StateMachine._progress`` (the applier's backlog and the
   barrier; a condition), Raft's waiter set.

No lock is held while waiting for another thread: a writer waiting for Raft
holds nothing (its commit is in flight, a state); one waiting for readers holds
the writer slot, a state, not a lock.

Reads are linearizable: a statement that returns rows runs only after
:meth:`Replicator.read_barrier` (the leader lease, or Raft's ReadIndex)
confirmed, after the request arrived, that this node still leads, and the
applier has caught up with the read index.  A deposed leader that does not
know it yet therefore never serves a stale row (``docs/replication.md``,
"Linearizable reads").  Raft's thread
takes only leaf locks: :meth:`~.fsm.StateMachine.apply`,
:meth:`~.fsm.StateMachine.install_snapshot` and the leadership callback record
what happened and queue the rest for the applier.

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
``fsm._REBUILD_RETRY`` seconds, logging the first failure of a streak, and
asks for the same probe: Raft acknowledges only what the journal stored, so a
lagging file costs time, never a write.

How sure a node is that it leads
================================
Four strengths, from the weakest:

1. **elected** (:meth:`Replicator.is_elected`): Raft made this node the leader
   of its term.  A deposed leader believes it until it hears of a newer term.
   Enough to make a request wait for the barrier rather than go elsewhere.
2. **barrier applied by Raft** (:meth:`Replicator.is_leader`): and Raft has
   applied this term's first entry, so every entry of earlier terms.  The
   write path does not use it: the files may still lag behind what Raft applied.
3. **caught up** (:meth:`Replicated.is_caught_up_leader`): elected, this term's
   first entry applied by :meth:`~.fsm.StateMachine.apply`, and the applier's backlog empty, so the
   files hold every entry committed before the term (it is set inside
   ``apply``, before Raft counts the entry applied, so it can hold a moment
   before 2 does).  Sessions open and executions start only then.  A write
   needs no more: Raft refuses a deposed leader's entry, and the fence cuts
   its commit back out.
4. **confirmed** (:meth:`~.leader.Leader._confirm_leadership`, the leader
   lease or Raft's ReadIndex): caught up, leadership confirmed after the
   request arrived (no other leader can exist before the lease ends, or a
   quorum answered a round), and the applier has written up to the read index.
   Only then does an execution return rows.

Words
=====
"Statement" is kept apart into four words here:

- **SQL text**: what a client sends;
- **prepared statement** (:class:`~dqlitepy.engine.StatementInfo`, ``info``):
  SQL text the engine compiled, run any number of times;
- **execution**: one run of a prepared statement under the rules above, from
  its admission (as a reader, or as the writer) to its reply
  (:meth:`Replicated.execution`, once ``statement``).  A *write execution*
  returns only once Raft committed what it committed;
- **commit**: one write transaction the WAL hook read during a write
  execution, replicated as one FRAMES command (or its parts).  A write
  execution makes none (inside ``BEGIN … COMMIT``), one, or several.

Where the code lives
====================
================= ============================================================
:mod:`.database`  one database's shared state and its transitions
                  (:class:`~.database.Database`: phase, sessions, writer slot,
                  gate, committed position, the locks of levels 1, 3 and 4)
:mod:`.leader`    the leader's side: sessions, executions, the WAL hook's
                  capture, commits submitted to Raft
:mod:`.fsm`       every node's side: committed commands applied, the applier
                  thread, snapshots, how far the applier has come
:mod:`.commands`  the commands' format in the Raft log
this module       :class:`Replicated`, which wires them together for the node
================= ============================================================
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

from ..engine import Engine, Session, StatementInfo
from .commands import PART_BYTES
from .database import Databases, Phase
from .fsm import ReplicatorFactory, StateMachine
from .gateway import BeginRead, GatewayFailure
from .leader import Leader

__all__ = ["PART_BYTES", "Phase", "Replicated"]


class Replicated:
    """Replication state of one node's databases: the leader's side and the state machine.

    Args:
        engine: the node's databases.
        replicator_factory: builds the node's Raft participation from the apply
            and leadership callbacks of this object (started by :meth:`start`).
        node_id: this node's id (tags the commands it originates).
        on_cluster_id: called (on Raft's thread) with the cluster id once the
            log or a snapshot names it.
    """

    def __init__(
        self,
        engine: Engine,
        replicator_factory: ReplicatorFactory,
        node_id: int,
        on_cluster_id: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.node_id = node_id
        self.databases = Databases(engine)
        self.fsm = StateMachine(engine, self.databases, replicator_factory, on_cluster_id)
        self.replicator = self.fsm.replicator
        self.leader = Leader(engine, self.databases, self.fsm, node_id)

    def start(self) -> None:
        """Start the applier, then Raft (which feeds it)."""
        self.fsm.start()
        self.replicator.start()

    def close(self) -> None:
        """Stop Raft (handing leadership over first), then the applier."""
        self.replicator.close()
        self.fsm.close()

    @property
    def members(self) -> dict[str, int]:
        """Member address -> dqlite node id, as applied: copy it before iterating."""
        return self.fsm.members

    def is_caught_up_leader(self) -> bool:
        """Elected, and the files hold every entry committed before its term (see above)."""
        return self.fsm.is_caught_up_leader()

    # ------------------------------------------------------------- the leader's side

    def open_session(self, name: str) -> Session:
        """Open a session on database ``name`` once this node is a caught-up leader."""
        return self.leader.open_session(name)

    def close_session(self, name: str, session: Session) -> None:
        """Close a session opened by :meth:`open_session`."""
        self.leader.close_session(name, session)

    def execution(
        self, owner: object, name: str, session: Session, info: StatementInfo, timeout: float
    ) -> AbstractContextManager[Callable[[], None]]:
        """Run one execution of ``owner``'s prepared statement (see :meth:`Leader.execution`)."""
        return self.leader.execution(owner, name, session, info, timeout)

    def read_starter(self, name: str) -> BeginRead:
        """The read fast path's admission on ``name`` (see :meth:`Leader.read_starter`)."""
        return self.leader.read_starter(name)

    def dump(self, name: str) -> list[tuple[str, bytes]]:
        """The database file and WAL of ``name``, copied while no rebuild runs."""
        return self.leader.dump(name)

    def record_member(self, node_id: int, address: str) -> None:
        """Replicate a member's id (its role is Raft's: ``replicator.roles()``)."""
        self.leader.record_member(node_id, address)

    def forget_member(self, address: str) -> None:
        """Replicate a member's removal."""
        self.leader.forget_member(address)

    def register_self(self, node_id: int, address: str, closing: threading.Event) -> None:
        """Once this node leads, record its id if the cluster does not know it yet."""
        while not closing.is_set():
            if address in self.members:
                return
            if self.is_caught_up_leader():
                with contextlib.suppress(GatewayFailure):
                    self.record_member(node_id, address)
            closing.wait(0.1)

    def register_cluster_id(self, candidate: str, closing: threading.Event) -> None:
        """Once this node leads, put a cluster id in the log if it holds none yet.

        ``candidate`` is the id this node's directory records, or a new one for a
        cluster whose members were all made before cluster ids: the first id the
        log holds is every member's (``fsm.py``).
        """
        while not closing.is_set():
            if self.fsm.cluster_id is not None:
                return
            if self.is_caught_up_leader():
                with contextlib.suppress(GatewayFailure):
                    self.leader.record_cluster_id(candidate)
            closing.wait(0.1)

    # ------------------------------------------------------------- every node's side

    def apply(self, index: int, command: bytes, decoded: object = None) -> Any:
        """Apply one committed command (Raft's thread, log order, every node)."""
        return self.fsm.apply(index, command, decoded)

    def capture_snapshot(self) -> Callable[[BinaryIO], None]:
        """Capture the state at the last applied entry (Raft's thread); return its writer."""
        return self.fsm.capture_snapshot()

    def install_snapshot(self, source: BinaryIO) -> None:
        """Take a snapshot's state (Raft's thread); the applier swaps its files in."""
        self.fsm.install_snapshot(source)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the applier has done every queued task."""
        return self.fsm.wait_idle(timeout)
