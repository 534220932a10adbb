"""``dqlitepy shell`` against a real dqlite cluster, compared with the Go ``dqlite`` shell."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from dqlite_cluster import DqliteDemoCluster

from dqlitepy.cli import format_value
from dqlitepy.cli.script import Command, DotCommand, ScriptReader, Statement


def _ours(
    servers: list[str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "dqlitepy", "shell", "-s", ",".join(servers), *args]
    return subprocess.run(
        argv, capture_output=True, text=True, input=stdin, timeout=60, check=False
    )


@pytest.fixture
def database(dqlite_cluster: DqliteDemoCluster) -> str:
    name = f"cli_{uuid.uuid4().hex[:8]}"
    dqlite_cluster.shell(
        "CREATE TABLE t (i INTEGER, f REAL, s TEXT, b BLOB, n)",
        database=name,
    )
    dqlite_cluster.shell(
        "INSERT INTO t VALUES (42, 1234567.0, 'héllo wörld', x'0102ff', NULL);"
        "INSERT INTO t VALUES (-9223372036854775808, 0.1, '', x'', 1.5e-7);"
        "INSERT INTO t VALUES (9223372036854775807, -2.5, 'a|b', NULL, 100.0)",
        database=name,
    )
    return name


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM t ORDER BY i",
        "SELECT count(*), sum(f), max(s) FROM t",
        "SELECT 1e21, 123456.0, 0.0001, 0.00001, -0.0, 1e300*1e300, 0.1+0.2",
        "SELECT i FROM t WHERE 0",
    ],
)
def test_query_output_matches_go_shell(
    dqlite_cluster: DqliteDemoCluster, database: str, query: str
) -> None:
    expected = dqlite_cluster.shell(query, database=database)
    result = _ours(dqlite_cluster.addresses, database, query)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == expected


def test_cluster_and_leader_match_go_shell(
    dqlite_cluster: DqliteDemoCluster, database: str
) -> None:
    leader = dqlite_cluster.leader()
    for fmt in ("tabular", "json"):
        for command in (".cluster", ".leader", f".describe {leader}"):
            expected = dqlite_cluster.shell(command, database=database, format=fmt)
            result = _ours(dqlite_cluster.addresses, "-f", fmt, database, command)
            assert result.returncode == 0, result.stderr
            assert result.stdout.rstrip("\n") == expected, (fmt, command)


def test_statements_from_stdin(dqlite_cluster: DqliteDemoCluster, database: str) -> None:
    # As the Go shell: a prompt before each line read, even from a pipe (more in
    # test_shell_scripts.py).
    script = "INSERT INTO t (i) VALUES (7);\nSELECT i FROM t WHERE i = 7;\n"
    result = _ours(dqlite_cluster.addresses, database, stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "dqlite> dqlite> 7\ndqlite> "


def _read(*lines: str) -> list[Command]:
    reader = ScriptReader()
    return [c for line in lines for c in reader.feed(line)] + reader.finish()


@pytest.mark.parametrize(
    ("lines", "commands"),
    [
        (["SELECT 1; SELECT 2;"], [Statement("SELECT 1;"), Statement("SELECT 2;")]),
        (["SELECT 'a;", "b'; SELECT", "2"], [Statement("SELECT 'a;\nb';"), Statement("SELECT\n2")]),
        (
            ['SELECT "x;y", `z;`, [w;] -- c;', "FROM t;"],
            [Statement('SELECT "x;y", `z;`, [w;] -- c;\nFROM t;')],
        ),
        (["/* a; .leader", ".leader */ SELECT 1;"], [Statement("SELECT 1;")]),
        ([" .leader ", "SELECT 1"], [DotCommand(".leader"), Statement("SELECT 1")]),
        (
            ["SELECT 1", ".cluster", ".5;"],
            [Statement("SELECT 1"), DotCommand(".cluster"), Statement(".5;")],
        ),
        (["SELECT 1 +", ".5;"], [Statement("SELECT 1 +\n.5;")]),
        (
            [
                "CREATE TRIGGER r AFTER INSERT ON t BEGIN",
                "  INSERT INTO u VALUES (1);",
                "END; SELECT 2;",
            ],
            [
                Statement(
                    "CREATE TRIGGER r AFTER INSERT ON t BEGIN\n  INSERT INTO u VALUES (1);\nEND;"
                ),
                Statement("SELECT 2;"),
            ],
        ),
        (["-- only; a comment", ";;", ""], []),
    ],
)
def test_script_reader(lines: list[str], commands: list[Command]) -> None:
    assert _read(*lines) == commands


def test_script_reader_runs_what_a_line_completes_at_once() -> None:
    reader = ScriptReader()
    assert reader.feed("SELECT 1; SELECT") == [Statement("SELECT 1;")]
    assert reader.pending
    assert reader.feed("2; -- done") == [Statement("SELECT\n2;")]
    assert not reader.pending
    assert reader.feed("SELECT '") == []
    assert reader.pending and not reader.is_dot_command(".leader")
    reader.finish()
    assert reader.feed("CREATE TRIGGER r AFTER INSERT ON t BEGIN SELECT 1;") == []
    assert not reader.is_dot_command(".leader")  # inside the trigger's body


def test_sql_error_exits_1_with_message(dqlite_cluster: DqliteDemoCluster, database: str) -> None:
    result = _ours(dqlite_cluster.addresses, database, "SELECT * FROM nosuch")
    assert result.returncode == 1
    assert "no such table: nosuch" in result.stderr
    assert result.stdout == ""


def test_usage_error_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dqlitepy", "shell"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "usage" in result.stderr.lower()


def test_json_format(dqlite_cluster: DqliteDemoCluster, database: str) -> None:
    result = _ours(
        dqlite_cluster.addresses, "-f", "json", database, "SELECT i, s FROM t WHERE i = 42"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[{"i": 42, "s": "h\\u00e9llo w\\u00f6rld"}]'


def test_options_between_database_and_sql(
    dqlite_cluster: DqliteDemoCluster, database: str
) -> None:
    # The synopsis of docs/server.md puts the options after DATABASE, as the Go shell allows.
    result = _ours(
        dqlite_cluster.addresses, database, "-f", "json", "SELECT i FROM t WHERE i = 42"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[{"i": 42}]'
    # Still a usage error: two statements where one may go.
    result = _ours(dqlite_cluster.addresses, database, "-f", "json", "SELECT 1", "SELECT 2")
    assert result.returncode == 2
    assert "unrecognized arguments: SELECT 1 SELECT 2" in result.stderr


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "<nil>"),
        (True, "true"),
        (b"\x01\x02", "[1 2]"),
        (b"", "[]"),
        (1234567.0, "1.234567e+06"),
        (123456.0, "123456"),
        (9007199254740993.0, "9.007199254740992e+15"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (float("-inf"), "-Inf"),
        (float("nan"), "NaN"),
        (-0.0, "-0"),
        (5e-324, "5e-324"),
        ("text", "text"),
    ],
)
def test_format_value_like_go(value: object, text: str) -> None:
    assert format_value(value) == text
