"""Group commit on the leader's write path, with a Raft whose commits the test releases.

While one commit is in flight through Raft, the next writer of the same
database runs and its commit follows, built on the first (``after``).  The
rules still hold: a client is answered only once Raft committed its commit; a
read never begins while a commit is in flight; a failed commit makes every
commit built on it fail too, and every one of their clients hears so; a writer
that waits too long in the queue hears ``database is locked`` and changes
nothing.  The node here is real (engine, state machine, applier, WAL capture);
only Raft is replaced, by one that holds submitted commands until told.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from waiting import wait_until

from dqlitepy.engine import Engine
from dqlitepy.replication.replicator import LeadershipLost, NotLeader
from dqlitepy.server import fsm as fsm_module
from dqlitepy.server.gateway import GatewayFailure
from dqlitepy.server.replicated import Replicated
from dqlitepy.wire import ErrorCode


class _Pending:
    """A submitted command's outcome, set when the test releases or fails it."""

    def __init__(self, command: bytes, decoded: object = None) -> None:
        self.command = command
        self.decoded = decoded
        self._done = threading.Event()
        self._result: Any = None
        self._failure: Exception | None = None

    def finish(self, result: Any, failure: Exception | None = None) -> None:
        self._result, self._failure = result, failure
        self._done.set()

    def result(self, timeout: float) -> Any:
        if not self._done.wait(timeout):
            raise LeadershipLost("no outcome in time")
        if self._failure is not None:
            raise self._failure
        return self._result


class _HeldRaft:
    """Leads alone; appends submitted commands to a queue the test commits or fails."""

    def __init__(
        self, apply: Callable[[int, bytes, object], Any], leadership: Callable[[bool], None]
    ):
        self._apply = apply
        self._leadership = leadership
        self._lock = threading.Lock()
        self.index = 1
        self.barrier = 1
        self.elected = True
        self.queue: list[_Pending] = []
        self.log: list[bytes] = []

    def start(self) -> None:
        self._apply(1, b"", None)  # this leader's no-op: its barrier

    def close(self) -> None:
        pass

    def is_leader(self) -> bool:
        return self.elected

    def is_elected(self) -> bool:
        return self.elected

    def barrier_index(self) -> int:
        return self.barrier

    def read_barrier(self, timeout: float) -> int:
        if not self.elected:
            raise NotLeader("not leader")
        return self.index

    def check_storage(self) -> None:
        pass

    def submit_async(self, command: bytes, decoded: object = None) -> _Pending:
        pending = _Pending(command, decoded)
        with self._lock:
            if not self.elected:
                pending.finish(None, NotLeader("not leader"))
            else:
                self.queue.append(pending)
        return pending

    def submit(self, command: bytes, timeout: float) -> Any:
        pending = self.submit_async(command)
        self.commit(len(self.queue))
        return pending.result(timeout)

    def queued(self) -> int:
        with self._lock:
            return len(self.queue)

    def commit(self, count: int) -> None:
        """Commit and apply the first ``count`` queued commands, in order."""
        with self._lock:
            taken, self.queue = self.queue[:count], self.queue[count:]
        for pending in taken:
            self.index += 1
            self.log.append(pending.command)
            pending.finish(self._apply(self.index, pending.command, pending.decoded))

    def drop(self, count: int, failure: Exception) -> None:
        """The first ``count`` queued commands never make it into a committed log."""
        with self._lock:
            taken, self.queue = self.queue[:count], self.queue[count:]
        for pending in taken:
            pending.finish(None, failure)

    def depose(self) -> None:
        """Another node was elected: every command still queued is lost to this node."""
        self.elected = False
        self._leadership(False)
        self.drop(len(self.queue), LeadershipLost("leadership lost"))

    def elect(self) -> None:
        """Elected again: the new term's no-op entry."""
        self.elected = True
        self._leadership(True)
        self.index += 1
        self.barrier = self.index
        self._apply(self.index, b"", None)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Replicated, _HeldRaft]]:
    rafts: list[_HeldRaft] = []

    def factory(apply: Any, leadership: Any) -> Any:
        rafts.append(_HeldRaft(apply, leadership))
        return rafts[-1]

    state = Replicated(Engine(tmp_path / "databases"), factory, node_id=1)
    state.start()
    try:
        yield state, rafts[0]
    finally:
        state.close()


def _run(node: Replicated, sql: str, timeout: float = 5.0) -> list[tuple[Any, ...]]:
    session = node.open_session("app")
    try:
        info = session.statement(sql)
        with node.execution(object(), "app", session, info, timeout):
            if info.column_count:
                return [tuple(row) for row in session.query(info)]
            session.execute(info)
            return []
    finally:
        node.close_session("app", session)


class _Client(threading.Thread):
    """Runs one statement on its own thread; keeps the rows or the failure."""

    def __init__(self, node: Replicated, sql: str, timeout: float = 5.0) -> None:
        super().__init__(daemon=True)
        self._node, self._sql, self._timeout = node, sql, timeout
        self.rows: list[tuple[Any, ...]] | None = None
        self.failure: GatewayFailure | None = None

    def run(self) -> None:
        try:
            self.rows = _run(self._node, self._sql, self._timeout)
        except GatewayFailure as exc:
            self.failure = exc

    def outcome(self) -> str:
        self.join(10)
        assert not self.is_alive()
        if self.failure is not None:
            return self.failure.message
        return "ok"


def _ids(node: Replicated) -> list[int]:
    assert node.wait_idle(10)
    conn = sqlite3.connect(node.engine.path("app"))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return [row[0] for row in conn.execute("SELECT id FROM t ORDER BY id")]
    finally:
        conn.close()


def _start_writers(node: Replicated, raft: _HeldRaft, ids: range) -> list[_Client]:
    """One writer per id, each started once the one before has its commit in flight."""
    writers = []
    for number, row in enumerate(ids, start=raft.queued() + 1):
        writer = _Client(node, f"INSERT INTO t VALUES ({row})")
        writer.start()
        # It ran and submitted although every commit before it is still in flight.
        wait_until(lambda number=number: raft.queued() == number, f"commit {row}", 5)
        writers.append(writer)
    return writers


@pytest.fixture
def table(node: tuple[Replicated, _HeldRaft]) -> tuple[Replicated, _HeldRaft]:
    state, raft = node
    creating = _Client(state, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    creating.start()
    wait_until(lambda: raft.queued() == 1, "the CREATE TABLE's commit", 5)
    raft.commit(1)
    assert creating.outcome() == "ok"
    return state, raft


def test_writers_run_while_earlier_commits_are_in_flight(
    table: tuple[Replicated, _HeldRaft],
) -> None:
    state, raft = table
    writers = _start_writers(state, raft, range(1, 5))
    # Nobody is answered before Raft committed its commit.
    assert all(w.is_alive() for w in writers)
    commands = [cbor2.loads(p.command) for p in raft.queue]
    # Each commit names the one it was built on (the first: the CREATE TABLE's).
    assert commands[0]["after"] == cbor2.loads(raft.log[-1])["origin"]
    for before, after in itertools.pairwise(commands):
        assert after["after"] == before["origin"]
        assert after["v"] == 2
    raft.commit(2)
    assert [w.outcome() for w in writers[:2]] == ["ok", "ok"]
    assert all(w.is_alive() for w in writers[2:])
    raft.commit(2)
    assert [w.outcome() for w in writers] == ["ok"] * 4
    assert _ids(state) == [1, 2, 3, 4]


def test_no_read_begins_while_a_commit_is_in_flight(table: tuple[Replicated, _HeldRaft]) -> None:
    state, raft = table
    writers = _start_writers(state, raft, range(1, 3))
    reader = _Client(state, "SELECT count(*) FROM t")
    reader.start()
    # The reader would see both commits' frames: it waits for Raft.
    reader.join(0.5)
    assert reader.is_alive()
    # A writer arriving now waits behind the reader instead of starving it.
    late = _Client(state, "INSERT INTO t VALUES (3)")
    late.start()
    late.join(0.3)
    assert raft.queued() == 2
    raft.commit(2)
    assert reader.outcome() == "ok"
    assert reader.rows == [(2,)]
    wait_until(lambda: raft.queued() == 1, "the late writer's commit", 5)
    raft.commit(1)
    assert [w.outcome() for w in [*writers, late]] == ["ok"] * 3
    assert _ids(state) == [1, 2, 3]


def test_a_query_that_reads_no_page_does_not_wait_for_commits_in_flight(
    table: tuple[Replicated, _HeldRaft],
) -> None:
    state, raft = table
    [writer] = _start_writers(state, raft, range(1, 2))
    # What a driver asks after INSERT ... RETURNING: the session's own state.
    assert _run(state, "SELECT last_insert_rowid()", timeout=0.5) == [(0,)]
    # sqlite3's default mode begins each transaction so; the write waits its turn.
    assert _run(state, "BEGIN", timeout=0.5) == []
    # The same probe on a statement that reads the table does wait.
    with pytest.raises(GatewayFailure, match="database is locked"):
        _run(state, "SELECT count(*) FROM t", timeout=0.5)
    raft.commit(1)
    assert writer.outcome() == "ok"


def test_a_reader_that_waits_too_long_for_a_commit_hears_database_is_locked(
    table: tuple[Replicated, _HeldRaft],
) -> None:
    state, raft = table
    [writer] = _start_writers(state, raft, range(1, 2))
    reader = _Client(state, "SELECT count(*) FROM t", timeout=0.3)
    reader.start()
    assert reader.outcome() == "database is locked"
    raft.commit(1)
    assert writer.outcome() == "ok"
    assert _run(state, "SELECT count(*) FROM t") == [(1,)]


def test_a_failed_commit_fails_every_commit_built_on_it(
    table: tuple[Replicated, _HeldRaft],
) -> None:
    state, raft = table
    [first] = _start_writers(state, raft, range(1, 2))
    raft.commit(1)
    assert first.outcome() == "ok"
    writers = _start_writers(state, raft, range(2, 6))
    # The batch fails in its middle: commit 3 never makes it into the log,
    # commits 4 and 5 (built on it) do, and every node skips them.
    raft.commit(1)
    raft.drop(1, LeadershipLost("leadership lost"))
    raft.commit(2)
    assert [w.outcome() for w in writers] == ["ok"] + ["leadership lost"] * 3
    # In the log, commit 4 names commit 3, which is not there.
    two, four = cbor2.loads(raft.log[-3]), cbor2.loads(raft.log[-2])
    assert four["after"] != two["origin"]
    # The files were cut back to the last commit Raft committed; writes go on.
    assert _ids(state) == [1, 2]
    _start_writers(state, raft, range(6, 7))
    raft.commit(1)
    assert _ids(state) == [1, 2, 6]


def test_own_commits_are_applied_without_decoding_and_failed_ones_are_forgotten(
    table: tuple[Replicated, _HeldRaft], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Raft applies this node's own entries as the objects it submitted (HardenedSyncObj
    # does, as _HeldRaft does): the state machine knows what they decode to.
    state, raft = table
    decoded: list[bytes] = []
    real_decode = fsm_module.decode

    def counting(command: bytes) -> Any:
        decoded.append(command)
        return real_decode(command)

    monkeypatch.setattr(fsm_module, "decode", counting)
    writers = _start_writers(state, raft, range(1, 6))
    raft.commit(2)
    raft.drop(1, LeadershipLost("leadership lost"))
    raft.commit(2)  # built on the dropped one: skipped
    assert [w.outcome() for w in writers] == ["ok", "ok"] + ["leadership lost"] * 3
    assert decoded == []
    assert state.fsm._own == {}  # nothing kept for the failed commits
    assert _ids(state) == [1, 2]
    # Entries that are not the submitted objects (another node's, or read back
    # from the log) are decoded, as before.
    monkeypatch.setattr(raft, "submit_async", _copying(raft.submit_async))
    [copied] = _start_writers(state, raft, range(7, 8))
    raft.commit(1)
    assert copied.outcome() == "ok" and len(decoded) == 1
    assert _ids(state) == [1, 2, 7]


def test_the_wal_is_kept_open_while_sessions_are(table: tuple[Replicated, _HeldRaft]) -> None:
    # The leader reads each commit's frames from a WAL it keeps open, but a database
    # without sessions holds no descriptor (a client may name endless databases).
    state, raft = table
    tracker = state.databases.get("app").tracker
    assert tracker._fd == -1  # the CREATE TABLE's session is closed
    session = state.open_session("app")
    try:
        writer = _Client(state, "INSERT INTO t VALUES (1)")
        writer.start()
        wait_until(lambda: raft.queued() == 1, "the INSERT's commit", 5)
        raft.commit(1)
        assert writer.outcome() == "ok"
        assert state.databases.get("app").tracker._fd >= 0  # one session still open
    finally:
        state.close_session("app", session)
    assert state.databases.get("app").tracker._fd == -1
    [again] = _start_writers(state, raft, range(2, 3))
    raft.commit(1)
    assert again.outcome() == "ok" and _ids(state) == [1, 2]


def _copying(submit_async: Callable[[bytes], Any]) -> Callable[[bytes, object], Any]:
    # What another node (or a log read back) holds: the bytes, not what they decode to.
    return lambda command, decoded: submit_async(bytes(bytearray(command)))


def test_leadership_lost_with_a_full_queue_answers_every_writer(
    table: tuple[Replicated, _HeldRaft],
) -> None:
    state, raft = table
    writers = _start_writers(state, raft, range(1, 9))
    raft.commit(3)
    raft.depose()
    outcomes = [w.outcome() for w in writers]
    assert outcomes == ["ok"] * 3 + ["leadership lost"] * 5
    # Deposed: nobody is served, and nothing is left of the lost commits.
    with pytest.raises(GatewayFailure) as refused:
        _run(state, "SELECT count(*) FROM t", timeout=0.5)
    assert refused.value.code == ErrorCode.NOT_LEADER
    raft.elect()
    assert _ids(state) == [1, 2, 3]
    # A new term starts a new chain: its first commit builds on the log's index.
    [again] = _start_writers(state, raft, range(9, 10))
    assert "after" not in cbor2.loads(raft.queue[0].command)
    raft.commit(1)
    assert again.outcome() == "ok"
    assert _ids(state) == [1, 2, 3, 9]


def test_a_writer_whose_timeout_expires_in_the_queue_changes_nothing(
    table: tuple[Replicated, _HeldRaft],
) -> None:
    state, raft = table
    holder = object()
    session = state.open_session("app")
    try:
        # An open write transaction keeps the writer slot between statements.
        for sql in ("BEGIN IMMEDIATE", "INSERT INTO t VALUES (1)"):
            info = session.statement(sql)
            with state.execution(holder, "app", session, info, 5.0):
                session.execute(info, ())
        queued = _Client(state, "INSERT INTO t VALUES (2)", timeout=0.3)
        queued.start()
        assert queued.outcome() == "database is locked"
        assert queued.failure is not None
        assert queued.failure.code == ErrorCode.SQLITE_BUSY
        committing = threading.Thread(
            target=lambda: _execute(state, holder, session, "COMMIT"), daemon=True
        )
        committing.start()
        wait_until(lambda: raft.queued() == 1, "the COMMIT's commit", 5)
        raft.commit(1)
        committing.join(10)
    finally:
        state.close_session("app", session)
    assert _ids(state) == [1]


def _execute(node: Replicated, owner: object, session: Any, sql: str) -> None:
    info = session.statement(sql)
    with node.execution(owner, "app", session, info, 5.0):
        session.execute(info, ())


def test_a_follower_writes_a_stream_of_commits_in_batches(
    table: tuple[Replicated, _HeldRaft], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader, raft = table
    writers = _start_writers(leader, raft, range(1, 51))
    raft.commit(50)
    assert [w.outcome() for w in writers] == ["ok"] * 50
    follower_rafts: list[_HeldRaft] = []

    def factory(apply: Any, leadership: Any) -> Any:
        follower_rafts.append(_HeldRaft(apply, leadership))
        return follower_rafts[-1]

    follower = Replicated(Engine(tmp_path / "follower"), factory, node_id=2)
    rebuilds: list[str] = []
    restore = follower.engine.restore_committed

    def counted(name: str, *args: Any) -> None:
        rebuilds.append(name)
        restore(name, *args)

    monkeypatch.setattr(follower.engine, "restore_committed", counted)
    follower.start()
    try:
        db = follower.databases.get("app")
        # The applier stalls on the file while the whole log is applied.
        with db.file_lock:
            for index, command in enumerate(raft.log, start=2):
                follower.fsm.apply(index, command)
            wait_until(lambda: len(rebuilds) == 0 and not follower.wait_idle(0), "a backlog")
        assert follower.wait_idle(10)
        # 51 commits (the CREATE TABLE and 50 rows), written by far fewer rebuilds.
        assert 1 <= len(rebuilds) <= 3, rebuilds
        conn = sqlite3.connect(follower.engine.path("app"))
        try:
            rows = [row[0] for row in conn.execute("SELECT id FROM t ORDER BY id")]
        finally:
            conn.close()
        assert rows == list(range(1, 51))
        assert _ids(leader) == rows
    finally:
        follower.close()


def test_a_write_the_fence_interrupts_reports_leadership_lost(
    table: tuple[Replicated, _HeldRaft],
) -> None:
    # The files are fenced (a deposed leader's commits, a disk error) while a write
    # statement runs: the statement is interrupted with its session. The client did not
    # ask for that, so "interrupted" would mislead it; it hears "leadership lost", as for
    # any write cut off by the end of a leadership, and nothing of it stays.
    state, raft = table
    db = state.databases.get("app")
    writer = _Client(
        state,
        "WITH RECURSIVE c(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM c WHERE i < 50000000) "
        "INSERT INTO t SELECT i FROM c",
        timeout=30,
    )
    writer.start()
    wait_until(lambda: db._gate_holder is not None, "the write statement to run", 5)
    state.fsm.fence(db)
    assert writer.outcome() == "leadership lost"
    assert writer.failure is not None and writer.failure.code == ErrorCode.LEADERSHIP_LOST
    assert raft.queued() == 0
    assert _ids(state) == []
