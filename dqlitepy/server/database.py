"""One database's shared state on a replicated node, and every change to it.

:class:`Database` owns what the leader's gateway threads, the applier and
Raft's thread share about one database — its :class:`Phase`, sessions, writer
slot, gate and the committed WAL position — together with the locks that
guard them; nothing outside changes them but through its methods, which are
the transitions.  The rules (phases, lock hierarchy) are written in
:mod:`dqlitepy.server.replicated`'s docstring; what each thread alone keeps
lives with its code (:mod:`.leader`, :mod:`.fsm`).
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..engine import Engine, Session
from ..engine.wal import WalTracker

__all__ = [
    "Committed",
    "Database",
    "Databases",
    "Locked",
    "NotServing",
    "Origin",
    "Phase",
    "Position",
]

#: (WAL salts, WAL frames) after the last commit Raft accepted.
Committed = tuple[tuple[int, int] | None, int]
#: (epoch, WAL salts, WAL frames) after a commit: where the committed state ends.
Position = tuple[int, tuple[int, int] | None, int]
#: (node id, sequence): names one commit's FRAMES command(s), unique in the log.
Origin = tuple[int, int]


class Phase(enum.Enum):
    """Where a database's files stand (see :mod:`dqlitepy.server.replicated`)."""

    SERVING = "serving"
    FENCED = "fenced"
    RESTORING = "restoring"


_PHASE_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.SERVING: frozenset({Phase.FENCED, Phase.RESTORING}),
    Phase.FENCED: frozenset({Phase.RESTORING}),
    Phase.RESTORING: frozenset({Phase.SERVING, Phase.FENCED}),
}


class NotServing(Exception):
    """The database is fenced or being rebuilt, or the session was closed by a rebuild."""


class Locked(Exception):
    """The wait for the writer slot or the gate ran out."""


class Database:
    """The state of one database that several threads share.

    Args:
        name: the database's name.
        wal_path: its ``-wal`` file (the leader's :class:`WalTracker` follows it).
    """

    def __init__(self, name: str, wal_path: Path) -> None:
        self.name = name
        #: Read by the writer's WAL hook; replaced by a rebuild (``file_lock`` held).
        self.tracker = WalTracker(wal_path)
        # -- under _mutex (level 1) -----------------------------------------------
        self._mutex = threading.Lock()
        #: Phase, sessions, gate and readers changed.
        self._changed = threading.Condition(self._mutex)
        #: The writer slot was released: one waiting writer is woken (no herd).
        self._writer_turn = threading.Condition(self._mutex)
        self._phase = Phase.SERVING
        self._sessions: set[Session] = set()
        #: Sessions being opened right now (a rebuild waits for them to settle).
        self._opening = 0
        self._writer: object | None = None
        self._writer_session: Session | None = None
        #: The writer whose statement runs: no read transaction begins meanwhile.
        self._gate_holder: object | None = None
        #: Readers admitted past the gate whose read transaction has not begun yet.
        self._starting_readers = 0
        #: Readers waiting at the gate: no new writer statement starts meanwhile.
        self._waiting_readers = 0
        #: Commits of this epoch submitted to Raft whose outcome no writer has
        #: settled yet: their frames are in the WAL, so no read transaction begins.
        self._in_flight: set[Origin] = set()
        # -- file_lock (level 3) ------------------------------------------------------
        #: Held while the database file is rewritten or copied.
        self.file_lock = threading.Lock()
        # -- under _position_lock (level 4) -----------------------------------------
        self._position_lock = threading.Lock()
        #: Incremented by every rebuild: positions of an older epoch point into a
        #: WAL that no longer exists.
        self._epoch = 0
        self._committed: Committed = (None, 0)
        #: The last commit submitted in this epoch: the next one builds on it.
        self._tail: Origin | None = None

    def __repr__(self) -> str:
        return f"Database({self.name!r}, {self._phase.value})"

    def _set_phase(self, phase: Phase) -> None:
        """Move to ``phase`` (``_mutex`` held) and wake everyone waiting on the database."""
        if phase not in _PHASE_MOVES[self._phase]:
            raise RuntimeError(f"database {self.name!r}: {self._phase.value} -> {phase.value}")
        self._phase = phase
        self._changed.notify_all()
        self._writer_turn.notify_all()

    def _release_writer(self) -> None:
        """Free the writer slot (``_mutex`` held) and wake one waiting writer."""
        self._writer = None
        self._writer_session = None
        self._writer_turn.notify()

    # ------------------------------------------------------------ sessions

    def start_opening(self, timeout: float) -> None:
        """Announce a session about to open; a database being rebuilt serves again shortly.

        Raises:
            NotServing: the database did not serve again within ``timeout``.
        """
        with self._mutex:
            if not self._changed.wait_for(lambda: self._phase is Phase.SERVING, timeout):
                raise NotServing
            self._opening += 1

    def finish_opening(self, session: Session | None) -> None:
        """The session announced by :meth:`start_opening` opened (None: it failed to)."""
        with self._mutex:
            self._opening -= 1
            if session is not None:
                self._sessions.add(session)
            self._changed.notify_all()

    def forget_session(self, session: Session) -> None:
        """``session`` was closed: drop it, and free the writer slot if it held it."""
        with self._mutex:
            self._sessions.discard(session)
            if self._writer_session is session:
                self._release_writer()
            if not self._sessions and not self._opening and self._phase is Phase.SERVING:
                # No session can write (each closed after its last SQLite call; a new
                # one announces itself under this lock): the WAL the tracker keeps
                # open is closed, so that databases nobody uses hold no descriptor.
                self.tracker.close()
            self._changed.notify_all()

    def is_writer(self, owner: object) -> bool:
        """Whether ``owner`` holds the writer slot (its write transaction is open)."""
        with self._mutex:
            return self._writer is owner

    # ------------------------------------------------------------ readers

    def admit_reader_now(self, owner: object, session: Session) -> bool:
        """:meth:`admit_reader`'s usual case, for a reader that is not the writer: one step.

        Admits the reader if nothing is to be waited for (the database serves
        ``session``, no writer's statement runs, no commit is in flight) and
        ``owner`` does not hold the writer slot (its statements go the write
        path); False, having changed nothing, otherwise.  The caller calls
        :meth:`reader_began` once an admitted reader began (or will not).
        """
        with self._mutex:
            if (
                self._phase is Phase.SERVING
                and self._gate_holder is None
                and not self._in_flight
                and self._writer is not owner
                and session in self._sessions
            ):
                self._starting_readers += 1
                return True
            return False

    def admit_reader(self, session: Session, timeout: float) -> None:
        """Wait until no writer's statement runs and no commit is in flight; admit a reader.

        The WAL then ends with a commit Raft committed: the read transaction
        sees nothing else.  Writers' statements wait while readers do, so a
        stream of pipelined commits cannot starve readers.

        The caller calls :meth:`reader_began` once it has (or will not).

        Raises:
            NotServing: the database stopped serving, or ``session`` was closed.
            Locked: the gate stayed closed for ``timeout``.
        """
        with self._mutex:
            if (
                self._phase is Phase.SERVING
                and self._gate_holder is None
                and not self._in_flight
                and session in self._sessions
            ):
                # The usual case: nothing to wait for, so nobody to tell that this
                # reader stopped waiting (no notify_all on the condition).
                self._starting_readers += 1
                return
            self._waiting_readers += 1
            try:
                admitted = self._changed.wait_for(
                    lambda: self._phase is not Phase.SERVING
                    or (self._gate_holder is None and not self._in_flight),
                    timeout,
                )
            finally:
                self._waiting_readers -= 1
                self._changed.notify_all()
            if self._phase is not Phase.SERVING or session not in self._sessions:
                raise NotServing
            if not admitted:
                raise Locked
            self._starting_readers += 1

    def reader_began(self) -> None:
        """A reader admitted by :meth:`admit_reader` began its read transaction."""
        with self._mutex:
            self._starting_readers -= 1
            # Only a writer waiting for "no reader starting" cares (acquire_writer), and
            # it waits holding the gate.
            if self._starting_readers == 0 and self._gate_holder is not None:
                self._changed.notify_all()

    # ------------------------------------------------------------ the writer

    def acquire_writer(self, owner: object, session: Session, timeout: float) -> None:
        """Take the writer slot (or keep it) and close the gate, within ``timeout``.

        Raises:
            NotServing: the database stopped serving, or ``session`` was closed.
            Locked: another writer kept the slot, or readers did not begin, in time.
        """
        deadline = time.monotonic() + timeout
        with self._mutex:
            turn = self._writer_turn.wait_for(
                lambda: self._phase is not Phase.SERVING or self._writer in (None, owner), timeout
            )
            if self._phase is not Phase.SERVING or session not in self._sessions:
                raise NotServing
            if not turn:
                if self._writer is None:
                    self._writer_turn.notify()  # the wake-up this waiter used passes on
                raise Locked
            self._writer = owner
            self._writer_session = session
            # Readers waiting at the gate go first (they wait for the commits in
            # flight to settle, which needs nothing this writer holds).
            quiet = self._changed.wait_for(
                lambda: self._phase is not Phase.SERVING or self._waiting_readers == 0,
                max(0.0, deadline - time.monotonic()),
            )
            self._gate_holder = owner
            # Readers admitted before the gate closed begin their read transaction
            # first (a step of their statement): after this commit they would see it.
            quiet = quiet and self._changed.wait_for(
                lambda: self._phase is not Phase.SERVING or self._starting_readers == 0,
                max(0.0, deadline - time.monotonic()),
            )
            if self._phase is not Phase.SERVING or not quiet:
                self._gate_holder = None
                if not session.in_transaction:
                    self._release_writer()
                self._changed.notify_all()
                if self._phase is not Phase.SERVING:
                    raise NotServing
                raise Locked

    def end_write(self, owner: object, session: Session) -> None:
        """``owner``'s statement ended: open the gate; free the slot if its transaction ended."""
        with self._mutex:
            if self._gate_holder is owner:
                self._gate_holder = None
            if self._writer is owner and not session.in_transaction:
                self._release_writer()
            self._changed.notify_all()

    # ------------------------------------------------------------ fence and rebuild

    def fence(self) -> list[Session] | None:
        """SERVING → FENCED: return the sessions to interrupt (None: fenced already)."""
        with self._mutex:
            if self._phase is not Phase.SERVING:
                return None  # fenced or being rebuilt already: that rebuild covers it
            self._set_phase(Phase.FENCED)
            # Commits submitted before now may be lost: none may be built on
            # (link), or counted as in the WAL (commit_own) any more.
            self._new_epoch()
            return list(self._sessions)

    def _new_epoch(self) -> None:
        """Positions and the chain of earlier commits stop counting (``_mutex`` held)."""
        with self._position_lock:
            self._epoch += 1
            self._tail = None

    def may_hold_uncommitted(self) -> bool:
        """Whether a deposed leader must rebuild the files (sessions, WAL frames, a fence)."""
        with self._mutex:
            with self._position_lock:
                chained = self._tail is not None
            # A chain of this leader's commits must not outlive its leadership:
            # the next leader's commits do not build on it.
            return (
                bool(self._sessions)
                or bool(self.tracker.frames)
                or chained
                or (self._phase is not Phase.SERVING)
            )

    @contextlib.contextmanager
    def restoring(self) -> Iterator[Committed]:
        """The RESTORING phase, on the applier's thread: rewrite the files in the block.

        Closes every session first (no commit can be captured any more), starts
        a new epoch and yields where the committed state ends, with
        ``file_lock`` held; serves again once the block succeeded.  If it
        raised, the database stays RESTORING until a retry succeeds, and the
        committed position stays as it was: the files may be half rewritten
        (a checkpoint that failed part-way), but the WAL still holds every
        committed frame, and the retry must be told where they end, or it
        would cut them.
        """
        with self._mutex:
            if self._phase is not Phase.RESTORING:
                self._set_phase(Phase.RESTORING)
            # Sessions being opened are file I/O away from registering.
            self._changed.wait_for(lambda: self._opening == 0)
            sessions = list(self._sessions)
            self._sessions.clear()
            self._writer = self._writer_session = None
            self._gate_holder = None
            # The rebuild cuts their frames from the WAL: readers need not wait for them.
            self._in_flight.clear()
            self._changed.notify_all()
        for session in sessions:
            session.interrupt()
            session.close()  # waits for the SQLite call in progress, if any
        # Positions of earlier epochs no longer point into the WAL (commit_own checks).
        with self._mutex:
            self._new_epoch()
        with self.file_lock:
            # Read under file_lock, as a DUMP (which holds it) reads it; cleared only once
            # the block succeeded (below): a retry after a failure needs it whole.
            with self._position_lock:
                committed = self._committed
            yield committed
            # Only now is the committed state in the database file alone.
            with self._position_lock:
                self._committed = (None, 0)
            old, self.tracker = self.tracker, WalTracker(self.tracker.path)
            old.close()
        with self._mutex:
            self._set_phase(Phase.SERVING)

    # ------------------------------------------------------------ commits in flight

    def link(self, origin: Origin, position: Position) -> Origin | None:
        """The writer submits commit ``origin`` (ending at ``position``): what it builds on.

        Returns the commit submitted before it in this epoch, whose frames
        precede it in the WAL (None: it builds on the last commit Raft
        applied).  Called with the writer slot held, in WAL order, right
        before the submission; ``origin`` counts as in flight until
        :meth:`settled`.

        Raises:
            NotServing: the epoch changed since the commit was captured (a
                fence or rebuild): its frames may sit on a lost commit.
        """
        with self._mutex:
            with self._position_lock:
                if position[0] != self._epoch:
                    raise NotServing
                previous, self._tail = self._tail, origin
            self._in_flight.add(origin)
        return previous

    def settled(self, origin: Origin) -> None:
        """The writer of ``origin`` learned its outcome (and fenced on a failure)."""
        with self._mutex:
            self._in_flight.discard(origin)
            self._changed.notify_all()

    def await_settled(self, timeout: float) -> bool:
        """Wait until the commits in flight now have settled; False if one failed.

        A failed commit fences the database (a new epoch) before it settles;
        False too if that did not happen within ``timeout``.
        """
        with self._mutex:
            pending = set(self._in_flight)
            if not pending:
                return self._phase is Phase.SERVING
            with self._position_lock:
                epoch = self._epoch
            settled = self._changed.wait_for(lambda: not pending & self._in_flight, timeout)
            with self._position_lock:
                unchanged = self._epoch == epoch
            return settled and unchanged and self._phase is Phase.SERVING

    # ------------------------------------------------------------ positions

    def position(self) -> Position:
        """Where the WAL ends now, in this epoch (the WAL hook, after reading a commit)."""
        with self._position_lock:
            return (self._epoch, self.tracker.salts, self.tracker.frames)

    def commit_own(self, position: Position) -> bool:
        """Raft committed this node's commit ending at ``position``: record it as committed.

        False if the files were rebuilt since (the WAL no longer holds it).
        """
        epoch, salts, frames = position
        with self._position_lock:
            if self._epoch != epoch:
                return False
            self._committed = (salts, frames)
            return True

    def committed(self) -> Committed:
        """Where the WAL's committed state ends."""
        with self._position_lock:
            return self._committed


class Databases:
    """The databases of one node, each created on first use (a leaf lock guards the map)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._map: dict[str, Database] = {}

    def get(self, name: str) -> Database:
        """Database ``name``'s state."""
        with self._lock:
            db = self._map.get(name)
            if db is None:
                path = self._engine.path(name)
                db = self._map[name] = Database(name, path.with_name(path.name + "-wal"))
            return db

    def all(self) -> list[Database]:
        """Every database so far, by name."""
        with self._lock:
            return sorted(self._map.values(), key=lambda d: d.name)

    def names(self) -> set[str]:
        """The names of every database so far."""
        with self._lock:
            return set(self._map)
