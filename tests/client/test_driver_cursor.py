"""Driver: the Cursor and Row API, factories and converters, compared with sqlite3."""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import dqlitepy

pytestmark = [pytest.mark.dqlite, pytest.mark.both_drivers]

Connect = Callable[..., dqlitepy.Connection]
Compare = Callable[..., tuple[Any, Any]]

TEN = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 10) SELECT x FROM r"


def _same(compare: Compare, fn: Callable[[Any, Any], Any], **kwargs: Any) -> Any:
    """Run ``fn`` on both, assert it returned the same thing, and return that."""
    expected, actual = compare(fn, **kwargs)
    assert expected[0] == "returned", expected
    assert actual == expected
    return actual[1]


# -- description, rowcount, lastrowid ------------------------------------------------------------


def test_description_rowcount_lastrowid_through_a_session(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        cur = conn.cursor()
        seen = [(cur.description, cur.rowcount, cur.lastrowid)]

        def note(sql: str, params: Any = ()) -> None:
            cur.execute(sql, params)
            seen.append((sql, cur.description, cur.rowcount, cur.lastrowid))

        note("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n)")
        note("INSERT INTO t (name, n) VALUES (?, ?)", ("a", 1))
        note("INSERT INTO t (name, n) VALUES ('b', 2), ('c', 3)")
        note("SELECT id, name AS Label, n * 2 FROM t ORDER BY id")
        seen.append(cur.fetchall())
        note("SELECT * FROM t WHERE 0")
        note("UPDATE t SET n = n + 1 WHERE n >= 2")
        note("UPDATE t SET n = 0 WHERE 0")
        note("DELETE FROM t WHERE id = 1")
        note("REPLACE INTO t (id, name) VALUES (7, 'r')")
        note("CREATE INDEX i ON t (name)")
        note("DROP INDEX i")
        note("DELETE FROM t")
        return seen

    _same(compare, run)


def test_rowcount_of_executemany_is_the_sum(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (x)")
        cur = conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(5)])
        inserted = cur.rowcount
        cur.executemany("UPDATE t SET x = x + 10 WHERE x >= ?", [(0,), (3,), (100,)])
        updated = cur.rowcount
        cur.executemany("INSERT INTO t VALUES (?)", iter([]))
        return inserted, updated, cur.rowcount

    assert _same(compare, run) == (5, 10, 0)


def test_rowcount_and_rows_of_dml_returning(connect: Connect) -> None:
    conn = connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    cur = conn.execute("INSERT INTO t (v) VALUES (1), (2), (3) RETURNING id, v * 10")
    assert cur.description is not None
    assert [d[0] for d in cur.description] == ["id", "v * 10"]
    assert cur.fetchall() == [(1, 10), (2, 20), (3, 30)]
    assert cur.rowcount == 3  # sqlite3's value once the rows are read
    assert conn.in_transaction
    cur = conn.execute("UPDATE t SET v = 0 WHERE id > 1 RETURNING id")
    assert cur.fetchall() == [(2,), (3,)]
    assert cur.rowcount == 2


def test_lastrowid_is_sticky_like_sqlite3(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        cur = conn.cursor()
        cur.execute("INSERT INTO t (v) VALUES (1)")
        a = cur.lastrowid
        cur.execute("INSERT INTO t (id, v) VALUES (100, 2)")
        b = cur.lastrowid
        cur.execute("UPDATE t SET v = 3")
        c = cur.lastrowid
        cur.execute("SELECT * FROM t")
        return a, b, c, cur.lastrowid, conn.cursor().lastrowid

    assert _same(compare, run) == (1, 100, 100, 100, None)


# -- fetching ------------------------------------------------------------------------------------


def test_fetchone_fetchmany_fetchall_iteration(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        cur = conn.execute(TEN)
        out: list[Any] = [cur.arraysize, cur.fetchone(), cur.fetchmany(), cur.fetchmany(3)]
        cur.arraysize = 2
        out += [cur.fetchmany(), next(cur), cur.fetchmany(0), list(cur)]
        out += [cur.fetchone(), cur.fetchmany(), cur.fetchall()]
        cur.execute(TEN)
        out += [cur.fetchmany(size=4), cur.fetchall(), cur.fetchall()]
        cur.execute(TEN)
        out += [cur.fetchmany(9), cur.fetchmany(-1), cur.fetchmany(0)]
        return out

    result = _same(compare, run)
    assert result[1] == (1,)
    assert result[6] == [(9,), (10,)]  # fetchmany(0): sqlite3 returns every remaining row


def test_fetch_on_a_statement_without_rows(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        cur = conn.execute("CREATE TABLE t (x)")
        return cur.fetchone(), cur.fetchall(), cur.fetchmany(5), list(cur)

    assert _same(compare, run) == (None, [], [], [])


def test_reexecuting_a_cursor_replaces_its_result(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (x)")
        cur = conn.execute("SELECT 1 UNION ALL SELECT 2")
        first = cur.fetchone()
        cur.execute("INSERT INTO t VALUES (1)")
        return first, cur.description, cur.fetchall()

    assert _same(compare, run) == ((1,), None, [])


def test_cursor_attributes(connect: Connect) -> None:
    conn = connect()
    cur = conn.cursor()
    assert cur.connection is conn
    assert cur.arraysize == 1
    assert cur.description is None
    assert cur.rowcount == -1
    assert cur.lastrowid is None
    cur.setinputsizes([1])
    cur.setoutputsize(10)
    cur.setoutputsize(10, 0)
    assert iter(cur) is cur


@pytest.mark.sync_driver_only
def test_cursor_factory(connect: Connect) -> None:
    class MyCursor(dqlitepy.Cursor):
        pass

    conn = connect()
    cur = conn.cursor(MyCursor)
    assert type(cur) is MyCursor
    assert cur.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(TypeError):
        conn.cursor(lambda c: object())  # type: ignore[arg-type,return-value]


# -- closed objects ------------------------------------------------------------------------------


def attempt(fn: Callable[[], Any]) -> Any:
    """What calling ``fn`` raised (class name and message), or "no error"."""
    try:
        fn()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return "no error"


def test_closed_cursor(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        cur = conn.execute("SELECT 1")
        cur.close()
        cur.close()  # twice is fine
        return [
            attempt(lambda: cur.execute("SELECT 1")),
            attempt(lambda: cur.executemany("SELECT 1", [])),
            attempt(lambda: cur.executescript("SELECT 1")),
            attempt(cur.fetchone),
            attempt(cur.fetchall),
            attempt(cur.fetchmany),
            attempt(lambda: next(cur)),
            conn.execute("SELECT 2").fetchone(),  # the connection is still fine
        ]

    result = _same(compare, run)
    assert result[0] == ("ProgrammingError", "Cannot operate on a closed cursor.")


def test_closed_connection(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        cur = conn.cursor()
        conn.close()
        conn.close()  # twice is fine
        return [
            attempt(lambda: conn.execute("SELECT 1")),
            attempt(conn.cursor),
            attempt(conn.commit),
            attempt(conn.rollback),
            attempt(lambda: conn.in_transaction),
            attempt(lambda: conn.total_changes),
            attempt(lambda: cur.execute("SELECT 1")),
            attempt(cur.fetchone),
            attempt(lambda: conn.executescript("SELECT 1")),
        ]

    result = _same(compare, run)
    assert result[0] == ("ProgrammingError", "Cannot operate on a closed database.")


# -- statements execute() refuses or ignores ------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; SELECT 2",
        "CREATE TABLE a (x); CREATE TABLE b (x)",
        "SELECT 1; -- c\n SELECT 2",
    ],
)
def test_two_statements_are_refused(compare: Compare, sql: str) -> None:
    expected, actual = compare(lambda c, m: c.execute(sql))
    assert expected == (
        "raised",
        "ProgrammingError",
        "You can only execute one statement at a time.",
    )
    assert actual == expected


def test_nothing_was_run_when_two_statements_are_refused(connect: Connect) -> None:
    conn = connect()
    with pytest.raises(dqlitepy.ProgrammingError):
        conn.execute("CREATE TABLE a (x); CREATE TABLE b (x)")
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


@pytest.mark.parametrize(
    "sql", ["SELECT 1;", "SELECT 1; ", "SELECT 1; -- trailing", "SELECT 1 -- c"]
)
def test_one_statement_with_trailing_text(compare: Compare, sql: str) -> None:
    assert _same(compare, lambda c, m: c.execute(sql).fetchall()) == [(1,)]


@pytest.mark.parametrize("sql", ["", "   ", "-- only a comment", "/* block */", "\n\t"])
def test_empty_sql(compare: Compare, sql: str) -> None:
    def run(conn: Any, module: Any) -> Any:
        cur = conn.execute(sql)
        return cur.description, cur.rowcount, cur.fetchall(), conn.in_transaction

    assert _same(compare, run) == (None, -1, [], False)


def test_executemany_refuses_select_and_two_statements(compare: Compare) -> None:
    expected, actual = compare(lambda c, m: c.executemany("SELECT ?", [(1,), (2,)]))
    assert expected[:2] == ("raised", "ProgrammingError")
    assert actual == expected
    expected, actual = compare(
        lambda c, m: c.executemany("CREATE TABLE t (x); CREATE TABLE u (x)", [()])
    )
    assert expected[:2] == ("raised", "ProgrammingError")
    assert actual == expected


def test_sql_argument_must_be_str(compare: Compare) -> None:
    expected, actual = compare(lambda c, m: c.execute(b"SELECT 1"))
    assert expected[:2] == ("raised", "TypeError")
    assert actual[:2] == expected[:2]


def test_nul_in_sql_is_refused(connect: Connect) -> None:
    with pytest.raises(dqlitepy.ProgrammingError):
        connect().execute("SELECT 1\x00")


# -- executescript -------------------------------------------------------------------------------


SCRIPT = """
    CREATE TABLE a (x);
    CREATE TABLE log (y, note);
    -- a comment; with a semicolon
    CREATE TRIGGER tr AFTER INSERT ON a
    BEGIN
        INSERT INTO log VALUES (new.x, 'one;two');
        INSERT INTO log VALUES (new.x * 2, 'end');
    END;
    INSERT INTO a VALUES (1);
    SELECT * FROM a;
    INSERT INTO a VALUES (2);
    /* block ; comment */
    UPDATE log SET note = note || '!' WHERE y > 2;
"""


def test_executescript(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        cur = conn.cursor()
        returned = cur.executescript(SCRIPT)
        return (
            returned is cur,
            cur.description,
            cur.rowcount,
            cur.lastrowid,
            cur.fetchall(),
            conn.in_transaction,
            conn.execute("SELECT y, note FROM log ORDER BY y").fetchall(),
        )

    result = _same(compare, run)
    assert result[-1] == [(1, "one;two"), (2, "end"), (2, "one;two"), (4, "end!")]


def test_executescript_keeps_rowcount_and_lastrowid(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        cur = conn.execute("INSERT INTO t VALUES (5)")
        cur.executescript("INSERT INTO t VALUES (6); INSERT INTO t VALUES (7), (8);")
        return cur.rowcount, cur.lastrowid

    assert _same(compare, run) == (1, 5)


def test_executescript_commits_the_pending_transaction(connect: Connect) -> None:
    conn = connect()
    other = connect()
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    assert conn.in_transaction
    conn.executescript("CREATE TABLE u (y)")
    assert not conn.in_transaction
    assert other.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_executescript_stops_at_the_first_error(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.isolation_level = None
        try:
            conn.executescript(
                "CREATE TABLE t (x); INSERT INTO t VALUES (1); INSERT INTO nosuch VALUES (2); "
                "INSERT INTO t VALUES (3);"
            )
        except module.OperationalError as exc:
            error = str(exc)
        return error, conn.execute("SELECT x FROM t").fetchall()

    assert _same(compare, run) == ("no such table: nosuch", [(1,)])


def test_executescript_of_nothing(compare: Compare) -> None:
    assert _same(compare, lambda c, m: c.executescript("  -- nothing\n;;").fetchall()) == []


# -- Row -----------------------------------------------------------------------------------------


def test_row(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.row_factory = module.Row
        row = conn.execute("SELECT 1 AS a, 'two' AS Bee, NULL AS c").fetchone()
        same = conn.execute("SELECT 1 AS a, 'two' AS Bee, NULL AS c").fetchone()
        other = conn.execute("SELECT 1 AS a, 'three' AS Bee, NULL AS c").fetchone()
        renamed = conn.execute("SELECT 1 AS x, 'two' AS Bee, NULL AS c").fetchone()
        try:
            row["nope"]
        except IndexError as exc:
            missing = str(exc)
        try:
            row[3]
        except IndexError:
            out_of_range = True
        return [
            type(row).__name__,
            row[0],
            row[-1],
            row[1:],
            row["a"],
            row["A"],
            row["bee"],
            row["BEE"],
            row.keys(),
            len(row),
            tuple(row),
            list(reversed(tuple(row))),
            row == same,
            row != same,
            row == other,
            row == renamed,
            row == (1, "two", None),
            hash(row) == hash(same),
            missing,
            out_of_range,
        ]

    result = _same(compare, run)
    assert result[0] == "Row"
    assert result[5] == 1


def test_row_factory_on_connection_and_cursor(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        def as_dict(cur: Any, row: tuple[Any, ...]) -> dict[str, Any]:
            return {d[0]: v for d, v in zip(cur.description, row, strict=True)}

        before = conn.cursor()
        conn.row_factory = as_dict
        after = conn.cursor()
        results = [
            before.execute("SELECT 1 AS a").fetchone(),  # created before: unaffected
            after.execute("SELECT 1 AS a").fetchone(),
            conn.execute("SELECT 2 AS b").fetchall(),
        ]
        only = conn.cursor()
        only.row_factory = lambda cur, row: row[0]
        results.append(only.execute(TEN).fetchmany(3))
        results.append(conn.execute("SELECT 3 AS c").fetchone())  # connection's still applies
        conn.row_factory = None
        results.append(conn.execute("SELECT 4").fetchone())
        return results

    assert _same(compare, run) == [(1,), {"a": 1}, [{"b": 2}], [1, 2, 3], {"c": 3}, (4,)]


def test_text_factory(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        out = [conn.execute("SELECT 'abc', 'é', x'ff', 1").fetchone()]
        conn.text_factory = bytes
        out.append(conn.execute("SELECT 'abc', 'é', x'ff', 1, NULL").fetchone())
        conn.text_factory = lambda raw: raw.decode("utf-8").upper() + "!"
        out.append(conn.execute("SELECT 'abc', 'é', x'ff'").fetchone())
        conn.text_factory = str
        out.append(conn.execute("SELECT 'abc'").fetchone())
        return out

    assert _same(compare, run) == [
        ("abc", "é", b"\xff", 1),
        (b"abc", b"\xc3\xa9", b"\xff", 1, None),
        ("ABC!", "É!", b"\xff"),
        ("abc",),
    ]


# -- converters ----------------------------------------------------------------------------------


@pytest.fixture
def point_converter() -> Iterator[None]:
    def convert_point(raw: bytes) -> tuple[float, ...]:
        return tuple(float(p) for p in raw.split(b";"))

    sqlite3.register_converter("Point", convert_point)
    dqlitepy.register_converter("Point", convert_point)
    yield
    sqlite3.converters.pop("POINT", None)
    dqlitepy.converters.pop("POINT", None)


def test_parse_colnames_with_register_converter(compare: Compare, point_converter: None) -> None:
    def run(conn: Any, module: Any) -> Any:
        cur = conn.execute(
            'SELECT ? AS "p [point]", 7 AS "n [POINT]", NULL AS "z [point]", '
            '1 AS "u [unknown]", 2 AS "plain", 3 AS "q[point]"',
            ("1;2.5",),
        )
        return cur.fetchall(), [d[0] for d in cur.description]

    result = _same(compare, run, detect_types=dqlitepy.PARSE_COLNAMES)
    assert result == (
        [((1.0, 2.5), (7.0,), None, 1, 2, (3.0,))],
        ["p", "n", "z", "u", "plain", "q"],
    )


def test_without_parse_colnames_names_are_untouched(
    compare: Compare, point_converter: None
) -> None:
    def run(conn: Any, module: Any) -> Any:
        cur = conn.execute("SELECT '1;2' AS \"p [point]\"")
        return cur.fetchall(), cur.description[0][0]

    assert _same(compare, run) == ([("1;2",)], "p [point]")


def test_default_date_and_timestamp_converters(connect: Connect) -> None:
    conn = connect(detect_types=dqlitepy.PARSE_COLNAMES)
    row = conn.execute(
        'SELECT ? AS "d [date]", ? AS "t [timestamp]", ? AS "u [timestamp]"',
        ("2021-03-04", "2021-03-04 05:06:07.008900", "2021-03-04 05:06:07"),
    ).fetchone()
    assert row == (
        datetime.date(2021, 3, 4),
        datetime.datetime(2021, 3, 4, 5, 6, 7, 8900),
        datetime.datetime(2021, 3, 4, 5, 6, 7),
    )


def test_converter_sees_the_bytes_of_every_type(connect: Connect) -> None:
    seen: list[bytes] = []

    def record(raw: bytes) -> bytes:
        seen.append(raw)
        return raw

    dqlitepy.register_converter("rec", record)
    try:
        conn = connect(detect_types=dqlitepy.PARSE_COLNAMES)
        conn.execute(
            'SELECT 12 AS "a [rec]", 1.5 AS "b [rec]", \'tx\' AS "c [rec]", x\'00ff\' AS "d [rec]"'
        ).fetchall()
    finally:
        dqlitepy.converters.pop("REC", None)
    # What sqlite3 passes: the value as SQLite renders it as text, or the blob's bytes.
    assert seen == [b"12", b"1.5", b"tx", b"\x00\xff"]


# -- tracing -------------------------------------------------------------------------------------


def test_trace_callback(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        log: list[str] = []
        conn.set_trace_callback(log.append)
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("SELECT x FROM t").fetchall()
        conn.commit()
        conn.set_trace_callback(None)
        conn.execute("SELECT 2")
        return log

    assert _same(compare, run, isolation_level="IMMEDIATE") == [
        "CREATE TABLE t (x)",
        "BEGIN IMMEDIATE",
        "INSERT INTO t VALUES (1)",
        "SELECT x FROM t",
        "COMMIT",
    ]
