"""A rebuild of a database's files that fails part-way can be retried without losing commits.

A rebuild cuts the WAL back to the last committed frame and folds it into the database file
(``Database.restoring`` and ``Engine.restore_committed``).  If the fold fails (a full disk),
the retry must still be told where the committed frames end, and folding again over a file
that a failed checkpoint already half rewrote must give the committed state.
"""

from __future__ import annotations

import struct
from pathlib import Path

import apsw
import pytest

from dqlitepy.engine import Engine
from dqlitepy.server.database import Database


def test_a_failed_rebuild_keeps_the_committed_position(tmp_path: Path) -> None:
    db = Database("app", tmp_path / "app-wal")
    epoch = db.position()[0]
    assert db.commit_own((epoch, (11, 22), 7))
    for _ in range(2):  # the first attempt and a retry both fail
        with pytest.raises(OSError), db.restoring() as committed:
            assert committed == ((11, 22), 7)
            raise OSError(28, "No space left on device")
        assert db.committed() == ((11, 22), 7)
    with db.restoring() as committed:
        assert committed == ((11, 22), 7)
    # Rebuilt: the database file alone holds the committed state.
    assert db.committed() == (None, 0)


def _rows(path: Path) -> list[tuple[object, ...]]:
    conn = apsw.Connection(str(path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return conn.execute("SELECT id, x FROM b ORDER BY id").fetchall()
    finally:
        conn.close()


def test_folding_again_after_a_partial_checkpoint_gives_the_committed_state(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live.db"
    conn = apsw.Connection(str(live))
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, x BLOB)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.execute("INSERT INTO b VALUES (0, randomblob(5000))")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # a file with a few pages
    for i in range(1, 20):  # commits only in the WAL: the file must grow to hold them
        conn.execute("INSERT INTO b VALUES (?, randomblob(20000))", (i,))
    before = live.read_bytes()
    wal = Path(str(live) + "-wal").read_bytes()
    conn.close()
    page_size = struct.unpack(">I", wal[8:12])[0]
    salts = struct.unpack(">II", wal[16:24])
    frames = (len(wal) - 32) // (24 + page_size)

    def engine_with(name: str, main: bytes) -> tuple[Engine, Path]:
        engine = Engine(tmp_path / name, checkpoint_on_close=False)
        path = engine.path("app")
        path.write_bytes(main)
        Path(str(path) + "-wal").write_bytes(wal)
        return engine, path

    engine, folded = engine_with("whole", before)
    engine.restore_committed("app", salts, frames)
    after = folded.read_bytes()
    expected = _rows(folded)
    assert len(expected) == 20 and len(after) > len(before)
    # A checkpoint that failed part-way: it wrote the first pages (in page order), not the
    # rest; the WAL still holds them all.
    for pages in (1, len(before) // page_size, len(after) // page_size // 2):
        partial = after[: pages * page_size] + before[pages * page_size :]
        engine, path = engine_with(f"partial-{pages}", partial)
        engine.restore_committed("app", salts, frames)
        assert not Path(str(path) + "-wal").exists()
        assert path.read_bytes() == after
        assert _rows(path) == expected
