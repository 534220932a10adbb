"""Capturing committed transactions from a WAL and applying them to another file."""

from __future__ import annotations

import os
import random
from pathlib import Path

import apsw
import pytest

from dqlitepy.engine.wal import Transaction, WalError, WalTracker, apply_pages


class Leader:
    """An APSW connection whose WAL hook captures every committed transaction."""

    def __init__(self, path: Path) -> None:
        self.db = apsw.Connection(str(path))
        self.db.execute("PRAGMA journal_mode=WAL").fetchall()
        self.tracker = WalTracker(Path(str(path) + "-wal"))
        self.transactions: list[Transaction] = []
        self.db.set_wal_hook(self._hook)

    def _hook(self, conn: apsw.Connection, name: str, frames: int) -> int:
        self.transactions.extend(self.tracker.read(frames))
        return apsw.SQLITE_OK


def _replica(tmp_path: Path, transactions: list[Transaction]) -> apsw.Connection:
    path = tmp_path / "replica.db"
    for txn in transactions:
        apply_pages(path, txn)
    return apsw.Connection(str(path))


def _dump(db: apsw.Connection) -> list[tuple[object, ...]]:
    return db.execute("SELECT * FROM t ORDER BY id").fetchall()


@pytest.mark.parametrize("seed", range(5))
def test_replica_matches_leader_across_checkpoints_and_vacuum(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    leader = Leader(tmp_path / "leader.db")
    leader.db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB, r)")
    for _ in range(200):
        action = rng.random()
        if action < 0.6:
            leader.db.execute(
                "INSERT INTO t (v, r) VALUES (?, random())", (rng.randbytes(rng.randint(1, 6000)),)
            )
        elif action < 0.75:
            leader.db.execute("DELETE FROM t WHERE id % ? = 0", (rng.randint(2, 5),))
        elif action < 0.85:
            with leader.db:  # one transaction, many pages
                for _ in range(rng.randint(2, 30)):
                    leader.db.execute(
                        "INSERT INTO t (v) VALUES (zeroblob(?))", (rng.randint(1, 9000),)
                    )
        elif action < 0.9:
            leader.db.execute("BEGIN")
            leader.db.execute("INSERT INTO t (v) VALUES (zeroblob(100000))")
            leader.db.execute("ROLLBACK")  # rolled back: nothing to replicate
        elif action < 0.97:
            leader.db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        else:
            leader.db.execute("VACUUM")
    replica = _replica(tmp_path, leader.transactions)
    assert replica.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert _dump(replica) == _dump(leader.db)


def test_spilled_pages_wait_for_their_commit(tmp_path: Path) -> None:
    leader = Leader(tmp_path / "leader.db")
    leader.db.execute("PRAGMA cache_size=10")  # forces spilling into the WAL mid-transaction
    leader.db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    before = len(leader.transactions)
    with leader.db:
        for _ in range(200):
            leader.db.execute("INSERT INTO t (v) VALUES (zeroblob(4000))")
    assert len(leader.transactions) == before + 1
    replica = _replica(tmp_path, leader.transactions)
    assert replica.execute("SELECT count(*) FROM t").fetchone() == (200,)


def test_bad_wal_is_an_error(tmp_path: Path) -> None:
    wal = tmp_path / "x.db-wal"
    wal.write_bytes(bytes(32))
    with pytest.raises(WalError):
        WalTracker(wal).read(1)


def test_the_wal_stays_open_and_a_new_file_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One open for a stream of commits (not one per commit); once SQLite has
    # deleted its WAL and writes a new file at the same path, the tracker reads
    # that one (the old descriptor would show the deleted file: "WAL shrank").
    opened: list[str] = []
    real_open = os.open

    def counting(path: str | Path, *args: int) -> int:
        opened.append(os.fspath(path))
        return real_open(path, *args)

    monkeypatch.setattr(os, "open", counting)
    path = tmp_path / "leader.db"
    wal = str(path) + "-wal"
    leader = Leader(path)
    leader.db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    for i in range(20):
        leader.db.execute("INSERT INTO t (v) VALUES (?)", (bytes([i]) * 3000,))
    assert opened.count(wal) == 1
    leader.db.close()  # the last connection: SQLite checkpoints and deletes the WAL
    assert not os.path.exists(wal)
    leader.db = apsw.Connection(str(path))
    leader.db.set_wal_hook(leader._hook)
    for i in range(5):
        leader.db.execute("INSERT INTO t (v) VALUES (?)", (bytes([i]) * 5000,))
    assert opened.count(wal) == 2
    replica = _replica(tmp_path, leader.transactions)
    assert _dump(replica) == _dump(leader.db)
    leader.tracker.close()
    leader.tracker.close()  # closing twice is harmless
