"""Driver: sqlite3 behaviour that CPython's test_sqlite3 checks, on both backends.

``tests/client/test_cpython_sqlite3.py`` runs CPython's own suite, but only against the embedded
dqlitepy node.  These tests cover the same driver paths against the real C dqlite too, where
the server cannot help (no declared types, no ``sqlite3_limit()``), and compare with the
standard library's ``sqlite3`` wherever the outcome must be the same.
"""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

import dqlitepy

pytestmark = pytest.mark.dqlite

Connect = Callable[..., dqlitepy.Connection]
Compare = Callable[..., tuple[Any, Any]]


def _backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.node.callspec.params["servers"]
    return backend


@pytest.fixture
def bool_converter(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (sqlite3, dqlitepy):
        monkeypatch.setitem(module.converters, "BOOL", lambda raw: bool(int(raw)))
        monkeypatch.setitem(module.converters, "TAGGED", lambda raw: ("tagged", raw))


# -- detect_types=PARSE_DECLTYPES ------------------------------------------------------------------


def test_parse_decltypes(
    compare: Compare, request: pytest.FixtureRequest, bool_converter: None
) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (d date, ts timestamp, b bool NOT NULL, n number(5), x)")
        conn.execute(
            "INSERT INTO t VALUES (?, ?, ?, 5, '')",
            (datetime.date(2004, 2, 14), datetime.datetime(2004, 2, 14, 7, 15, 0, 500), False),
        )
        conn.execute("INSERT INTO t VALUES ('2012-04-04', '2012-04-04 15:06:00.456', 1, NULL, x'')")
        # An alias keeps the declared type; an expression has none.
        return conn.execute("SELECT d, ts AS renamed, b, n, x, d || '' FROM t").fetchall()

    expected, actual = compare(run, detect_types=sqlite3.PARSE_DECLTYPES)
    assert expected == (
        "returned",
        [
            (
                datetime.date(2004, 2, 14),
                datetime.datetime(2004, 2, 14, 7, 15, 0, 500),
                False,
                5,
                "",
                "2004-02-14",
            ),
            (
                datetime.date(2012, 4, 4),
                datetime.datetime(2012, 4, 4, 15, 6, 0, 456000),
                True,
                None,
                b"",
                "2012-04-04",
            ),
        ],
    )
    if _backend(request) == "dqlite":
        # C dqlite does not say what a column's declared type is.
        assert actual[:2] == ("raised", "NotSupportedError")
    else:
        assert actual == expected


def test_parse_decltypes_needs_no_declared_types_for_empty_results(connect: Connect) -> None:
    # Nothing to convert, so nothing to ask the server: works on both backends.
    conn = connect(detect_types=dqlitepy.PARSE_DECLTYPES)
    conn.execute("CREATE TABLE t (d date)")
    assert conn.execute("SELECT d FROM t").fetchall() == []
    assert conn.execute("SELECT 1 AS \"x [INTEGER]\" WHERE 0").description[0][0] == "x [INTEGER]"


def test_colnames_win_over_decltypes(
    compare: Compare, request: pytest.FixtureRequest, bool_converter: None
) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (b bool)")
        conn.execute("INSERT INTO t VALUES (0)")
        cur = conn.execute('SELECT b AS "b [tagged]", b AS "plain [bool]", b FROM t')
        return cur.fetchall(), [d[0] for d in cur.description]

    kinds = sqlite3.PARSE_DECLTYPES | sqlite3.PARSE_COLNAMES
    expected, actual = compare(run, detect_types=kinds)
    if _backend(request) == "dqlite":
        assert actual[:2] == ("raised", "NotSupportedError")
    else:
        assert actual == expected
    # Without PARSE_DECLTYPES the column names alone work everywhere.
    expected, actual = compare(run, detect_types=sqlite3.PARSE_COLNAMES)
    assert actual == expected


# -- run-time limits -------------------------------------------------------------------------------


@pytest.mark.both_drivers
def test_getlimit_setlimit(connect: Connect, request: pytest.FixtureRequest) -> None:
    conn = connect()
    if _backend(request) == "dqlite":
        with pytest.raises(dqlitepy.NotSupportedError, match="dqlitepy server"):
            conn.getlimit(dqlitepy.SQLITE_LIMIT_SQL_LENGTH)
        return
    length = dqlitepy.SQLITE_LIMIT_SQL_LENGTH
    variables = dqlitepy.SQLITE_LIMIT_VARIABLE_NUMBER
    default = conn.getlimit(length)
    assert default > 1000
    assert conn.setlimit(length, 20) == default
    assert conn.getlimit(length) == 20
    twenty = "SELECT 'abcdefghijk'"
    assert len(twenty) == 20
    assert conn.execute(twenty).fetchone() == ("abcdefghijk",)
    with pytest.raises(dqlitepy.DataError, match="query string is too large"):
        conn.execute(twenty + " ")
    with pytest.raises(dqlitepy.DataError, match="query string is too large"):
        conn.execute("SELECT 'ééééééé'")  # 15 characters, 22 bytes
    with pytest.raises(dqlitepy.DataError, match="query string is too large"):
        conn.executescript("SELECT 1; SELECT 2; SELECT 3;")
    assert conn.setlimit(length, default) == 20
    assert conn.setlimit(variables, 1) > 1
    assert conn.execute("SELECT ?", (1,)).fetchone() == (1,)
    with pytest.raises(dqlitepy.OperationalError, match="too many SQL variables"):
        conn.execute("SELECT ?, ?", (1, 2))
    with pytest.raises(dqlitepy.ProgrammingError, match="'category' is out of bounds"):
        conn.getlimit(1111)
    # A negative value reads without changing, as in sqlite3.
    assert conn.setlimit(variables, -1) == 1 == conn.getlimit(variables)


# -- transaction state after errors ----------------------------------------------------------------


@pytest.mark.parametrize("conflict", ["ROLLBACK", "ABORT", "FAIL", "IGNORE"])
def test_transaction_state_after_a_conflict(compare: Compare, conflict: str) -> None:
    # ON CONFLICT ROLLBACK ends the implicit transaction inside SQLite; the driver must
    # notice, or the next INSERT would run outside a transaction and COMMIT would fail.
    def run(conn: Any, module: Any) -> Any:
        conn.execute(f"CREATE TABLE t (x UNIQUE ON CONFLICT {conflict})")
        conn.execute("INSERT INTO t VALUES (1)")
        states = [conn.in_transaction]
        try:
            conn.execute("INSERT INTO t VALUES (1)")
        except module.IntegrityError as exc:
            states.append(type(exc).__name__)
        states.append(conn.in_transaction)
        conn.execute("INSERT INTO t VALUES (2)")
        states.append(conn.in_transaction)
        conn.commit()
        states.append(conn.in_transaction)
        return states, conn.execute("SELECT x FROM t ORDER BY x").fetchall()

    expected, actual = compare(run)
    assert expected[0] == "returned"
    assert actual == expected


def test_explicit_transaction_rolled_back_by_a_conflict(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (x UNIQUE)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (1)")
        raised = None
        try:
            conn.execute("INSERT OR ROLLBACK INTO t VALUES (1)")
        except module.IntegrityError as exc:
            raised = type(exc).__name__
        state = conn.in_transaction
        conn.commit()  # nothing to commit: must not fail
        return raised, state, conn.execute("SELECT x FROM t").fetchall()

    expected, actual = compare(run, isolation_level=None)
    assert expected == ("returned", ("IntegrityError", False, []))
    assert actual == expected


# -- text that is not UTF-8 -----------------------------------------------------------------------


def test_text_that_is_not_utf8(compare: Compare, request: pytest.FixtureRequest) -> None:
    def run(conn: Any, module: Any) -> Any:
        return conn.execute("SELECT 'x' || ? || 'y' AS v", (b"\xfa",)).fetchall()

    def as_bytes(conn: Any, module: Any) -> Any:
        conn.text_factory = bytes
        return run(conn, module)

    expected, actual = compare(run)
    assert expected == (
        "raised",
        "OperationalError",
        "Could not decode to UTF-8 column 'v' with text 'x\ufffdy'",
    )
    if _backend(request) == "dqlite":
        # C dqlite sends the bytes; the driver judges them as sqlite3 does.
        assert actual == expected
        expected, actual = compare(as_bytes)
        assert actual == expected == ("returned", [(b"x\xfay",)])
    else:
        # APSW, under our server, cannot read such text at all.
        assert actual[:2] == ("raised", "OperationalError")


# -- lastrowid, Connection.__call__ ----------------------------------------------------------------


def test_lastrowid_follows_the_connection(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        seen = []
        cur = conn.cursor()
        seen.append(cur.lastrowid)
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("INSERT INTO t VALUES (2)")
        # A SELECT on another cursor reports the connection's last inserted rowid.
        seen.append(cur.execute("SELECT 1").lastrowid)
        returning = conn.execute("INSERT INTO t VALUES (3) RETURNING x")
        seen.append((returning.fetchall(), returning.lastrowid))
        cur.executemany("INSERT INTO t VALUES (?)", [(4,), (5,)])
        seen.append(cur.lastrowid)
        seen.append(cur.execute("SELECT 2").lastrowid)
        cur.executescript("INSERT INTO t VALUES (6);")
        seen.append(cur.lastrowid)
        return seen

    expected, actual = compare(run)
    assert expected[0] == "returned"
    assert actual == expected


def test_calling_the_connection_compiles_sql(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        outcomes = [type(conn("SELECT 1")).__name__]
        for sql in ("SELEC 1", b"SELECT 1", "SELECT '\ud8ff'"):
            try:
                conn(sql)
            except Exception as exc:
                outcomes.append(type(exc).__name__)
        return outcomes

    expected, actual = compare(run)
    assert expected == (
        "returned",
        ["Statement", "OperationalError", "TypeError", "UnicodeEncodeError"],
    )
    assert actual == expected
