"""Tests of dqlitepy.client.sqltext, checked against the stdlib sqlite3 wherever it can tell."""

from __future__ import annotations

import collections
import re
import sqlite3
from collections.abc import Iterator, Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dqlitepy.client.errors import OperationalError, ProgrammingError
from dqlitepy.client.sqltext import (
    ParsedSQL,
    bind_values,
    has_more_statements,
    is_complete,
    parse,
    split_statements,
)

_USES = re.compile(r"The current statement uses (\d+), and there are \d+ supplied\.")


@pytest.fixture(scope="module")
def db() -> Iterator[sqlite3.Connection]:
    # Columns named like the tricky identifiers, so quoted-identifier fragments compile.
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute('CREATE TABLE t("?", "a""?", ":a")')
    conn.execute("INSERT INTO t VALUES (1, 2, 3)")
    yield conn
    conn.close()


def _stdlib_param_count(conn: sqlite3.Connection, sql: str) -> int:
    """Ask SQLite for sqlite3_bind_parameter_count by supplying too many bindings."""
    with pytest.raises(sqlite3.ProgrammingError) as info:
        conn.execute(sql, (None,) * 1000)
    match = _USES.search(str(info.value))
    assert match is not None, str(info.value)
    return int(match.group(1))


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "count", "names"),
    [
        ("SELECT 1", 0, ()),
        ("SELECT ?", 1, (None,)),
        ("SELECT :a, @b, $c, ?5", 5, (":a", "@b", "$c", None, "?5")),
        ("SELECT ?, ?3, ?", 4, (None, None, "?3", None)),
        ("SELECT :a, :a, @a, :b, :a", 3, (":a", "@a", ":b")),
        ("SELECT ?2, :a", 3, (None, "?2", ":a")),
        ("SELECT :a, ?1", 1, (":a",)),
        ("SELECT ?1, :a", 2, ("?1", ":a")),
        ("SELECT ?1, ?01, ?1", 1, ("?1",)),
        ("SELECT ?, ?1", 1, ("?1",)),
        ("SELECT :a, ?3, @b, ?, ?1, :a, ?5", 5, (":a", None, "?3", "@b", "?5")),
        ("SELECT :a$b, :c", 2, (":a$b", ":c")),
        ("SELECT :a::b, $x::y(z w", 2, (":a::b", "$x::y")),
        ("SELECT $f(x), #q", 2, ("$f(x)", "#q")),
        ("SELECT :été, :日本", 2, (":été", ":日本")),
        ("SELECT :1abc", 1, (":1abc",)),
    ],
)
def test_parameter_numbering(sql: str, count: int, names: tuple[str | None, ...]) -> None:
    parsed = parse(sql)
    assert parsed.param_count == count
    assert parsed.param_names == names


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT '?'",
        "SELECT 'it''s ?', ':a'",
        'SELECT "?"',
        'SELECT "a""?"',
        "SELECT [?]",
        "SELECT `?`",
        "SELECT `a``?`",
        "SELECT x'3f'",
        "SELECT X'3f'",
        "SELECT 1 -- ? :a @b $c",
        "SELECT 1 /* ? :a */",
        "SELECT 1 /* ? :a",
        "SELECT 'unterminated ?",
        "SELECT : a, :, @ , $",
    ],
)
def test_not_parameters(sql: str) -> None:
    assert parse(sql).param_count == 0


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT :a, @b, $c, ?5",
        "SELECT ?, ?3, ?",
        "SELECT :a, :a, @a, :b",
        "SELECT ?2, :a",
        "SELECT :a, ?1",
        "SELECT ?1, :a",
        "SELECT :a::b, $f(x), #q, :a$b, :été",
        "SELECT '?', \"?\", [?], `?`, x'3f' /* ? */ -- ?\n, ? FROM t",
        "SELECT ?/**/+?",
        "SELECT ?--?\n+?",
        "SELECT 1 /* ? */",
    ],
)
def test_parameter_count_matches_sqlite(db: sqlite3.Connection, sql: str) -> None:
    assert parse(sql).param_count == _stdlib_param_count(db, sql)


_PARAM_FRAGMENTS = [
    "?",
    "?1",
    "?2",
    "?4",
    "?7",
    "?01",
    ":a",
    ":b",
    "@a",
    "@b",
    "$a",
    "$a::b",
    "$f(x)",
    "#a",
    ":a$b",
    ":é",
]
_PLAIN_FRAGMENTS = [
    "'?'",
    "'it''s ? :a'",
    "x'3f'",
    "X''",
    '"?"',
    "[?]",
    "`?`",
    '"a""?"',
    "[:a]",
    "1",
    "-1",
    "1.5e3",
    "0x1f",
    "CASE WHEN 1 THEN 2 END",
    "'--'",
    "'/*'",
]
_JUNK = ["", " ", "\n", "\t", "/* ? :a */", "-- ? :x\n", "/**/"]


@st.composite
def _select_with_params(draw: st.DrawFn) -> str:
    items = draw(
        st.lists(
            st.tuples(
                st.sampled_from(_JUNK),
                st.sampled_from(_PARAM_FRAGMENTS + _PLAIN_FRAGMENTS),
            ),
            min_size=1,
            max_size=12,
        )
    )
    return "SELECT " + ", ".join(junk + item for junk, item in items) + " FROM t"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_select_with_params())
def test_parameter_count_matches_sqlite_random(db: sqlite3.Connection, sql: str) -> None:
    assert parse(sql).param_count == _stdlib_param_count(db, sql)


@settings(max_examples=200)
@given(_select_with_params())
def test_parameter_names_match_sqlite_random(sql: str) -> None:
    apsw = pytest.importorskip("apsw")
    conn = apsw.Connection(":memory:")
    try:
        conn.execute('CREATE TABLE t("?", "a""?", ":a"); INSERT INTO t VALUES (1, 2, 3)')
        cursor = conn.cursor()
        parsed = parse(sql)
        cursor.execute(sql, (None,) * parsed.param_count)
        # apsw reports sqlite3_bind_parameter_name without the prefix character.
        expected = tuple(cursor.bindings_names)
        assert tuple(None if n is None else n[1:] for n in parsed.param_names) == expected
    finally:
        conn.close()


@pytest.mark.parametrize("sql", ["SELECT ?0", "SELECT ?250001", "SELECT ?" + "9" * 5000])
def test_parameter_number_out_of_range(db: sqlite3.Connection, sql: str) -> None:
    with pytest.raises(OperationalError) as ours:
        parse(sql)
    with pytest.raises(sqlite3.OperationalError) as theirs:
        db.execute(sql)
    assert str(ours.value) == str(theirs.value)
    assert ours.value.sqlite_errorcode == 1


def test_parameter_number_at_limit() -> None:
    assert parse("SELECT ?250000").param_count == 250000


def test_too_many_parameters() -> None:
    with pytest.raises(OperationalError, match="too many SQL variables"):
        parse("SELECT " + ",".join(["?"] * 250_001))


def test_only_first_statement_counts() -> None:
    parsed = parse("SELECT ?, ?; SELECT ?, ?, ?")
    assert parsed.param_count == 2
    assert parsed.tail == " SELECT ?, ?, ?"


# ---------------------------------------------------------------------------
# Statement boundaries
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "first", "tail"),
    [
        ("SELECT 1", "SELECT 1", ""),
        ("SELECT 1;", "SELECT 1;", ""),
        ("SELECT 1; SELECT 2", "SELECT 1;", " SELECT 2"),
        ("SELECT ';'; SELECT 2", "SELECT ';';", " SELECT 2"),
        ("SELECT 1 -- ;\n; x", "SELECT 1 -- ;\n;", " x"),
        ("SELECT 1 /* ; */; x", "SELECT 1 /* ; */;", " x"),
        ('SELECT ";" AS [;], `;`; x', 'SELECT ";" AS [;], `;`;', " x"),
        (";; -- c\n SELECT 1; ", ";; -- c\n SELECT 1;", " "),
        ("  ;  ", "  ;  ", ""),
        ("", "", ""),
        ("SELECT 'open; SELECT 2", "SELECT 'open; SELECT 2", ""),
        (
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END; SELECT 3",
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END;",
            " SELECT 3",
        ),
    ],
)
def test_first_and_tail(sql: str, first: str, tail: str) -> None:
    parsed = parse(sql)
    assert (parsed.first, parsed.tail) == (first, tail)
    assert parsed.first + parsed.tail == sql


@pytest.mark.parametrize(
    ("tail", "more"),
    [
        ("", False),
        ("   \n\t", False),
        (";", False),
        (" ; ;; ", False),
        ("-- SELECT 2", False),
        ("/* SELECT 2 */", False),
        ("/* SELECT 2", False),
        ("-- x\n SELECT 2", True),
        ("x", True),
        ("/", True),
        # SQLite's tokenizer reads a "/*" at the very end as two operators, but sqlite3
        # skips it as an empty comment (CPython's test_execute_with_appended_comments).
        ("/*", False),
        ("/*x", False),
        ("/ *", True),
        ("'", True),
        ("(", True),
    ],
)
def test_has_more_statements(tail: str, more: bool) -> None:
    assert has_more_statements(tail) is more


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; SELECT 2",
        "SELECT 1; x",
        "SELECT 1; -- c\n SELECT 2",
        "SELECT 1;/**/(",
        "SELECT 1; ;X",
    ],
)
def test_multiple_statements_like_sqlite(db: sqlite3.Connection, sql: str) -> None:
    with pytest.raises(sqlite3.ProgrammingError, match="one statement at a time"):
        db.execute(sql)
    assert has_more_statements(parse(sql).tail)


@pytest.mark.parametrize("sql", ["SELECT 1", "SELECT 1;", "SELECT 1; -- x", "SELECT 1; /* x */ "])
def test_single_statement_like_sqlite(db: sqlite3.Connection, sql: str) -> None:
    db.execute(sql)
    assert not has_more_statements(parse(sql).tail)


_TRIGGER_CASE = (
    "CREATE TRIGGER tr AFTER INSERT ON log\n"
    "WHEN (CASE new.x WHEN 1 THEN 1 ELSE 1 END)\n"
    "BEGIN\n"
    "  INSERT INTO log2 VALUES (CASE WHEN new.x = 1 THEN 'end;' ELSE 2 END);\n"
    "  -- a comment with END; in it\n"
    "  UPDATE log2 SET y = CASE y WHEN 0 THEN 0 ELSE y END WHERE y = 'END';\n"
    "END;"
)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("", []),
        (" ; ;; -- x\n", []),
        ("SELECT 1; SELECT 2", ["SELECT 1;", "SELECT 2"]),
        ("SELECT 1 -- trailing", ["SELECT 1"]),
        ("  SELECT 1 ;\n\n-- c\nSELECT 2;", ["SELECT 1 ;", "SELECT 2;"]),
        ("/* lead */ SELECT 1;", ["SELECT 1;"]),
        (
            "BEGIN; INSERT INTO log VALUES (1); END;",
            ["BEGIN;", "INSERT INTO log VALUES (1);", "END;"],
        ),
        (_TRIGGER_CASE + "\nSELECT 1;", [_TRIGGER_CASE, "SELECT 1;"]),
        (
            "CREATE TEMP TRIGGER t2 BEFORE DELETE ON log BEGIN DELETE FROM log2; END ; SELECT 2",
            [
                "CREATE TEMP TRIGGER t2 BEFORE DELETE ON log BEGIN DELETE FROM log2; END ;",
                "SELECT 2",
            ],
        ),
        (
            "create temporary trigger if not exists t3 after update on log begin\n"
            "select 1; select 2;\nend\n;select 3",
            [
                "create temporary trigger if not exists t3 after update on log begin\n"
                "select 1; select 2;\nend\n;",
                "select 3",
            ],
        ),
        (
            "EXPLAIN CREATE TRIGGER t4 AFTER INSERT ON log BEGIN SELECT 1; END; SELECT 2;",
            ["EXPLAIN CREATE TRIGGER t4 AFTER INSERT ON log BEGIN SELECT 1; END;", "SELECT 2;"],
        ),
        # Not a trigger: "trigger" as a column name does not start trigger mode.
        ("SELECT trigger FROM x; SELECT 2", ["SELECT trigger FROM x;", "SELECT 2"]),
        ("CREATE TABLE trigger(a); SELECT 2", ["CREATE TABLE trigger(a);", "SELECT 2"]),
    ],
)
def test_split_statements(script: str, expected: list[str]) -> None:
    assert split_statements(script) == expected


def test_trigger_pieces_run_one_by_one() -> None:
    script = (
        "CREATE TABLE log(x); CREATE TABLE log2(y);\n"
        + _TRIGGER_CASE
        + "\nINSERT INTO log VALUES (1); INSERT INTO log VALUES (2);"
    )
    pieces = split_statements(script)
    assert len(pieces) == 5
    ours = sqlite3.connect(":memory:", isolation_level=None)
    theirs = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for piece in pieces:
            ours.execute(piece)  # raises if a piece held more than one statement
        theirs.executescript(script)
        assert list(ours.iterdump()) == list(theirs.iterdump())
        assert ours.execute("SELECT y FROM log2 ORDER BY rowid").fetchall() == [("end;",), (2,)]
    finally:
        ours.close()
        theirs.close()


_STATEMENTS = [
    "INSERT INTO log VALUES ('a;b')",
    "INSERT INTO log VALUES (1) -- c;\n",
    'INSERT INTO log VALUES ("x")',
    "UPDATE log2 SET y = CASE WHEN y IS NULL THEN 0 ELSE y END",
    "SELECT 'END;' /* ; */",
    "SELECT [a;b] FROM (SELECT 1 AS [a;b])",
    "CREATE TRIGGER IF NOT EXISTS tr1 AFTER INSERT ON log BEGIN "
    "INSERT INTO log2 VALUES (CASE WHEN new.x = 1 THEN 'end' ELSE 2 END); "
    "UPDATE log2 SET y = y; END",
    "CREATE TEMP TRIGGER IF NOT EXISTS tr2 AFTER UPDATE ON log2 BEGIN SELECT 1; END",
    "DELETE FROM log WHERE x = ';'",
]
_SEPARATORS = [";", ";\n", "; -- x\n", ";;", ";/* ; */;", " ;\t"]


@settings(max_examples=150)
@given(
    st.lists(st.tuples(st.sampled_from(_STATEMENTS), st.sampled_from(_SEPARATORS)), max_size=8),
    st.booleans(),
)
def test_split_statements_random(parts: list[tuple[str, str]], last_unterminated: bool) -> None:
    script = "".join(statement + separator for statement, separator in parts)
    expected = [statement + separator[: separator.index(";") + 1] for statement, separator in parts]
    if parts and last_unterminated:
        script = "".join(statement + separator for statement, separator in parts[:-1])
        script += parts[-1][0].rstrip("\n")
        expected[-1] = parts[-1][0].rstrip("\n")
        if expected[-1].endswith("-- c;"):
            expected[-1] = expected[-1][: -len(" -- c;")]
        elif expected[-1].endswith("/* ; */"):
            expected[-1] = expected[-1][: -len(" /* ; */")]
    assert split_statements(script) == expected
    ours = sqlite3.connect(":memory:", isolation_level=None)
    theirs = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for conn in (ours, theirs):
            conn.execute("CREATE TABLE log(x)")
            conn.execute("CREATE TABLE log2(y)")
        for piece in split_statements(script):
            assert parse(piece).first == piece
            ours.execute(piece)
        theirs.executescript(script)
        assert list(ours.iterdump()) == list(theirs.iterdump())
    finally:
        ours.close()
        theirs.close()


_COMPLETE_FRAGMENTS = [
    "SELECT 1",
    ";",
    " ",
    "\n",
    "'a;",
    "'",
    '"b;"',
    "[c;",
    "]",
    "`",
    "-- x;",
    "/*",
    "*/",
    "/* ; */",
    "CREATE",
    "TEMP",
    "TRIGGER",
    "BEGIN",
    "END",
    "EXPLAIN",
    "CASE",
    "x",
    "(",
]


@settings(max_examples=500)
@given(st.lists(st.sampled_from(_COMPLETE_FRAGMENTS), max_size=12).map(" ".join))
def test_is_complete_matches_sqlite(sql: str) -> None:
    assert is_complete(sql) == sqlite3.complete_statement(sql)


# ---------------------------------------------------------------------------
# Statement kind
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "keyword", "is_dml", "returns_rows", "is_empty"),
    [
        ("SELECT 1", "SELECT", False, True, False),
        ("  -- c\n/* d */ select 1", "SELECT", False, True, False),
        ("values (1)", "VALUES", False, True, False),
        ("PRAGMA user_version", "PRAGMA", False, True, False),
        ("EXPLAIN QUERY PLAN SELECT 1", "EXPLAIN", False, True, False),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH", False, True, False),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "WITH", False, True, False),
        ("INSERT INTO t VALUES (1)", "INSERT", True, False, False),
        ("insert into t values (1) returning *", "INSERT", True, True, False),
        ("UPDATE t SET a = 1", "UPDATE", True, False, False),
        ("UPDATE t SET a = 'returning'", "UPDATE", True, False, False),
        ("DELETE FROM t /* returning */", "DELETE", True, False, False),
        ("DELETE FROM t RETURNING a", "DELETE", True, True, False),
        ("REPLACE INTO t VALUES (1)", "REPLACE", True, False, False),
        ("Replace Into t Values (1) Returning a", "REPLACE", True, True, False),
        ("CREATE TABLE x(a)", "CREATE", False, False, False),
        ("BEGIN", "BEGIN", False, False, False),
        ("(SELECT 1)", "", False, False, False),
        ('"SELECT"', "", False, False, False),
        ("insertx INTO t", "INSERTX", False, False, False),
        ("", "", False, False, True),
        ("  ", "", False, False, True),
        (";;", "", False, False, True),
        ("-- SELECT 1", "", False, False, True),
        ("/* SELECT 1 */ ;", "", False, False, True),
        (";;INSERT INTO t VALUES (1)", "INSERT", True, False, False),
    ],
)
def test_statement_kind(
    sql: str, keyword: str, is_dml: bool, returns_rows: bool, is_empty: bool
) -> None:
    parsed = parse(sql)
    assert parsed.keyword == keyword
    assert parsed.is_dml is is_dml
    assert parsed.returns_rows_hint is returns_rows
    assert parsed.is_empty is is_empty


def test_parsed_sql_is_frozen_and_cached() -> None:
    sql = "SELECT ? -- cached"
    parsed = parse(sql)
    assert parse(sql) is parsed
    assert isinstance(parsed, ParsedSQL)
    with pytest.raises(AttributeError):
        parsed.first = "x"  # type: ignore[misc]


def test_parse_handles_any_text() -> None:
    for sql in ["\x00", "\v", "\u00a0select", "'", '"', "`", "[", "x'", "/", "-", "$", "?", "#"]:
        parse(sql)
        split_statements(sql)
        is_complete(sql)


# ---------------------------------------------------------------------------
# bind_values
# ---------------------------------------------------------------------------


class _DefaultDict(dict[str, object]):
    def __missing__(self, key: str) -> object:
        return f"default {key}"


class _Row:
    """A sqlite3.Row-like sequence: len and integer indexing, no list/tuple base."""

    def __init__(self, *values: object) -> None:
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: int) -> object:
        return self._values[index]


def _outcome(call: collections.abc.Callable[[], object]) -> tuple[str, object]:
    try:
        return ("ok", call())
    except Exception as exc:
        return (type(exc).__name__, str(exc))


_BIND_CASES: list[tuple[str, object]] = [
    ("SELECT 1", ()),
    ("SELECT 1", []),
    ("SELECT 1", {}),
    ("SELECT ?", (1,)),
    ("SELECT ?", [1]),
    ("SELECT ?, ?", (1,)),
    ("SELECT ?, ?", (1, 2, 3)),
    ("SELECT ?", ()),
    ("SELECT ?2", (1, 2)),
    ("SELECT ?2", (1,)),
    ("SELECT :a, :b", (1, 2)),
    ("SELECT :a, :b", {"a": 1, "b": 2}),
    ("SELECT :a, @a, $a", {"a": 1}),
    ("SELECT :a, :b", {"a": 1}),
    ("SELECT @x", {}),
    ("SELECT :x", _DefaultDict()),
    ("SELECT :a, :a, ?3", {"a": 1, "3": 3}),
    ("SELECT ?1", {"1": 5}),
    ("SELECT ?3", {"3": 1}),
    ("SELECT ?", {}),
    ("SELECT ?, :a", {"a": 1}),
    ("SELECT :a, ?", {"a": 1}),
    ("SELECT ?", "a"),
    ("SELECT ?, ?", "ab"),
    ("SELECT ?", b"a"),
    ("SELECT ?", 5),
    ("SELECT ?", None),
    ("SELECT ?", {1}),
    ("SELECT ?, ?", _Row(1, 2)),
    ("SELECT ?, ?", _Row(1)),
    ("SELECT :a::b, $f(x)", {"a::b": 1, "f(x)": 2}),
]


@pytest.mark.parametrize(("sql", "params"), _BIND_CASES)
def test_bind_values_like_sqlite(db: sqlite3.Connection, sql: str, params: object) -> None:
    theirs = _outcome(lambda: db.execute(sql, params).fetchall())  # type: ignore[arg-type]
    ours = _outcome(lambda: bind_values(parse(sql), params))  # type: ignore[arg-type]
    if theirs[0] != "ok":
        assert ours == theirs
        return
    assert ours[0] == "ok"
    values = ours[1]
    assert isinstance(values, list)
    assert len(values) == parse(sql).param_count
    # Bound by position, our values must give the rows sqlite3 gives.
    assert db.execute(sql, tuple(values)).fetchall() == theirs[1]


def test_bind_values_messages() -> None:
    with pytest.raises(ProgrammingError) as info:
        bind_values(parse("SELECT ?, ?"), (1,))
    assert str(info.value) == (
        "Incorrect number of bindings supplied. The current statement uses 2, "
        "and there are 1 supplied."
    )
    with pytest.raises(ProgrammingError) as info:
        bind_values(parse("SELECT :a, ?"), {"a": 1})
    assert str(info.value) == (
        "Binding 2 has no name, but you supplied a dictionary (which has only names)."
    )
    with pytest.raises(ProgrammingError) as info:
        bind_values(parse("SELECT :a, @bee"), {"a": 1})
    assert str(info.value) == "You did not supply a value for binding parameter :bee."
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(ProgrammingError, match=r"^parameters are of unsupported type$"):
        bind_values(parse("SELECT ?"), 5)  # type: ignore[arg-type]


def test_bind_values_gaps_and_any_mapping() -> None:
    assert bind_values(parse("SELECT ?3"), (1, 2, 3)) == [1, 2, 3]
    user_dict = collections.UserDict({"a": 1, "b": 2})
    assert bind_values(parse("SELECT :b, :a, :b"), user_dict) == [2, 1]

    class _Lookup(Mapping[str, object]):
        def __getitem__(self, key: str) -> object:
            return key.upper()

        def __iter__(self) -> Iterator[str]:
            return iter(())

        def __len__(self) -> int:
            return 0

    assert bind_values(parse("SELECT :x, @y"), _Lookup()) == ["X", "Y"]


def test_bind_values_len_error_propagates() -> None:
    class _NoLen:
        def __getitem__(self, index: int) -> object:
            return index

    with pytest.raises(TypeError):
        bind_values(parse("SELECT ?"), _NoLen())  # type: ignore[arg-type]
