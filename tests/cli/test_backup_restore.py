"""``dqlitepy backup`` and ``dqlitepy restore`` against real clusters (``docs/backup.md``).

The shared 3-node ``dqlitepy server`` cluster of the session serves most tests (nothing here
stops its nodes); the C dqlite cluster (``dqlite-demo``) checks that both commands work
against the reference server too.  Backups taken while writers commit must open with the
standard library's ``sqlite3``, pass ``PRAGMA integrity_check`` and hold a consistent prefix
of the writes; a restored database must read back, on every node's own copy, as the file it
came from.  The commands run in-process (``dqlitepy.cli.main``) except once, through
``python -m dqlitepy``, as an operator would run them.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from backups import contents, make_source, node_copy
from dqlite_cluster import DqliteDemoCluster
from dqlitepy_server import DqlitepyServer
from waiting import wait_until

import dqlitepy
from dqlitepy.cli import main
from dqlitepy.cli.restore import MARKER_TABLE
from dqlitepy.testing import Cluster

ACCOUNTS = 10
BALANCE = 1000


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``dqlitepy ARGV`` in this process: exit status, stdout, stderr."""
    capsys.readouterr()
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def cluster(shared_dqlitepy_cluster: Cluster) -> list[str]:
    return shared_dqlitepy_cluster.addresses


@pytest.fixture
def db() -> str:
    return f"backup_{uuid.uuid4().hex[:10]}"


# ----------------------------------------------------------------- backup during writes


class _Writers:
    """Threads committing transfers: one ledger row and one move between two accounts each.

    Every writer numbers its transactions 0, 1, 2...; ``acked[w]`` is the last number whose
    COMMIT returned.  A consistent prefix holds, per writer, exactly the numbers 0..k-1, and
    the accounts' total never changes.
    """

    def __init__(self, servers: list[str], database: str, count: int = 2) -> None:
        self.servers = servers
        self.database = database
        self.acked = [-1] * count
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._write, args=(w,), daemon=True) for w in range(count)
        ]

    def __enter__(self) -> _Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _committed(self, conn: dqlitepy.Connection, w: int, n: int) -> bool:
        found = conn.execute("SELECT 1 FROM ledger WHERE writer = ? AND n = ?", (w, n)).fetchall()
        return bool(found)

    def _write(self, w: int) -> None:
        conn = dqlitepy.connect(self.database, servers=self.servers, isolation_level=None)
        try:
            n = 0
            while not self._stop.is_set():
                a, b = (w * 3 + n) % ACCOUNTS + 1, (w * 7 + n * 5 + 1) % ACCOUNTS + 1
                try:
                    conn.execute("BEGIN")
                    conn.execute("INSERT INTO ledger (writer, n) VALUES (?, ?)", (w, n))
                    conn.execute("UPDATE acct SET bal = bal - 1 WHERE id = ?", (a,))
                    conn.execute("UPDATE acct SET bal = bal + 1 WHERE id = ?", (b,))
                    conn.execute("COMMIT")
                except dqlitepy.OperationalError as exc:
                    # A leader change: learn what became of the transaction, then go on.
                    if getattr(exc, "outcome", None) == "unknown":
                        conn.close()
                        conn = dqlitepy.connect(
                            self.database, servers=self.servers, isolation_level=None
                        )
                        if not self._committed(conn, w, n):
                            continue
                    else:
                        with contextlib.suppress(dqlitepy.Error):
                            conn.execute("ROLLBACK")
                        continue
                self.acked[w] = n
                n += 1
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            with contextlib.suppress(dqlitepy.Error):
                conn.close()


def _check_backup(path: Path, acked_before: list[int]) -> list[int]:
    """The backup is a sound standalone file holding a consistent prefix; its per-writer counts."""
    assert not Path(f"{path}-wal").exists()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        (total,) = conn.execute("SELECT sum(bal) FROM acct").fetchone()
        assert total == ACCOUNTS * BALANCE, "a transfer is in the backup by half"
        counts = []
        for w, before in enumerate(acked_before):
            ns = [
                n for (n,) in conn.execute("SELECT n FROM ledger WHERE writer = ? ORDER BY n", (w,))
            ]
            assert ns == list(range(len(ns))), f"writer {w}: not a prefix of its transactions"
            # Every transaction acknowledged before the backup began is in it.
            assert len(ns) - 1 >= before, (w, len(ns), before)
            counts.append(len(ns))
        return counts
    finally:
        conn.close()


def test_backup_during_writes_is_a_consistent_prefix(
    cluster: list[str], db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with dqlitepy.connect(db, servers=cluster, isolation_level=None) as conn:
        conn.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER)")
        conn.execute("CREATE TABLE ledger (writer INTEGER, n INTEGER, PRIMARY KEY (writer, n))")
        conn.executemany(
            "INSERT INTO acct VALUES (?, ?)", [(i, BALANCE) for i in range(1, ACCOUNTS + 1)]
        )
    seen: list[list[int]] = []
    with _Writers(cluster, db) as writers:
        wait_until(lambda: min(writers.acked) >= 5 or writers.errors, "the writers to commit")
        for k in range(3):
            before = list(writers.acked)
            path = tmp_path / f"backup{k}.db"
            status, out, err = _run(capsys, "backup", "-s", ",".join(cluster), db, str(path))
            assert status == 0, err
            assert f"to {path}" in out
            seen.append(_check_backup(path, before))
            progressed = [a + 1 for a in writers.acked]
            wait_until(
                lambda p=progressed: (
                    all(a >= n for a, n in zip(writers.acked, p, strict=True)) or writers.errors
                ),
                "the writers to commit after the backup",
            )
    assert not writers.errors, writers.errors
    # Committed stays committed: each backup holds at least what the one before held.
    for earlier, later in itertools.pairwise(seen):
        assert all(a <= b for a, b in zip(earlier, later, strict=True)), seen
    # Nothing left beside the backups (the temporary directories are gone).
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"backup{k}.db" for k in range(3)]


# ----------------------------------------------------------------- restore


@pytest.mark.parametrize("size", ["default", "16K"])
def test_restore_then_every_node_holds_the_file(
    cluster: list[str], db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str
) -> None:
    source = tmp_path / "source.db"
    make_source(source)
    expected = contents(source)
    options = [] if size == "default" else ["--transaction-size", size]
    status, out, err = _run(capsys, "restore", "-s", ",".join(cluster), *options, db, str(source))
    assert status == 0, err
    transactions = int(out.split(", ")[-1].split()[0])
    assert (transactions == 1) == (size == "default"), out
    assert "table 'plain': 2999 rows" in err
    for i, address in enumerate(cluster):
        # A follower may be a heartbeat behind: its own copy, until it has everything.
        wait_until(
            lambda a=address, i=i: node_copy(a, db, tmp_path / f"node{i}.db") == expected,
            f"{address}'s copy of {db} to equal the file",
            timeout=30,
        )
    copy = contents(tmp_path / "node0.db")
    assert MARKER_TABLE not in copy["rows"]
    assert copy["pragmas"]["user_version"] == 42
    assert copy["rows"]["sqlite_sequence"] == [(1, "acct", 200)]
    # The triggers were not there while the rows went in.
    assert not [r for r in copy["rows"]["plain"] if r[1] == "audit"]


def test_restore_refuses_a_database_that_is_not_empty(
    cluster: list[str], db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source.db"
    make_source(source, rows=10)
    with dqlitepy.connect(db, servers=cluster, isolation_level=None) as conn:
        conn.execute("CREATE TABLE mine (x)")
        conn.execute("INSERT INTO mine VALUES (1)")
    status, _out, err = _run(capsys, "restore", "-s", ",".join(cluster), db, str(source))
    assert status == 2
    assert "is not empty (table 'mine')" in err
    with dqlitepy.connect(db, servers=cluster) as conn:
        names = conn.execute("SELECT name FROM sqlite_master").fetchall()
        assert names == [("mine",)]
        assert conn.execute("SELECT * FROM mine").fetchall() == [(1,)]


def test_restore_refuses_what_is_no_sound_database(
    cluster: list[str], db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = ",".join(cluster)
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    virtual = tmp_path / "fts.db"
    with contextlib.closing(sqlite3.connect(virtual)) as conn:
        conn.execute("CREATE VIRTUAL TABLE docs USING fts5 (body)")
        conn.commit()
    for path, message in [
        (tmp_path / "missing.db", "is no file"),
        (text, "is not a SQLite database"),
        (virtual, "holds virtual tables ('docs')"),
    ]:
        status, _out, err = _run(capsys, "restore", "-s", servers, db, str(path))
        assert (status, message in err) == (2, True), err
    status, _out, err = _run(capsys, "backup", "-s", servers, db, str(tmp_path / "b.db"))
    assert status == 2
    assert f"database {db!r} does not exist" in err  # nothing was created by the refusals


def test_interrupted_restore_leaves_a_marked_part(
    cluster: list[str], db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source.db"
    make_source(source)
    with contextlib.closing(sqlite3.connect(source)) as conn:
        # Text that is not UTF-8 cannot be read back: the restore fails at this table.
        conn.execute("CREATE TABLE zbad (t TEXT)")
        conn.execute("INSERT INTO zbad VALUES (CAST(x'ff' AS TEXT))")
        conn.commit()
    servers = ",".join(cluster)
    status, _out, err = _run(
        capsys, "restore", "--transaction-size", "16K", "-s", servers, db, str(source)
    )
    assert status == 1
    assert "reading table 'zbad' of the file failed" in err
    assert f"the database holds part of the file (table {MARKER_TABLE!r} marks it)" in err
    with dqlitepy.connect(db, servers=cluster) as conn:
        assert conn.execute(f"SELECT count(*) FROM {MARKER_TABLE}").fetchone() == (1,)
        # The transactions committed before the failure: a part of the rows, in rowid order.
        rowids = [r for (r,) in conn.execute("SELECT rowid FROM plain ORDER BY rowid")]
        assert 0 < len(rowids) <= 2999
        assert rowids == [3 * i for i in range(1, len(rowids) + 1)]
    # Run again, it is refused: the part is there to be seen.
    status, _out, err = _run(capsys, "restore", "-s", servers, db, str(source))
    assert status == 2
    assert MARKER_TABLE in err


# ----------------------------------------------------------------- backup: operator mistakes


def test_backup_refuses_to_overwrite_and_writes_atomically(
    cluster: list[str], db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = ",".join(cluster)
    with dqlitepy.connect(db, servers=cluster, isolation_level=None) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES ('new')")
    target = tmp_path / "backup.db"
    target.write_bytes(b"precious")
    status, _out, err = _run(capsys, "backup", "-s", servers, db, str(target))
    assert status == 2
    assert "exists: give another file, or --force" in err
    assert target.read_bytes() == b"precious"
    status, _out, err = _run(capsys, "backup", "-s", servers, db, str(tmp_path))
    assert (status, "is a directory" in err) == (2, True)
    status, _out, err = _run(capsys, "backup", "-s", servers, db, str(tmp_path / "no" / "b.db"))
    assert (status, "is no directory" in err) == (2, True)
    status, _out, err = _run(capsys, "backup", "-s", servers, "no_such_db", str(tmp_path / "x.db"))
    assert (status, "database 'no_such_db' does not exist" in err) == (2, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.db"]
    status, _out, err = _run(capsys, "backup", "--force", "-s", servers, db, str(target))
    assert status == 0, err
    assert contents(target)["rows"]["t"] == [(1, "new")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.db"]


def test_backup_from_the_command_line(
    cluster: list[str], db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As an operator runs it; the ``sqlite3`` command opens the file too, if there is one."""
    source = tmp_path / "source.db"
    make_source(source, rows=100)
    servers = ",".join(cluster)
    status, _out, err = _run(capsys, "restore", "-s", servers, db, str(source))
    assert status == 0, err
    backup = tmp_path / "backup.db"
    taken = subprocess.run(
        [sys.executable, "-m", "dqlitepy", "backup", "-s", servers, db, str(backup)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert taken.returncode == 0, taken.stderr
    assert contents(backup) == contents(source)
    with contextlib.suppress(FileNotFoundError):
        shell = subprocess.run(
            ["sqlite3", "-readonly", str(backup), "SELECT count(*) FROM plain"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (shell.returncode, shell.stdout) == (0, "99\n"), shell.stderr


# ----------------------------------------------------------------- the C dqlite server


@pytest.mark.dqlite
def test_restore_and_backup_with_c_dqlite(
    dqlite_cluster: DqliteDemoCluster, db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source.db"
    make_source(source)
    servers = ",".join(dqlite_cluster.addresses)
    for name, options in [(db, []), (f"{db}_parts", ["--transaction-size", "16K"])]:
        status, _out, err = _run(capsys, "restore", "-s", servers, *options, name, str(source))
        assert status == 0, err
        backup = tmp_path / f"{name}.db"
        status, _out, err = _run(capsys, "backup", "-s", servers, name, str(backup))
        assert status == 0, err
        assert contents(backup) == contents(source)


def test_restore_and_backup_on_a_single_node(
    shared_dqlitepy_node: DqlitepyServer,
    db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A node without a cluster key: its DUMP is its SQLite files as they are."""
    source = tmp_path / "source.db"
    make_source(source, rows=500)
    status, _out, err = _run(capsys, "restore", "-s", shared_dqlitepy_node.address, db, str(source))
    assert status == 0, err
    backup = tmp_path / "backup.db"
    status, _out, err = _run(capsys, "backup", "-s", shared_dqlitepy_node.address, db, str(backup))
    assert status == 0, err
    assert contents(backup) == contents(source)
