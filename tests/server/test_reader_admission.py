"""``Database.admit_reader_now``: the read fast path's gate and writer-slot check in one step.

It admits a reader only when :meth:`Database.admit_reader` would admit it without
waiting and the reader does not hold the writer slot; otherwise it changes nothing
and the caller takes the waiting way (``Leader.begin_read``).  Real SQLite sessions
of an :class:`Engine` in a temporary directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dqlitepy.engine import Engine, Session
from dqlitepy.server.database import Database


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(tmp_path / "databases")


def _session(engine: Engine, db: Database) -> Session:
    db.start_opening(1.0)
    session = engine.session("app")
    db.finish_opening(session)
    return session


@pytest.fixture
def db(engine: Engine) -> Iterator[Database]:
    path = engine.path("app")
    yield Database("app", path.with_name(path.name + "-wal"))


def _starting(db: Database) -> int:
    return db._starting_readers


def test_a_reader_is_admitted_at_once_when_nothing_is_to_be_waited_for(
    engine: Engine, db: Database
) -> None:
    session = _session(engine, db)
    assert db.admit_reader_now(object(), session)
    assert _starting(db) == 1
    db.reader_began()
    assert _starting(db) == 0
    session.close()


def test_the_writer_a_commit_in_flight_and_a_stranger_session_are_refused(
    engine: Engine, db: Database
) -> None:
    reader, writer = object(), object()
    session, writing = _session(engine, db), _session(engine, db)
    # The writer's transaction stays open after its statement: it keeps the slot.
    db.acquire_writer(writer, writing, 1.0)
    for sql in ("BEGIN", "CREATE TABLE t (x)"):
        writing.execute(writing.statement(sql))
    db.end_write(writer, writing)
    assert writing.in_transaction
    assert not db.admit_reader_now(writer, writing), "the writer's statements go the write path"
    assert db.admit_reader_now(reader, session), "others read beside an open transaction"
    db.reader_began()
    # While the writer's statement runs the gate is closed.
    db.acquire_writer(writer, writing, 1.0)
    assert not db.admit_reader_now(reader, session)
    writing.execute(writing.statement("COMMIT"))
    db.end_write(writer, writing)
    # A commit in flight (submitted, not settled) keeps readers out as well.
    origin = (1, 1)
    db.link(origin, db.position())
    assert not db.admit_reader_now(reader, session)
    db.settled(origin)
    assert db.admit_reader_now(reader, session)
    db.reader_began()
    # A session the database does not know (closed by a rebuild) is refused.
    stranger = engine.session("app")
    assert not db.admit_reader_now(reader, stranger)
    assert _starting(db) == 0, "a refusal changed nothing"
    for s in (session, writing, stranger):
        s.close()


def test_a_database_that_does_not_serve_admits_no_reader(engine: Engine, db: Database) -> None:
    session = _session(engine, db)
    db.fence()
    assert not db.admit_reader_now(object(), session)
    assert _starting(db) == 0
    session.close()
