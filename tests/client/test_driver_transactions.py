"""Driver: transactions as sqlite3 runs them, locking with ``timeout``, and ``iterdump``.

Where sqlite3 can show the expected behaviour (legacy transaction control) the test runs the
same steps on both. ``autocommit=True/False`` is Python 3.12's; its expected values are spelled
out (they were taken from CPython 3.12's sqlite3).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import dqlitepy

pytestmark = [pytest.mark.dqlite, pytest.mark.both_drivers]

Connect = Callable[..., dqlitepy.Connection]
Compare = Callable[..., tuple[Any, Any]]


def _same(compare: Compare, fn: Callable[[Any, Any], Any], **kwargs: Any) -> Any:
    expected, actual = compare(fn, **kwargs)
    assert expected[0] == "returned", expected
    assert actual == expected
    return actual[1]


def _rows(conn: dqlitepy.Connection, sql: str = "SELECT x FROM t ORDER BY x") -> list[Any]:
    return conn.execute(sql).fetchall()


# -- legacy transaction control (isolation_level) -------------------------------------------------


def test_implicit_begin_before_dml_only(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        states = [conn.in_transaction]
        for sql in (
            "CREATE TABLE t (x)",
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "SELECT * FROM t",
            "UPDATE t SET x = 2",
            "CREATE TABLE u (y)",  # DDL inside the open transaction: no implicit commit
            "DELETE FROM t",
            "REPLACE INTO t VALUES (3)",
        ):
            conn.execute(sql)
            states.append((sql, conn.in_transaction))
        conn.commit()
        states.append(("commit", conn.in_transaction))
        conn.execute("SELECT * FROM t")
        states.append(("select", conn.in_transaction))
        conn.rollback()  # nothing to roll back: fine
        states.append(("rollback", conn.in_transaction))
        return states

    states = _same(compare, run)
    assert states[0] is False
    assert states[3] == ("INSERT INTO t VALUES (1)", True)


def test_commit_persists_and_is_invisible_before(connect: Connect) -> None:
    conn = connect()
    other = connect()
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    assert conn.in_transaction
    assert _rows(conn) == [(1,)]
    assert _rows(other) == []  # not committed yet
    conn.commit()
    assert not conn.in_transaction
    assert _rows(other) == [(1,)]


def test_rollback_discards(connect: Connect) -> None:
    conn = connect()
    other = connect()
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (2)")
    conn.execute("UPDATE t SET x = x * 10")
    assert _rows(conn) == [(10,), (20,)]
    conn.rollback()
    assert not conn.in_transaction
    assert _rows(conn) == [(1,)]
    assert _rows(other) == [(1,)]


def test_close_without_commit_discards(connect: Connect) -> None:
    conn = connect()
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    assert _rows(connect()) == []


def test_isolation_level_none_is_autocommit(connect: Connect) -> None:
    conn = connect(isolation_level=None)
    other = connect()
    assert conn.isolation_level is None
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    assert not conn.in_transaction
    assert _rows(other) == [(1,)]
    conn.rollback()  # nothing to roll back
    assert _rows(other) == [(1,)]
    # Explicit transactions still work.
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (2)")
    assert conn.in_transaction
    conn.rollback()
    assert _rows(other) == [(1,)]


@pytest.mark.parametrize("level", ["DEFERRED", "IMMEDIATE", "EXCLUSIVE", "immediate"])
def test_isolation_level_sets_the_begin(compare: Compare, level: str) -> None:
    def run(conn: Any, module: Any) -> Any:
        log: list[str] = []
        conn.execute("CREATE TABLE t (x)")
        conn.set_trace_callback(log.append)
        conn.execute("INSERT INTO t VALUES (1)")
        return conn.isolation_level, conn.in_transaction, log

    assert _same(compare, run, isolation_level=level) == (
        level.upper(),
        True,
        [f"BEGIN {level.upper()}", "INSERT INTO t VALUES (1)"],
    )


def test_immediate_takes_the_write_lock_at_begin(connect: Connect) -> None:
    conn = connect(isolation_level="IMMEDIATE")
    other = connect(timeout=0.2)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(dqlitepy.OperationalError, match="database is locked"):
        other.execute("INSERT INTO t VALUES (2)")
    other.rollback()
    conn.commit()


def test_bad_isolation_level(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        errors = []
        for bad in ("BOGUS", 1):
            try:
                conn.isolation_level = bad
            except (ValueError, TypeError) as exc:
                errors.append(type(exc).__name__)
        return errors, conn.isolation_level

    assert _same(compare, run) == (["ValueError", "TypeError"], "")


def test_setting_isolation_level_none_commits(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.isolation_level = None
        committed = not conn.in_transaction
        conn.execute("INSERT INTO t VALUES (2)")
        return committed, conn.in_transaction

    assert _same(compare, run) == (True, False)


def test_setting_isolation_level_none_commits_for_others(connect: Connect) -> None:
    conn = connect()
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.isolation_level = None
    assert _rows(connect()) == [(1,)]


def test_explicit_transaction_statements(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        states = []
        for sql in (
            "CREATE TABLE t (x)",
            "BEGIN",
            "INSERT INTO t VALUES (1)",
            "SAVEPOINT a",
            "INSERT INTO t VALUES (2)",
            "ROLLBACK TO a",
            "ROLLBACK TRANSACTION TO SAVEPOINT a",
            "RELEASE a",
            "COMMIT",
            "SAVEPOINT outer_sp",  # a savepoint outside a transaction starts one
            "INSERT INTO t VALUES (3)",
            "SAVEPOINT inner_sp",
            "RELEASE SAVEPOINT inner_sp",
            "RELEASE outer_sp",  # ... and releasing it commits
            "SAVEPOINT b",
            "INSERT INTO t VALUES (4)",
            "ROLLBACK",
            "BEGIN IMMEDIATE TRANSACTION",
            "END TRANSACTION",
            "BEGIN EXCLUSIVE",
            "COMMIT TRANSACTION",
        ):
            conn.execute(sql)
            states.append((sql, conn.in_transaction))
        states.append(conn.execute("SELECT x FROM t ORDER BY x").fetchall())
        return states

    assert _same(compare, run, isolation_level=None)[-1] == [(1,), (3,)]


def test_explicit_transaction_statements_in_legacy_mode(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("COMMIT")
        states = [conn.in_transaction]
        try:
            conn.execute("COMMIT")
        except module.OperationalError as exc:
            states.append(str(exc))
        conn.execute("INSERT INTO t VALUES (2)")
        try:
            conn.execute("BEGIN")
        except module.OperationalError as exc:
            states.append(str(exc))
        conn.commit()
        states.append(conn.execute("SELECT x FROM t ORDER BY x").fetchall())
        return states

    assert _same(compare, run) == [
        False,
        "cannot commit - no transaction is active",
        "cannot start a transaction within a transaction",
        [(1,), (2,)],
    ]


def test_context_manager(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (x)")
        with conn as entered:
            same = entered is conn
            conn.execute("INSERT INTO t VALUES (1)")
        after_ok = conn.in_transaction
        try:
            with conn:
                conn.execute("INSERT INTO t VALUES (2)")
                raise KeyError("boom")
        except KeyError:
            propagated = True
        after_error = conn.in_transaction
        return same, after_ok, propagated, after_error, conn.execute("SELECT x FROM t").fetchall()

    assert _same(compare, run) == (True, False, True, False, [(1,)])


def test_context_manager_commits_for_others(connect: Connect) -> None:
    conn = connect()
    conn.execute("CREATE TABLE t (x)")
    with conn:
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ZeroDivisionError), conn:
        conn.execute("INSERT INTO t VALUES (2)")
        _ = 1 / 0
    assert _rows(connect()) == [(1,)]


def test_total_changes(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        counts = [conn.total_changes]
        conn.execute("CREATE TABLE t (x)")
        counts.append(conn.total_changes)
        conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
        counts.append(conn.total_changes)
        conn.execute("UPDATE t SET x = x + 1")
        counts.append(conn.total_changes)
        conn.rollback()
        counts.append(conn.total_changes)  # rolled back changes still count
        conn.execute("DELETE FROM t")
        counts.append(conn.total_changes)
        return counts

    assert _same(compare, run) == [0, 0, 3, 6, 6, 6]


# -- autocommit (Python 3.12 semantics) ----------------------------------------------------------


def test_autocommit_false_always_has_a_transaction(connect: Connect) -> None:
    conn = connect(autocommit=False)
    other = connect()
    assert conn.autocommit is False
    assert conn.in_transaction  # opened by connect()
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    assert _rows(other, "SELECT count(*) FROM sqlite_master") == [(0,)]
    conn.commit()
    assert conn.in_transaction  # commit() opens the next one
    assert _rows(other) == [(1,)]
    conn.execute("INSERT INTO t VALUES (2)")
    conn.rollback()
    assert conn.in_transaction
    assert _rows(conn) == [(1,)]
    conn.execute("INSERT INTO t VALUES (3)")
    conn.close()  # rolls back
    assert _rows(other) == [(1,)]


def test_autocommit_false_after_sql_commit(connect: Connect) -> None:
    # sqlite3 3.12 opens transactions only in connect(), commit() and rollback(): after a
    # COMMIT statement, statements run in autocommit mode and an explicit BEGIN works.
    conn = connect(autocommit=False)
    other = connect()
    conn.execute("CREATE TABLE t (x)")
    conn.execute("COMMIT")
    assert not conn.in_transaction
    conn.execute("SELECT 1")
    assert not conn.in_transaction
    conn.execute("INSERT INTO t VALUES (1)")
    assert not conn.in_transaction
    assert _rows(other) == [(1,)]
    conn.execute("BEGIN")
    assert conn.in_transaction
    conn.execute("INSERT INTO t VALUES (2)")
    conn.commit()
    assert conn.in_transaction
    assert _rows(other) == [(1,), (2,)]


def test_autocommit_false_context_manager(connect: Connect) -> None:
    conn = connect(autocommit=False)
    other = connect()
    conn.execute("CREATE TABLE t (x)")
    with conn:
        conn.execute("INSERT INTO t VALUES (1)")
    assert conn.in_transaction
    with pytest.raises(KeyError), conn:
        conn.execute("INSERT INTO t VALUES (2)")
        raise KeyError
    assert conn.in_transaction
    assert _rows(other) == [(1,)]


def test_autocommit_true(connect: Connect) -> None:
    conn = connect(autocommit=True, isolation_level="IMMEDIATE")  # isolation_level is ignored
    other = connect()
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    assert not conn.in_transaction
    assert _rows(other) == [(1,)]
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (2)")
    conn.commit()  # does nothing in autocommit mode ...
    conn.rollback()  # ... and neither does this
    assert conn.in_transaction
    assert _rows(other) == [(1,)]
    conn.execute("COMMIT")
    assert not conn.in_transaction
    assert _rows(other) == [(1,), (2,)]
    with conn:  # the context manager does nothing either
        conn.execute("INSERT INTO t VALUES (3)")
    assert _rows(other) == [(1,), (2,), (3,)]


def test_changing_autocommit(connect: Connect) -> None:
    conn = connect()
    other = connect()
    assert conn.autocommit == dqlitepy.LEGACY_TRANSACTION_CONTROL
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.autocommit = True  # commits the pending transaction
    assert not conn.in_transaction
    assert _rows(other) == [(1,)]
    conn.autocommit = False  # opens one
    assert conn.in_transaction
    conn.execute("INSERT INTO t VALUES (2)")
    conn.isolation_level = None  # does not commit with autocommit=False
    assert conn.in_transaction
    assert _rows(other) == [(1,)]
    conn.autocommit = dqlitepy.LEGACY_TRANSACTION_CONTROL
    assert conn.in_transaction
    conn.commit()
    assert _rows(other) == [(1,), (2,)]
    with pytest.raises(ValueError):
        conn.autocommit = 5
    with pytest.raises(ValueError):
        connect(autocommit="yes")


def test_autocommit_false_executescript_does_not_commit(connect: Connect) -> None:
    conn = connect(autocommit=False)
    other = connect()
    conn.executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    assert conn.in_transaction
    assert _rows(other, "SELECT count(*) FROM sqlite_master") == [(0,)]
    conn.commit()
    assert _rows(other) == [(1,)]


# -- locking -------------------------------------------------------------------------------------


def test_locked_database_times_out(connect: Connect) -> None:
    holder = connect()
    waiter = connect(timeout=0.5)
    holder.execute("CREATE TABLE t (x)")
    holder.commit()
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    started = time.monotonic()
    with pytest.raises(dqlitepy.OperationalError) as info:
        waiter.execute("INSERT INTO t VALUES (2)")
    elapsed = time.monotonic() - started
    assert str(info.value) == "database is locked"
    assert info.value.sqlite_errorcode == sqlite3.SQLITE_BUSY
    assert info.value.sqlite_errorname == "SQLITE_BUSY"
    assert 0.4 <= elapsed < 3.0, elapsed
    # Reads are not blocked by the writer, and see only committed data.
    assert _rows(waiter) == []
    waiter.rollback()
    holder.commit()
    waiter.execute("INSERT INTO t VALUES (2)")
    waiter.commit()
    assert _rows(holder) == [(1,), (2,)]


def test_locked_database_waits_for_the_writer(connect: Connect) -> None:
    holder = connect(check_same_thread=False)
    waiter = connect(timeout=5)
    holder.execute("CREATE TABLE t (x)")
    holder.commit()
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    errors: list[BaseException] = []

    def commit_later() -> None:
        time.sleep(0.3)
        try:
            holder.commit()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=commit_later)
    started = time.monotonic()
    thread.start()
    try:
        waiter.execute("INSERT INTO t VALUES (2)")
        elapsed = time.monotonic() - started
    finally:
        thread.join(10)
    assert not errors
    assert 0.2 <= elapsed < 4.0, elapsed
    waiter.commit()
    assert _rows(holder) == [(1,), (2,)]


def test_explicit_begin_immediate_waits_too(connect: Connect) -> None:
    holder = connect(isolation_level=None)
    waiter = connect(isolation_level=None, timeout=0.3)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(dqlitepy.OperationalError, match="database is locked"):
        waiter.execute("BEGIN IMMEDIATE")
    assert 0.25 <= time.monotonic() - started < 3.0
    assert not waiter.in_transaction
    holder.execute("COMMIT")
    waiter.execute("BEGIN IMMEDIATE")
    waiter.execute("COMMIT")


# -- iterdump ------------------------------------------------------------------------------------


SCHEMA = """
    CREATE TABLE plain (a INTEGER, b TEXT, c REAL, d BLOB, e);
    CREATE TABLE "odd ""q"" name" ("col one" TEXT, [col two] INTEGER);
    CREATE TABLE seq (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
    CREATE TABLE empty (z);
    CREATE VIEW zz_view AS SELECT a, b FROM plain;
    CREATE TRIGGER aa_trigger INSTEAD OF INSERT ON zz_view
    BEGIN
        INSERT INTO plain (a, b) VALUES (new.a, new.b);
    END;
    CREATE INDEX plain_b ON plain (b);
    CREATE UNIQUE INDEX seq_v ON seq (v);
    INSERT INTO plain VALUES (1, 'it''s', 1.5, x'00ff', NULL);
    INSERT INTO plain VALUES (-9223372036854775808, 'ünïcödé ☃', -0.25, x'', 'mixed');
    INSERT INTO plain VALUES (NULL, '', 1e100, NULL, 42);
    INSERT INTO zz_view VALUES (7, 'via trigger');
    INSERT INTO "odd ""q"" name" VALUES ('x', 2);
    INSERT INTO seq (v) VALUES ('one'), ('two'), ('three');
    DELETE FROM seq WHERE v = 'three';
"""


def test_iterdump_matches_sqlite3_and_rebuilds_the_database(connect: Connect) -> None:
    conn = connect()
    conn.executescript(SCHEMA)
    reference = sqlite3.connect(":memory:")
    reference.executescript(SCHEMA)
    try:
        dump = list(conn.iterdump())
        assert dump == list(reference.iterdump())
        assert dump[0] == "BEGIN TRANSACTION;"
        assert dump[-1] == "COMMIT;"
        # The dump rebuilds the database in the standard library's sqlite3.
        rebuilt = sqlite3.connect(":memory:")
        rebuilt.executescript("\n".join(dump))
        for table in ("plain", '"odd ""q"" name"', "seq", "empty"):
            query = f"SELECT * FROM {table} ORDER BY rowid"
            assert rebuilt.execute(query).fetchall() == conn.execute(query).fetchall()
        # AUTOINCREMENT continues where it was.
        rebuilt.execute("INSERT INTO seq (v) VALUES ('four')")
        assert rebuilt.execute("SELECT max(id) FROM seq").fetchone() == (4,)
        rebuilt.close()
    finally:
        reference.close()


def test_iterdump_of_an_empty_database(connect: Connect) -> None:
    assert list(connect().iterdump()) == ["BEGIN TRANSACTION;", "COMMIT;"]
