"""``Session.query_first``: the read fast path's start of a query and its first batch,
in one hold of the session (``docs/server.md``, "The read fast path").

Real SQLite sessions of an :class:`Engine` in a temporary directory; the filler is a
small batch taker standing in for the server's ROWS encoder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from dqlitepy.engine import Engine, EngineError, Session, SessionClosed


class _Taker:
    """Takes up to ``batch`` rows a fill, as the ROWS encoder takes a batch."""

    def __init__(self, columns: tuple[str, ...], decltypes: tuple[str | None, ...], batch: int):
        self.columns, self.decltypes, self.batch = columns, decltypes, batch
        self.rows: list[tuple[Any, ...]] = []

    def fill(self, rows: Iterator[tuple[Any, ...]]) -> bool:
        for _ in range(self.batch):
            row = next(rows, None)
            if row is None:
                return True
            self.rows.append(row)
        return False


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = Engine(tmp_path / "databases")
    s = engine.session("app")
    for sql in (
        "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)",
        "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    ):
        s.execute(s.statement(sql))
    try:
        yield s
    finally:
        s.close()


def _reading(session: Session) -> bool:
    """Whether a statement still holds a read transaction (a result not finished)."""
    return bool(session._db.txn_state("main") != apsw.SQLITE_TXN_NONE)


def _taking(batch: int) -> Any:
    return lambda columns, decltypes: _Taker(columns, decltypes, batch)


def test_a_result_that_fits_one_batch_is_done(session: Session) -> None:
    info = session.statement("SELECT v FROM t WHERE k >= ?")
    result, taker, done = session.query_first(info, (2,), _taking(10))
    assert done and taker.rows == [("b",), ("c",)]
    assert (taker.columns, taker.decltypes) == (("v",), ("TEXT",))
    assert (result.columns, result.decltypes) == (("v",), ("TEXT",))
    # Nothing is left holding a read transaction (a checkpoint can fold the whole WAL).
    assert not _reading(session)
    other = session.statement("SELECT count(*) FROM t")
    assert session.query_first(other, (), _taking(10))[1].rows == [(3,)]


def test_a_longer_result_goes_on_with_feed(session: Session) -> None:
    info = session.statement("SELECT k FROM t ORDER BY k")
    result, taker, done = session.query_first(info, (), _taking(2))
    assert not done and taker.rows == [(1,), (2,)]
    assert _reading(session)
    assert result.feed(taker.fill)
    assert taker.rows == [(1,), (2,), (3,)]
    result.close()


def test_a_failure_while_stepping_is_translated(session: Session) -> None:
    info = session.statement("SELECT CAST(v AS TEXT) FROM t")
    session.execute(session.statement("INSERT INTO t VALUES (4, CAST(x'ff' AS TEXT))"))
    with pytest.raises(EngineError, match="not valid UTF-8"):
        session.query_first(info, (), _taking(10))
    assert not _reading(session)
    assert session.query_first(info, (), _taking(1))[1].rows == [("a",)]


def test_a_closed_session_refuses(session: Session) -> None:
    info = session.statement("SELECT 1")
    session.close()
    with pytest.raises(SessionClosed):
        session.query_first(info, (), _taking(1))
