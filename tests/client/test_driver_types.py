"""Driver: every value type round-trips; large and multi-batch results are read whole.

Never store a FLOAT or BLOB in a DATE/DATETIME/TIMESTAMP column, or anything but an integer in
a BOOLEAN column, on a dqlite 1.11.1 server: reading it back aborts the server process
(protocol.md §4.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

import dqlitepy

pytestmark = [pytest.mark.dqlite, pytest.mark.both_drivers]

Connect = Callable[..., dqlitepy.Connection]
Compare = Callable[..., tuple[Any, Any]]

MIB = 1024 * 1024

VALUES = [
    0,
    1,
    -1,
    2**31,
    2**63 - 1,
    -(2**63),
    0.0,
    1.5,
    -2.25e-300,
    1e308,
    float("inf"),
    float("-inf"),
    "",
    "plain",
    "héllo wörld",
    "☃ snow, 𝄞 clef, 🎉, 中文, عربى",
    "line\nbreak\ttab 'quote' \"dq\"",
    b"",
    b"\x00",
    bytes(range(256)),
    None,
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_value_round_trips_as_parameter_and_through_a_table(compare: Compare, value: Any) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (v)")
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        selected = conn.execute("SELECT ?, typeof(?)", (value, value)).fetchone()
        stored = conn.execute("SELECT v, typeof(v) FROM t").fetchone()
        return selected, stored, [type(v).__name__ for v in (*selected, *stored)]

    expected, actual = compare(run)
    assert expected[0] == "returned"
    assert actual == expected
    assert actual[1][0][0] == value


def test_negative_zero_keeps_its_sign(connect: Connect) -> None:
    (value,) = connect().execute("SELECT ?", (-0.0,)).fetchone()
    assert value == 0.0
    assert math.copysign(1.0, value) == -1.0


def test_nan_becomes_null(compare: Compare) -> None:
    expected, actual = compare(lambda c, m: c.execute("SELECT ?", (float("nan"),)).fetchall())
    assert expected == ("returned", [(None,)])
    assert actual == expected


def test_bool_stored_as_integer(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (v)")
        conn.executemany("INSERT INTO t VALUES (?)", [(True,), (False,)])
        return conn.execute("SELECT v, typeof(v) FROM t ORDER BY rowid").fetchall()

    expected, actual = compare(run)
    assert expected == ("returned", [(1, "integer"), (0, "integer")])
    assert actual == expected


def test_sql_literals_of_every_type(compare: Compare) -> None:
    sql = "SELECT 1, -9223372036854775808, 2.5, 'txt', x'00ff', NULL, 1e999, -1e999"
    expected, actual = compare(lambda c, m: c.execute(sql).fetchall())
    assert actual == expected


def test_one_mib_blob_and_text(connect: Connect) -> None:
    conn = connect()
    blob = bytes(range(256)) * (MIB // 256)
    text = "é" * (MIB // 2)  # 1 MiB of UTF-8
    conn.execute("CREATE TABLE big (b BLOB, t TEXT)")
    conn.execute("INSERT INTO big VALUES (?, ?)", (blob, text))
    conn.execute("INSERT INTO big VALUES (x'01', 'small')")
    conn.commit()
    rows = conn.execute("SELECT b, t FROM big ORDER BY rowid").fetchall()
    assert len(rows) == 2
    assert rows[0][0] == blob
    assert rows[0][1] == text
    assert rows[1] == (b"\x01", "small")
    # A 1 MiB parameter and result in one statement.
    assert conn.execute("SELECT length(?), ?", (blob, blob)).fetchone() == (MIB, blob)


def test_several_oversize_rows(connect: Connect) -> None:
    # Each row is larger than a batch: the server sends one row per ROWS message.
    conn = connect()
    rows = conn.execute(
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 4) "
        "SELECT i, printf('%0300000d', i), zeroblob(300000 + i) FROM r"
    ).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert [r[1] for r in rows] == [f"{i:0300000d}" for i in (1, 2, 3, 4)]
    assert [r[2] for r in rows] == [bytes(300000 + i) for i in (1, 2, 3, 4)]


def test_multi_batch_result_read_whole(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (i INTEGER, s TEXT, f REAL, b BLOB)")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?)",
            ((i, f"row {i}" * (i % 5), i / 7, bytes([i % 256]) * (i % 3)) for i in range(3000)),
        )
        conn.commit()
        cur = conn.execute("SELECT * FROM t ORDER BY i")
        first = cur.fetchmany(10)
        rest = cur.fetchall()
        return len(first) + len(rest), first + rest

    expected, actual = compare(run)
    assert expected[0] == "returned"
    assert expected[1][0] == 3000
    assert actual == expected


def test_iterating_a_multi_batch_result(connect: Connect) -> None:
    conn = connect()
    cur = conn.execute(
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 5000) "
        "SELECT i, printf('%080d', i) FROM r"
    )
    seen = 0
    for i, text in cur:
        seen += 1
        assert i == seen
        assert text == f"{i:080d}"
    assert seen == 5000
    # The connection is free for the next statement.
    assert conn.execute("SELECT 'next'").fetchone() == ("next",)


# -- dqlite's declared-type mapping (protocol.md §4.2) --------------------------------------------


def test_date_columns_holding_integers_come_back_as_int(connect: Connect) -> None:
    conn = connect()
    conn.execute("CREATE TABLE d (a DATE, b DATETIME, c TIMESTAMP, e BOOLEAN)")
    conn.execute("INSERT INTO d VALUES (?, ?, ?, ?)", (1600000000, 0, -5, 1))
    conn.execute("INSERT INTO d VALUES (?, ?, ?, ?)", (2**40, 86400, 1, 0))
    rows = conn.execute("SELECT a, b, c, e FROM d ORDER BY rowid").fetchall()
    assert rows == [(1600000000, 0, -5, 1), (2**40, 86400, 1, 0)]
    assert all(type(v) is int for row in rows for v in row)


def test_date_columns_holding_text_come_back_as_str(connect: Connect) -> None:
    conn = connect()
    conn.execute("CREATE TABLE d (a DATE, b DATETIME, c TIMESTAMP)")
    values = ("2020-01-02", "2020-01-02 03:04:05", "2020-01-02T03:04:05.123456+02:00")
    conn.execute("INSERT INTO d VALUES (?, ?, ?)", values)
    conn.execute("INSERT INTO d VALUES ('not a date', '', ' ')")
    rows = conn.execute("SELECT a, b, c FROM d ORDER BY rowid").fetchall()
    assert rows[0] == values
    assert rows[1][0] == "not a date"
    assert rows[1][2] == " "
    # An empty text and NULL are indistinguishable on the wire: both read as None.
    assert rows[1][1] in ("", None)


def test_null_in_date_columns_is_none(connect: Connect) -> None:
    conn = connect()
    conn.execute("CREATE TABLE d (a DATE, b DATETIME, c TIMESTAMP)")
    conn.execute("INSERT INTO d VALUES (NULL, NULL, NULL)")
    assert conn.execute("SELECT a, b, c FROM d").fetchall() == [(None, None, None)]
    # An alias keeps the declared type, an expression loses it.
    assert conn.execute("SELECT a AS x, b || '' FROM d").fetchall() == [(None, None)]


def test_boolean_column_gives_the_stored_integer(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE b (v BOOLEAN)")
        conn.executemany("INSERT INTO b VALUES (?)", [(True,), (False,), (5,)])
        return conn.execute("SELECT v FROM b ORDER BY rowid").fetchall()

    expected, actual = compare(run)
    assert expected == ("returned", [(1,), (0,), (5,)])
    assert actual == expected
    assert all(type(v) is int for (v,) in actual[1])


def test_similar_declared_types_are_not_mapped(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (a BOOL, b TIMESTAMP WITH TIME ZONE, c DATE_X, d text)")
        conn.execute("INSERT INTO t VALUES (2.5, 1.5, x'01', NULL)")
        return conn.execute("SELECT a, b, c, d, CAST(1 AS DATETIME) FROM t").fetchall()

    expected, actual = compare(run)
    assert expected == ("returned", [(2.5, 1.5, b"\x01", None, 1)])
    assert actual == expected
