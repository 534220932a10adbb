"""The Go ``dqlite`` shell against a dqlitepy node, compared with a real dqlite-demo cluster.

Every command runs twice: against the session's dqlite-demo cluster (C dqlite 1.11.1, through
``/usr/bin/dqlite``) and against the session's dqlitepy node. The shell's exit code, its stdout
and the first line of its stderr (``Error: …``; the usage text follows it) must be equal, and
most cases also pin the expected text, so that both servers being wrong in the same way fails
too.

The shell splits its SQL argument on ``;`` and prints rows only for statements starting with
``SELECT``; values print as Go's ``%v`` (``<nil>``, ``[1 2]`` for blobs, ``time.Time`` for DATE
columns, ``true``/``false`` for BOOLEAN). With ``-f json`` the 1.11 shell still prints query
rows as tabular; only ``.cluster`` and ``.describe`` honour it.

Where dqlite 1.11 misbehaves by design the difference is written down next to its test, and the
test asserts what our node does instead (and what dqlite does, when that is safe to send):

* NULL in a BOOLEAN column comes back as ``false`` from dqlite, ``<nil>`` from us.
* A FLOAT, BLOB or TEXT value in a BOOLEAN column, or a FLOAT or BLOB value in a DATE column,
  trips an assertion that kills the 1.11 server: such values are never sent to dqlite-demo.
* A runtime error while a ROWS batch is built: dqlite sends the half-built batch in front of
  the FAILURE (``protocol.md`` §3.1), so the shell prints the first column name as the message.
* Column names of 4096 bytes or more: dqlite sends empty PART batches forever (§3.8).
* Text that is not valid UTF-8: dqlite passes the bytes through; our engine (APSW) cannot read
  them, so the query fails with an error instead of killing the connection.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dqlite_cluster import DQLITE_SHELL, DqliteDemoCluster
from dqlitepy_server import DqlitepyServer

pytestmark = pytest.mark.dqlite

# The id go-dqlite's app gives a cluster's first node; a single dqlitepy node takes it too.
_BOOTSTRAP_ID = "2dc171858c3155be"


@dataclass(frozen=True, slots=True)
class Run:
    """What one Go shell call did."""

    returncode: int
    stdout: str
    error: str  # the first line of stderr, "" if there was none


def go_shell(
    servers: list[str],
    database: str,
    command: str,
    *,
    fmt: str = "tabular",
    cwd: Path | None = None,
) -> Run:
    """Run ``dqlite -s SERVERS -f FMT DATABASE COMMAND`` once."""
    argv = [DQLITE_SHELL, "-s", ",".join(servers), "-f", fmt, database, command]
    # The shell looks for a leader forever when there is none: always bound it.
    result = subprocess.run(argv, capture_output=True, timeout=60, cwd=cwd, check=False)
    stderr = result.stderr.decode("utf-8", "surrogateescape").strip()
    return Run(
        result.returncode,
        result.stdout.decode("utf-8", "surrogateescape"),
        stderr.splitlines()[0] if stderr else "",
    )


class Shells:
    """The Go shell pointed at the dqlite cluster and at our node."""

    def __init__(self, cluster: DqliteDemoCluster, node: DqlitepyServer) -> None:
        self.cluster = cluster
        self.node = node
        self.dqlite = list(cluster.addresses)
        self.ours = [node.address]

    def both(self, database: str, command: str, *, fmt: str = "tabular") -> tuple[Run, Run]:
        """Run ``command`` on dqlite, then on our node; return both runs."""
        return (
            go_shell(self.dqlite, database, command, fmt=fmt),
            go_shell(self.ours, database, command, fmt=fmt),
        )

    def same(self, database: str, command: str, *, fmt: str = "tabular") -> Run:
        """Run ``command`` on both and assert the runs are equal; return ours."""
        theirs, ours = self.both(database, command, fmt=fmt)
        assert ours == theirs, f"{command!r}: dqlite gave {theirs!r}, we gave {ours!r}"
        return ours

    def setup(self, database: str, command: str) -> None:
        """Run statements that must succeed quietly on both."""
        ran = self.same(database, command)
        assert ran == Run(0, "", ""), f"setup {command!r} failed: {ran!r}"

    def ours_only(self, database: str, command: str, *, fmt: str = "tabular") -> Run:
        """For commands that must never reach dqlite-demo (they crash or hang 1.11)."""
        return go_shell(self.ours, database, command, fmt=fmt)


@pytest.fixture
def shells(dqlite_cluster: DqliteDemoCluster, shared_dqlitepy_node: DqlitepyServer) -> Shells:
    return Shells(dqlite_cluster, shared_dqlitepy_node)


@pytest.fixture
def db() -> str:
    """A database name no other test uses (the same name on both servers)."""
    return f"go_{uuid.uuid4().hex[:12]}"


def _ok(stdout: str) -> Run:
    return Run(0, stdout, "")


# -- tables and values --------------------------------------------------------------------------


def test_create_tables(shells: Shells, db: str) -> None:
    shells.setup(
        db,
        "CREATE TABLE plain (a, b, c);"
        "CREATE TABLE typed (i INTEGER PRIMARY KEY, r REAL NOT NULL DEFAULT 0.5, t TEXT UNIQUE,"
        " b BLOB, d DATE, bo BOOLEAN);"
        "CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID;"
        "CREATE INDEX typed_r ON typed (r DESC);"
        "CREATE VIEW kv_keys AS SELECT k FROM kv;"
        "CREATE TABLE IF NOT EXISTS plain (x)",
    )
    ran = shells.same(db, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
    assert ran.returncode == 0
    lines = ran.stdout.splitlines()
    assert [line.split("|")[:3] for line in lines] == [
        ["table", "kv", "kv"],
        ["view", "kv_keys", "kv_keys"],
        ["table", "plain", "plain"],
        ["index", "sqlite_autoindex_typed_1", "typed"],
        ["table", "typed", "typed"],
        ["index", "typed_r", "typed"],
    ]
    assert lines[2] == "table|plain|plain|CREATE TABLE plain (a, b, c)"
    assert lines[3] == "index|sqlite_autoindex_typed_1|typed|<nil>"
    # DROP and ALTER go through as well.
    shells.setup(db, "ALTER TABLE plain ADD COLUMN d DATE; DROP VIEW kv_keys; DROP TABLE kv")
    ran = shells.same(db, "SELECT name FROM pragma_table_info('plain')")
    assert ran == _ok("a\nb\nc\nd\n")


# Each case: the table, the rows (as INSERT statements), the query and the shell's output.
VALUE_CASES: dict[str, tuple[str, str, str, str]] = {
    "integers": (
        "CREATE TABLE v (i INTEGER, u, r REAL)",
        "INSERT INTO v VALUES (0, 0, 0), (1, -1, 5), (42, 4294967296, -7);"
        "INSERT INTO v VALUES (9223372036854775807, -9223372036854775808, 9007199254740993);"
        "INSERT INTO v VALUES (-9223372036854775808, 9007199254740993, 9223372036854775807)",
        "SELECT i, u, r, typeof(i), typeof(u), typeof(r) FROM v ORDER BY rowid",
        "0|0|0|integer|integer|real\n"
        "1|-1|5|integer|integer|real\n"
        "42|4294967296|-7|integer|integer|real\n"
        "9223372036854775807|-9223372036854775808|9.007199254740992e+15|integer|integer|real\n"
        "-9223372036854775808|9007199254740993|9.223372036854776e+18|integer|integer|real\n",
    ),
    "integer-expressions": (
        "CREATE TABLE v (i INTEGER)",
        "INSERT INTO v VALUES (7)",
        "SELECT i + 1, i * -3, i / 2, i % 4, 9223372036854775807 + i, 5 / 0, '12' + i, "
        "CAST('0x10' AS INTEGER), 0x7fffffffffffffff, -i FROM v",
        "8|-21|3|3|9.223372036854776e+18|<nil>|19|0|9223372036854775807|-7\n",
    ),
    "reals": (
        "CREATE TABLE v (r REAL, u)",
        "INSERT INTO v VALUES (0.0, -0.0), (1.5, 0.1), (1e21, 1.5e300), (-2.5e-7, 1e-5);"
        "INSERT INTO v VALUES (0.0001, 123456.0), (1234567.0, 5e-324);"
        "INSERT INTO v VALUES (1.7976931348623157e308, 9e999), (-9e999, 1e15);"
        "INSERT INTO v VALUES (12345678.9, 1.0 / 3), (2.5e-310, 1e20)",
        "SELECT r, u, typeof(r), typeof(u) FROM v ORDER BY rowid",
        "0|-0|real|real\n"
        "1.5|0.1|real|real\n"
        "1e+21|1.5e+300|real|real\n"
        "-2.5e-07|1e-05|real|real\n"
        "0.0001|123456|real|real\n"
        "1.234567e+06|5e-324|real|real\n"
        "1.7976931348623157e+308|+Inf|real|real\n"
        "-Inf|1e+15|real|real\n"
        "1.23456789e+07|0.3333333333333333|real|real\n"
        "2.5e-310|1e+20|real|real\n",
    ),
    "real-expressions": (
        "CREATE TABLE v (r REAL)",
        "INSERT INTO v VALUES (2.5)",
        "SELECT r * 2, r / 0, -r, r + 0.1, 1e300 * 1e300, -0.0, 0.1 + 0.2, round(r), "
        "CAST(r AS INTEGER), 3.0 FROM v",
        "5|<nil>|-2.5|2.6|+Inf|-0|0.30000000000000004|3|2|3\n",
    ),
    "text": (
        "CREATE TABLE v (t TEXT, u)",
        "INSERT INTO v VALUES ('', 'plain'), ('héllo wörld', '日本語'), ('🎉 emoji', 'a|b');"
        "INSERT INTO v VALUES ('it''s', '  padded  '), ('tab' || char(9) || 'x', 'nl' || char(10));"
        "INSERT INTO v VALUES ('x' || char(0) || 'y', char(8238) || 'rtl');"
        "INSERT INTO v VALUES (42, 1.5)",
        "SELECT t, u, typeof(t), length(t) FROM v ORDER BY rowid",
        "|plain|text|0\n"
        "héllo wörld|日本語|text|11\n"
        "🎉 emoji|a|b|text|7\n"
        "it's|  padded  |text|4\n"
        "tab\tx|nl\n|text|5\n"
        # The protocol's text ends at the first NUL, on both servers.
        "x|\u202ertl|text|1\n"
        "42|1.5|text|2\n",
    ),
    "long-text": (
        "CREATE TABLE v (t TEXT)",
        "INSERT INTO v VALUES (printf('%.*c', 10000, 'x') || 'end')",
        "SELECT length(t), substr(t, 9995), t = printf('%.*c', 10000, 'x') || 'end' FROM v",
        "10003|xxxxxxend|1\n",
    ),
    "blobs": (
        "CREATE TABLE v (b BLOB, u)",
        "INSERT INTO v VALUES (x'', x'00'), (x'00ff7f80', zeroblob(5)), (x'deadbeef', 'x');"
        "INSERT INTO v VALUES (CAST('abc' AS BLOB), x'0a')",
        "SELECT b, u, typeof(b), length(b), hex(b) FROM v ORDER BY rowid",
        "[]|[0]|blob|0|\n"
        "[0 255 127 128]|[0 0 0 0 0]|blob|4|00FF7F80\n"
        "[222 173 190 239]|x|blob|4|DEADBEEF\n"
        "[97 98 99]|[10]|blob|3|616263\n",
    ),
    "nulls": (
        "CREATE TABLE v (i INTEGER, r REAL, t TEXT, b BLOB, u, d DATE, dt DATETIME, ts TIMESTAMP)",
        "INSERT INTO v VALUES (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);"
        "INSERT INTO v (i) VALUES (1)",
        "SELECT i, r, t, b, u, d, dt, ts, typeof(u), NULL, coalesce(u, 'dflt') FROM v "
        "ORDER BY rowid",
        "<nil>|<nil>|<nil>|<nil>|<nil>|<nil>|<nil>|<nil>|null|<nil>|dflt\n"
        "1|<nil>|<nil>|<nil>|<nil>|<nil>|<nil>|<nil>|null|<nil>|dflt\n",
    ),
    "date-integers": (
        "CREATE TABLE v (d DATE, dt DATETIME, ts TIMESTAMP, lower date)",
        "INSERT INTO v VALUES (0, 1700000000, -1, 86400);"
        "INSERT INTO v VALUES (253402300799, -62135596800, 951782400, 1);"
        "INSERT INTO v VALUES (9223372036854775807, -9223372036854775808, 1, 2)",
        "SELECT d, dt, ts, lower, typeof(d) FROM v ORDER BY rowid",
        "1970-01-01 00:00:00 +0000 UTC|2023-11-14 22:13:20 +0000 UTC|"
        "1969-12-31 23:59:59 +0000 UTC|1970-01-02 00:00:00 +0000 UTC|integer\n"
        "9999-12-31 23:59:59 +0000 UTC|0001-01-01 00:00:00 +0000 UTC|"
        "2000-02-29 00:00:00 +0000 UTC|1970-01-01 00:00:01 +0000 UTC|integer\n"
        "292277026596-12-04 15:30:07 +0000 UTC|292277026596-12-04 15:30:08 +0000 UTC|"
        "1970-01-01 00:00:01 +0000 UTC|1970-01-01 00:00:02 +0000 UTC|integer\n",
    ),
    "date-text": (
        "CREATE TABLE v (d DATE, dt DATETIME, ts TIMESTAMP)",
        "INSERT INTO v VALUES ('2024-01-02', '2024-01-02 03:04:05', '2024-01-02T03:04:05Z');"
        "INSERT INTO v VALUES ('2024-01-02 03:04:05.123456789', '2024-01-02T03:04:05+02:00',"
        " '2024-01-02 03:04');"
        "INSERT INTO v VALUES ('', '2024-02-29 23:59:59.5', '1999-12-31T23:59:59.999-05:30')",
        "SELECT d, dt, ts, typeof(d) FROM v ORDER BY rowid",
        "2024-01-02 00:00:00 +0000 UTC|2024-01-02 03:04:05 +0000 UTC|"
        "2024-01-02 03:04:05 +0000 UTC|text\n"
        "2024-01-02 03:04:05.123456789 +0000 UTC|2024-01-02 03:04:05 +0200 +0200|"
        "2024-01-02 03:04:00 +0000 UTC|text\n"
        # An empty text in a DATE column reads as NULL in go-dqlite.
        "<nil>|2024-02-29 23:59:59.5 +0000 UTC|1999-12-31 23:59:59.999 -0530 -0530|text\n",
    ),
    "date-expressions": (
        "CREATE TABLE v (d DATE, n INTEGER)",
        "INSERT INTO v VALUES (86400, 86400)",
        # The declared type follows a column through aliases and subqueries, not expressions.
        "SELECT d, d AS alias, d + 0, n, (SELECT d FROM v), max(d), date(d, 'unixepoch') FROM v",
        "1970-01-02 00:00:00 +0000 UTC|1970-01-02 00:00:00 +0000 UTC|86400|86400|"
        "1970-01-02 00:00:00 +0000 UTC|86400|1970-01-02\n",
    ),
    "booleans": (
        "CREATE TABLE v (b BOOLEAN, lower boolean, n INTEGER)",
        "INSERT INTO v VALUES (0, 1, 0), (1, 5, 1), (5, -1, 5);"
        "INSERT INTO v VALUES (9223372036854775807, -9223372036854775808, 2)",
        "SELECT b, lower, n, typeof(b), b + 0 FROM v ORDER BY rowid",
        "false|true|0|integer|0\n"
        "true|true|1|integer|1\n"
        "true|true|5|integer|5\n"
        "true|true|2|integer|9223372036854775807\n",
    ),
    "view-keeps-declared-types": (
        "CREATE TABLE v (d DATE, b BOOLEAN, i INTEGER); CREATE VIEW w AS SELECT d, b, i FROM v",
        "INSERT INTO v VALUES (3600, 1, 3600), ('2024-05-06', 0, 0)",
        "SELECT * FROM w ORDER BY i DESC",
        "1970-01-01 01:00:00 +0000 UTC|true|3600\n2024-05-06 00:00:00 +0000 UTC|false|0\n",
    ),
    "mixed-types-in-one-column": (
        "CREATE TABLE v (u)",
        "INSERT INTO v VALUES (1), (2.5), ('three'), (x'04'), (NULL)",
        "SELECT u, typeof(u) FROM v ORDER BY rowid",
        "1|integer\n2.5|real\nthree|text\n[4]|blob\n<nil>|null\n",
    ),
    "empty-result": (
        "CREATE TABLE v (d DATE, b BOOLEAN)",
        "INSERT INTO v VALUES (1, 1)",
        "SELECT * FROM v WHERE 0",
        "",
    ),
    "statement-forms": (
        "CREATE TABLE v (x)",
        "INSERT INTO v VALUES (1), (2); UPDATE v SET x = x * 10; DELETE FROM v WHERE x = 10;"
        "REPLACE INTO v (rowid, x) VALUES (1, 'one'); INSERT OR IGNORE INTO v (rowid) VALUES (1)",
        "select x from v order by rowid;  SELECT count(*) FROM v;SELECT 1 AS a, 2 AS a, NULL",
        "one\n20\n2\n1|2|<nil>\n",
    ),
}


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_values(shells: Shells, db: str, case: str) -> None:
    table, rows, query, expected = VALUE_CASES[case]
    shells.setup(db, table)
    shells.setup(db, rows)
    assert shells.same(db, query) == _ok(expected)


# -- documented differences in values ------------------------------------------------------------


def test_null_in_boolean_column(shells: Shells, db: str) -> None:
    # dqlite 1.11 types every value of a BOOLEAN column as BOOLEAN (query.c value_type), so a
    # NULL goes out as the integer 0 and reads back as false. We send NULL as NULL.
    shells.setup(db, "CREATE TABLE v (b BOOLEAN, n INTEGER); INSERT INTO v VALUES (NULL, 1)")
    theirs, ours = shells.both(db, "SELECT b, n, b IS NULL FROM v")
    assert theirs == _ok("false|1|1\n")
    assert ours == _ok("<nil>|1|1\n")


def test_wrong_types_in_date_and_boolean_columns(shells: Shells, db: str) -> None:
    # dqlite 1.11 asserts that a DATE column holds INTEGER, TEXT or NULL and a BOOLEAN column
    # INTEGER or NULL; anything else aborts the server, so this never goes to dqlite-demo. We
    # send such values with their storage type: the shell prints them as it prints any value.
    ours = shells.ours_only(
        db,
        "CREATE TABLE v (d DATE, dt DATETIME, b BOOLEAN);"
        "INSERT INTO v VALUES (1.5, x'0102', 'yes'), (x'ff', 2.5, 2.5), (NULL, NULL, x'00')",
    )
    assert ours == _ok("")
    assert shells.ours_only(db, "SELECT d, dt, b FROM v ORDER BY rowid") == _ok(
        "1.5|[1 2]|yes\n[255]|2.5|2.5\n<nil>|<nil>|[0]\n"
    )


def test_unparsable_text_in_date_column(shells: Shells, db: str) -> None:
    # Text in a DATE column is ISO8601 on the wire for both; go-dqlite fails to parse it.
    shells.setup(db, "CREATE TABLE v (d DATE); INSERT INTO v VALUES ('2024-01-02'), ('hello')")
    ran = shells.same(db, "SELECT d FROM v ORDER BY rowid")
    assert ran.returncode == 1
    assert (
        ran.error
        == 'Error: rows: parsing time "hello" as "2006-01-02": cannot parse "hello" as "2006"'
    )
    ran = shells.same(db, "SELECT d FROM v WHERE d = '2024-01-02'")
    assert ran == _ok("2024-01-02 00:00:00 +0000 UTC\n")


def test_invalid_utf8_text(shells: Shells, db: str) -> None:
    # dqlite passes the bytes of a text that is not UTF-8 through as they are; our engine
    # (APSW) cannot hand them out, so the query fails with an error and the connection lives on.
    query = "SELECT CAST(x'61ff62' AS TEXT)"
    theirs, ours = shells.both(db, query)
    assert theirs == _ok("a\udcffb\n")
    assert ours.returncode == 1
    assert ours.error == "Error: query: text value is not valid UTF-8"
    # As an EXEC it is just a statement that yields a row, on both.
    ran = shells.same(db, "CREATE TABLE v (t TEXT); INSERT INTO v VALUES (CAST(x'ff' AS TEXT))")
    assert ran == _ok("")
    ran = shells.same(db, "SELECT hex(t), typeof(t) FROM v")
    assert ran == _ok("FF|text\n")


def test_column_name_of_4096_bytes(shells: Shells, db: str) -> None:
    # dqlite 1.11 never fits such a column name into a 4096-byte batch and sends empty PART
    # batches forever (protocol.md §3.8): never sent to dqlite-demo. Ours sends the row.
    name = "c" * 5000
    assert shells.ours_only(db, f"SELECT 1 AS {name}, 2") == _ok("1|2\n")


# -- errors ---------------------------------------------------------------------------------------

# Each case: setup statements, the command, the first stderr line and the stdout before it.
ERROR_CASES: dict[str, tuple[str, str, str, str]] = {
    "query-no-such-table": ("", "SELECT * FROM x", "Error: query: no such table: x", ""),
    "exec-no-such-table": ("", "INSERT INTO x VALUES (1)", "Error: exec: no such table: x", ""),
    "exec-syntax": ("", "SELEC 1", 'Error: exec: near "SELEC": syntax error', ""),
    "query-syntax": ("", "SELECT FROM", 'Error: query: near "FROM": syntax error', ""),
    "incomplete": ("", "CREATE TABLE t (", "Error: exec: incomplete input", ""),
    "no-such-column": (
        "CREATE TABLE t (a)",
        "SELECT b FROM t",
        "Error: query: no such column: b",
        "",
    ),
    "table-exists": (
        "CREATE TABLE t (a)",
        "CREATE TABLE t (b)",
        "Error: exec: table t already exists",
        "",
    ),
    "unique": (
        "CREATE TABLE t (a UNIQUE); INSERT INTO t VALUES (1)",
        "INSERT INTO t VALUES (1)",
        "Error: exec: UNIQUE constraint failed: t.a",
        "",
    ),
    "primary-key": (
        "CREATE TABLE t (a INTEGER PRIMARY KEY, b); INSERT INTO t VALUES (1, 1)",
        "INSERT INTO t VALUES (1, 2)",
        "Error: exec: UNIQUE constraint failed: t.a",
        "",
    ),
    "not-null": (
        "CREATE TABLE t (a NOT NULL)",
        "INSERT INTO t VALUES (NULL)",
        "Error: exec: NOT NULL constraint failed: t.a",
        "",
    ),
    "check": (
        "CREATE TABLE t (a CHECK (a > 0))",
        "INSERT INTO t VALUES (-1)",
        "Error: exec: CHECK constraint failed: a > 0",
        "",
    ),
    # dqlite turns foreign keys on for every connection it opens.
    "foreign-key": (
        "CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (p REFERENCES p (id))",
        "INSERT INTO c VALUES (5)",
        "Error: exec: FOREIGN KEY constraint failed",
        "",
    ),
    "foreign-key-delete": (
        "CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (p REFERENCES p (id));"
        "INSERT INTO p VALUES (1); INSERT INTO c VALUES (1)",
        "DELETE FROM p",
        "Error: exec: FOREIGN KEY constraint failed",
        "",
    ),
    "exec-runtime": (
        "CREATE TABLE t (a)",
        "INSERT INTO t VALUES (abs(-9223372036854775808))",
        "Error: exec: integer overflow",
        "",
    ),
    "exec-of-a-query": (
        "",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "Error: exec: another row available",
        "",
    ),
    "pragma-with-rows": ("", "PRAGMA user_version", "Error: exec: another row available", ""),
    "stops-at-the-failing-statement": (
        "CREATE TABLE t (a); INSERT INTO t VALUES (1)",
        "SELECT a FROM t; INSERT INTO nosuch VALUES (1); SELECT 2",
        "Error: exec: no such table: nosuch",
        "1\n",
    ),
    "unknown-dot-command": ("", ".foo", 'Error: exec: near ".": syntax error', ""),
    "remove-unknown-node": (
        "",
        ".remove 1.2.3.4:5",
        'Error: no node has address "1.2.3.4:5"',
        "",
    ),
    "dump-without-address": (
        "",
        ".dump",
        "Error: bad command format, should be: .dump <address> [<database>]",
        "",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors(shells: Shells, db: str, case: str) -> None:
    setup, command, error, stdout = ERROR_CASES[case]
    if setup:
        shells.setup(db, setup)
    assert shells.same(db, command) == Run(1, stdout, error)


def test_failed_write_changed_nothing(shells: Shells, db: str) -> None:
    shells.setup(db, "CREATE TABLE t (a UNIQUE); INSERT INTO t VALUES (1), (2)")
    assert shells.same(db, "INSERT INTO t VALUES (3), (1)").returncode == 1
    assert shells.same(db, "SELECT group_concat(a) FROM t") == _ok("1,2\n")


@pytest.mark.parametrize(
    ("query", "first_column"),
    [
        ("SELECT abs(-9223372036854775808)", "abs(-9223372036854775808)"),
        ("SELECT 'a' AS first, abs(-9223372036854775808) AS second", "first"),
    ],
)
def test_runtime_error_in_first_batch(
    shells: Shells, db: str, query: str, first_column: str
) -> None:
    # dqlite 1.11 writes the FAILURE behind the half-built batch (protocol.md §3.1): go-dqlite
    # reads the column count as the code and the first column name as the message. Ours sends
    # SQLite's code and message.
    theirs, ours = shells.both(db, query)
    assert theirs == Run(1, "", f"Error: query: {first_column}")
    assert ours == Run(1, "", "Error: query: integer overflow")


def test_runtime_error_in_a_later_batch(shells: Shells, db: str) -> None:
    # The same 1.11 bug in a batch after the first: go-dqlite's Rows.Next reports "rows: id".
    shells.setup(
        db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY);"
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 4000)"
        " INSERT INTO t SELECT i FROM c",
    )
    query = "SELECT id, CASE WHEN id = 3000 THEN abs(-9223372036854775808) ELSE id END FROM t"
    theirs, ours = shells.both(db, query)
    # The shell collects every row before printing: nothing reaches stdout.
    assert theirs == Run(1, "", "Error: rows: id")
    assert ours == Run(1, "", "Error: rows: integer overflow")


# -- results of many batches ----------------------------------------------------------------------


def test_thousands_of_rows(shells: Shells, db: str) -> None:
    shells.setup(
        db,
        "CREATE TABLE big (id INTEGER PRIMARY KEY, t TEXT, r REAL, b BLOB, d DATE, f BOOLEAN);"
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 5000)"
        " INSERT INTO big SELECT i, 'row-' || i, i / 7.0, CAST(i AS BLOB),"
        " 1700000000 + i * 3600, i % 3 FROM c",
    )
    ran = shells.same(db, "SELECT * FROM big")
    lines = ran.stdout.splitlines()
    assert len(lines) == 5000
    assert lines[0] == "1|row-1|0.14285714285714285|[49]|2023-11-14 23:13:20 +0000 UTC|true"
    assert lines[-1] == (
        "5000|row-5000|714.2857142857143|[53 48 48 48]|2024-06-10 06:13:20 +0000 UTC|true"
    )
    assert lines[2] == "3|row-3|0.42857142857142855|[51]|2023-11-15 01:13:20 +0000 UTC|false"
    # -f json changes nothing for query rows in the 1.11 shell.
    assert shells.same(db, "SELECT * FROM big", fmt="json") == ran
    ran = shells.same(db, "SELECT id FROM big WHERE id > 4990 ORDER BY id DESC")
    assert ran == _ok("".join(f"{i}\n" for i in range(5000, 4990, -1)))


def test_100_kib_rows(shells: Shells, db: str) -> None:
    shells.setup(
        db,
        "CREATE TABLE bl (b BLOB, t TEXT);"
        "INSERT INTO bl VALUES (CAST(replace(hex(zeroblob(51200)), '00', 'ab') AS BLOB),"
        " printf('%.*c', 102400, 'z'));"
        "INSERT INTO bl VALUES (x'01', 'small')",
    )
    ran = shells.same(db, "SELECT b, length(b), t, length(t) FROM bl ORDER BY rowid")
    first, second = ran.stdout.splitlines()
    blob, blob_length, text, text_length = first.split("|")
    assert blob == "[" + " ".join(["97 98"] * 51200) + "]"
    assert (blob_length, text, text_length) == ("102400", "z" * 102400, "102400")
    assert second == "[1]|1|small|5"


# -- -f json ---------------------------------------------------------------------------------------


def test_json_query_output_is_tabular(shells: Shells, db: str) -> None:
    shells.setup(db, "CREATE TABLE t (a, b DATE); INSERT INTO t VALUES ('x', 0), (NULL, NULL)")
    ran = shells.same(db, "SELECT a, b FROM t ORDER BY rowid", fmt="json")
    assert ran == _ok("x|1970-01-01 00:00:00 +0000 UTC\n<nil>|<nil>\n")
    ran = shells.same(db, "SELECT * FROM nosuch", fmt="json")
    assert ran == Run(1, "", "Error: query: no such table: nosuch")


# -- dot commands ----------------------------------------------------------------------------------

_MEMBER = re.compile(r"^([0-9a-f]+)\|(127\.0\.0\.1:\d+)\|(voter|standby|spare)$")


def test_cluster(shells: Shells, db: str) -> None:
    theirs, ours = shells.both(db, ".cluster")
    assert theirs.returncode == ours.returncode == 0
    assert theirs.error == ours.error == ""
    their_lines = theirs.stdout.splitlines()
    our_lines = ours.stdout.splitlines()
    for line in their_lines + our_lines:
        assert _MEMBER.match(line), line
    assert sorted(line.split("|")[1] for line in their_lines) == sorted(shells.dqlite)
    assert {line.split("|")[2] for line in their_lines} == {"voter"}
    # Our single node looks like dqlite's first node with our address put in.
    bootstrap = shells.cluster.addresses[0]
    (their_first,) = [line for line in their_lines if line.split("|")[1] == bootstrap]
    assert their_first.startswith(_BOOTSTRAP_ID + "|")
    assert our_lines == [their_first.replace(bootstrap, shells.node.address)]


def _json_pairs(text: str) -> Any:
    # Keep the key order: Go's encoder writes fields in declaration order.
    return json.loads(text, object_pairs_hook=lambda pairs: pairs)


def test_cluster_json(shells: Shells, db: str) -> None:
    theirs, ours = shells.both(db, ".cluster", fmt="json")
    assert theirs.returncode == ours.returncode == 0
    their_members = _json_pairs(theirs.stdout)
    our_members = _json_pairs(ours.stdout)
    # Both are indented with tabs, as Go's json.MarshalIndent(v, "", "\t") writes it.
    assert theirs.stdout == json.dumps(json.loads(theirs.stdout), indent="\t") + "\n"
    assert ours.stdout == json.dumps(json.loads(ours.stdout), indent="\t") + "\n"
    assert len(their_members) == 3
    for member in their_members + our_members:
        assert [key for key, _ in member] == ["ID", "Address", "Role"]
    bootstrap = shells.cluster.addresses[0]
    (their_first,) = [m for m in their_members if dict(m)["Address"] == bootstrap]
    assert dict(their_first)["ID"] == int(_BOOTSTRAP_ID, 16)
    expected = [
        [(key, shells.node.address if key == "Address" else value) for key, value in their_first]
    ]
    assert our_members == expected


def test_leader(shells: Shells, db: str) -> None:
    theirs, ours = shells.both(db, ".leader")
    assert theirs == _ok(shells.cluster.leader() + "\n")
    assert theirs.stdout.strip() in shells.dqlite
    assert ours == _ok(shells.node.address + "\n")


def test_describe(shells: Shells, db: str) -> None:
    their_address = shells.cluster.leader()
    our_address = shells.node.address
    for fmt in ("tabular", "json"):
        theirs = go_shell(shells.dqlite, db, f".describe {their_address}", fmt=fmt)
        ours = go_shell(shells.ours, db, f".describe {our_address}", fmt=fmt)
        assert ours == Run(
            theirs.returncode, theirs.stdout.replace(their_address, our_address), theirs.error
        )
    assert ours.returncode == 0
    assert json.loads(ours.stdout) == {"FailureDomain": 0, "Weight": 0}
    assert ours.stdout == '{\n\t"FailureDomain": 0,\n\t"Weight": 0\n}\n'


def _weight(servers: list[str], address: str) -> int:
    ran = go_shell(servers, "x", f".describe {address}")
    assert ran.returncode == 0, ran
    shown_address, failure_domain, weight = ran.stdout.strip().split("|")
    assert (shown_address, failure_domain) == (address, "0")
    return int(weight)


def test_weight_then_describe(shells: Shells, db: str) -> None:
    their_address = shells.cluster.addresses[-1]
    our_address = shells.node.address
    before = {their_address: _weight(shells.dqlite, their_address)}
    before[our_address] = _weight(shells.ours, our_address)
    try:
        for servers, address in ((shells.dqlite, their_address), (shells.ours, our_address)):
            weight = before[address] + 5
            assert go_shell(servers, db, f".weight {address} {weight}") == _ok("")
            assert go_shell(servers, db, f".describe {address}") == _ok(f"{address}|0|{weight}\n")
        theirs = go_shell(shells.dqlite, db, f".weight {their_address} x")
        ours = go_shell(shells.ours, db, f".weight {our_address} x")
        assert ours == theirs
        assert ours.returncode == 1
    finally:
        for servers, address in ((shells.dqlite, their_address), (shells.ours, our_address)):
            go_shell(servers, db, f".weight {address} {before[address]}")
    assert _weight(shells.dqlite, their_address) == before[their_address]
    assert _weight(shells.ours, our_address) == before[our_address]


def _read_database(path: Path) -> dict[str, Any]:
    """Schema, rows and integrity of a database file, read with the stdlib sqlite3."""
    conn = sqlite3.connect(path)
    try:
        schema = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        tables = [name for kind, name, _ in schema if kind == "table"]
        rows = {
            name: conn.execute(f'SELECT * FROM "{name}" ORDER BY rowid').fetchall()
            for name in tables
        }
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return {"schema": schema, "rows": rows, "integrity": integrity}


@pytest.fixture
def dump_dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    theirs, ours = tmp_path / "dqlite", tmp_path / "dqlitepy"
    theirs.mkdir()
    ours.mkdir()
    yield theirs, ours


def test_dump(shells: Shells, db: str, dump_dirs: tuple[Path, Path]) -> None:
    shells.setup(
        db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT, r REAL, b BLOB, d DATE, f BOOLEAN);"
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000)"
        " INSERT INTO t SELECT i, 'row-' || i, i * 0.5, CAST(i AS BLOB), i, i % 2 FROM c;"
        "CREATE INDEX t_s ON t (s); CREATE TABLE e (x); INSERT INTO t VALUES (-1, NULL, NULL,"
        " x'00ff', '2024-01-02', 1); UPDATE t SET s = 'updated' WHERE id = 7; DELETE FROM t"
        " WHERE id BETWEEN 100 AND 200",
    )
    their_dir, our_dir = dump_dirs
    their_address = shells.cluster.leader()
    theirs = go_shell(shells.dqlite, db, f".dump {their_address} {db}", cwd=their_dir)
    ours = go_shell(shells.ours, db, f".dump {shells.node.address} {db}", cwd=our_dir)
    assert theirs == ours == _ok("OK\n")
    # Both write the database and its WAL, named after the database. dqlite keeps the recent
    # pages in the WAL (it checkpoints rarely); ours may have checkpointed them already.
    assert sorted(p.name for p in their_dir.iterdir()) == [db, f"{db}-wal"]
    assert sorted(p.name for p in our_dir.iterdir()) == [db, f"{db}-wal"]
    assert (their_dir / db).read_bytes()[:16] == (our_dir / db).read_bytes()[:16]
    assert (our_dir / db).read_bytes().startswith(b"SQLite format 3\x00")
    their_contents = _read_database(their_dir / db)
    our_contents = _read_database(our_dir / db)
    assert our_contents == their_contents
    assert our_contents["integrity"] == [("ok",)]
    rows = our_contents["rows"]["t"]
    assert len(rows) == 3000 - 101 + 1
    assert rows[0] == (-1, None, None, b"\x00\xff", "2024-01-02", 1)
    assert rows[7] == (7, "updated", 3.5, b"7", 7, 1)
    assert our_contents["rows"]["e"] == []


def test_dump_of_a_missing_database(shells: Shells, db: str, dump_dirs: tuple[Path, Path]) -> None:
    their_dir, our_dir = dump_dirs
    theirs = go_shell(shells.dqlite, db, f".dump {shells.cluster.leader()} {db}", cwd=their_dir)
    ours = go_shell(shells.ours, db, f".dump {shells.node.address} {db}", cwd=our_dir)
    assert theirs == ours == _ok("OK\n")
    for directory in dump_dirs:
        files = {p.name: p.stat().st_size for p in directory.iterdir()}
        assert files == {db: 0, f"{db}-wal": 0}
