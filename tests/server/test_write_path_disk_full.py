"""The leader's write path when a write cannot be stored (docs/replication.md, "Disk full").

A real node state (:class:`Replicated` on an engine in a temporary directory) leads with a
stand-in for Raft that commits at once, or fails the way the replication layer does when
this node's Raft log cannot be written.  What is checked: the client's answer, that the
commit is cut back out of the files, and that the log's storage is probed.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pysyncobj.config import FAIL_REASON
from small_fs import fill, needs_root, small_filesystem

from dqlitepy.engine import Engine, EngineError
from dqlitepy.replication.journal import JournalWriteError
from dqlitepy.replication.raft import STORAGE_FAILED
from dqlitepy.replication.replicator import LeadershipLost, Replicator, StorageError
from dqlitepy.server.gateway import GatewayFailure
from dqlitepy.server.replicated import Replicated


class _Raft:
    """Leads alone, commits what is submitted at once (unless told to fail), counts probes."""

    def __init__(self, apply: Callable[[int, bytes, object], Any]) -> None:
        self._apply = apply
        self.index = 1
        self.fail: Exception | None = None
        self.probes = 0

    def start(self) -> None:
        self._apply(1, b"", None)  # this leader's no-op: its barrier

    def close(self) -> None:
        pass

    def is_leader(self) -> bool:
        return True

    def is_elected(self) -> bool:
        return True

    def barrier_index(self) -> int:
        return 1

    def read_barrier(self, timeout: float) -> int:
        return self.index

    def submit(self, command: bytes, timeout: float) -> Any:
        if self.fail is not None:
            raise self.fail
        self.index += 1
        return self._apply(self.index, command, None)

    def submit_async(self, command: bytes, decoded: object = None) -> _Done:
        try:
            return _Done(self.submit(command, 0.0), None)
        except Exception as exc:
            return _Done(None, exc)

    def check_storage(self) -> None:
        self.probes += 1


class _Done:
    """A submission whose outcome is known at once (as a PendingCommand's)."""

    def __init__(self, result: Any, failure: Exception | None) -> None:
        self._result, self._failure = result, failure

    def result(self, timeout: float) -> Any:
        if self._failure is not None:
            raise self._failure
        return self._result


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Replicated, _Raft]]:
    rafts: list[_Raft] = []

    def factory(apply: Any, on_leadership: Any) -> Any:
        rafts.append(_Raft(apply))
        return rafts[-1]

    state = Replicated(Engine(tmp_path / "databases"), factory, node_id=1)
    state.start()
    try:
        yield state, rafts[0]
    finally:
        state.close()


def _run(node: Replicated, sql: str, params: tuple[Any, ...] = ()) -> None:
    session = node.open_session("app")
    try:
        info = session.statement(sql)
        with node.execution(object(), "app", session, info, 5.0):
            session.execute(info, params)
    finally:
        node.close_session("app", session)


def _ids(node: Replicated) -> list[int]:
    assert node.wait_idle(10)
    conn = sqlite3.connect(node.engine.path("app"))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return [row[0] for row in conn.execute("SELECT id FROM t ORDER BY id")]
    finally:
        conn.close()


@pytest.mark.parametrize(("full", "code"), [(True, 13), (False, 10)])
def test_a_commit_the_raft_log_could_not_store_is_answered_not_stored(
    node: tuple[Replicated, _Raft], full: bool, code: int
) -> None:
    state, raft = node
    _run(state, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    _run(state, "INSERT INTO t VALUES (1)")
    raft.fail = StorageError("the Raft log cannot be written", full=full)
    with pytest.raises(GatewayFailure) as failed:
        _run(state, "INSERT INTO t VALUES (2)")
    assert failed.value.code == code
    assert failed.value.message == ("database or disk is full" if full else "disk I/O error")
    # The commit was cut back out of the WAL: row 2 never happened.
    assert _ids(state) == [1]
    raft.fail = None
    _run(state, "INSERT INTO t VALUES (3)")
    assert _ids(state) == [1, 3]


def test_sqlite_full_is_answered_as_it_is_and_the_files_are_rebuilt(
    node: tuple[Replicated, _Raft],
) -> None:
    state, raft = node
    _run(state, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    _run(state, "INSERT INTO t VALUES (1, zeroblob(100))")
    session = state.open_session("app")
    try:
        # SQLite's own "database or disk is full", without filling a disk.
        session._db.execute("PRAGMA max_page_count=4")
        info = session.statement("INSERT INTO t VALUES (2, zeroblob(100000))")
        with (
            pytest.raises(EngineError) as failed,
            state.execution(object(), "app", session, info, 5.0),
        ):
            session.execute(info)
    finally:
        state.close_session("app", session)
    assert failed.value.code == 13
    assert str(failed.value) == "database or disk is full"
    assert raft.probes == 1  # Raft's thread was asked to probe the log's storage
    assert _ids(state) == [1]
    _run(state, "INSERT INTO t VALUES (3, NULL)")
    assert _ids(state) == [1, 3]


@needs_root
def test_a_full_disk_is_reported_as_sqlite_full_even_where_sqlite_says_io_error() -> None:
    # SQLite turns the ENOSPC of a WAL index that cannot grow into SQLITE_IOERR_SHMSIZE.
    with small_filesystem(2) as disk:
        engine = Engine(disk / "databases")
        session = engine.session("app")
        session.execute(session.statement("CREATE TABLE t (x)"))
        session.close()  # the last connection: SQLite folds the WAL and drops the index
        (disk / "databases" / (engine.path("app").name + "-shm")).unlink(missing_ok=True)
        fill(disk)
        with pytest.raises(EngineError) as failed:
            session = engine.session("app")
            try:
                session.query(session.statement("SELECT * FROM t")).close()
            finally:
                session.close()
        assert (failed.value.code, str(failed.value)) == (13, "database or disk is full")


@pytest.mark.parametrize(
    ("reason", "stored", "raised"),
    [
        (STORAGE_FAILED, False, StorageError),
        (FAIL_REASON.UNKNOWN_OUTCOME, None, LeadershipLost),
    ],
)
def test_the_replicator_says_whether_the_log_stored_the_entry(
    tmp_path: Path, reason: int, stored: bool | None, raised: type[Exception]
) -> None:
    replicator = Replicator(
        "127.0.0.1:1", tmp_path, [], node_id=1, cluster_key=b"k" * 32, apply=lambda i, c, d: None
    )
    failure = JournalWriteError("no room", OSError(errno.ENOSPC, "full"), stored=stored)
    replicator._core = SimpleNamespace(  # type: ignore[assignment]
        submit_tracked=lambda command, decoded: SimpleNamespace(
            wait=lambda timeout: (failure, reason)
        )
    )
    with pytest.raises(raised) as failed:
        replicator.submit(b"x", 1.0)
    if isinstance(failed.value, StorageError):
        assert failed.value.full
