"""Driver: binding parameters, compared with the standard library's sqlite3."""

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


def _select(sql: str, params: Any) -> Callable[[Any, Any], Any]:
    def run(conn: Any, module: Any) -> Any:
        return conn.execute(sql, params).fetchall()

    return run


# -- placeholder styles --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "params", "rows"),
    [
        ("SELECT ?, ?", (1, "two"), [(1, "two")]),
        ("SELECT ?, ?", [1, "two"], [(1, "two")]),
        ("SELECT :a, @b, $c, :a", {"a": 1, "b": 2, "c": 3}, [(1, 2, 3, 1)]),
        ("SELECT :x || :y", {"x": "ab", "y": "cd", "unused": 0}, [("abcd",)]),
        ("SELECT ?2, ?1, ?2", (10, 20), [(20, 10, 20)]),
        ("SELECT ?3, ?", (1, 2, 3, 4), [(3, 4)]),
        ("SELECT :a, :b", (5, 6), [(5, 6)]),  # a sequence binds named parameters by position
        ("SELECT ?, ?", "ab", [("a", "b")]),  # any sequence, even a str
        ("SELECT '?', ':x', \"?\", ?", (5,), [("?", ":x", "?", 5)]),
        ("SELECT ? -- ? :x\n, /* ? @y */ ?", (1, 2), [(1, 2)]),
        ("SELECT 'it''s ?', ?", ("ok",), [("it's ?", "ok")]),
        ("SELECT x'3f', ?", (1,), [(b"?", 1)]),
        ("SELECT 1", (), [(1,)]),
        ("SELECT 1", {}, [(1,)]),
    ],
)
def test_placeholders(compare: Compare, sql: str, params: Any, rows: list[Any]) -> None:
    expected, actual = compare(_select(sql, params))
    assert expected == ("returned", rows)  # the reference agrees with the table above
    assert actual == expected


def test_named_parameters_from_a_mapping_with_missing(compare: Compare) -> None:
    class Defaults(dict[str, Any]):
        def __missing__(self, key: str) -> str:
            return key.upper()

    expected, actual = compare(_select("SELECT :a, :zz", Defaults(a=1)))
    assert expected == ("returned", [(1, "ZZ")])
    assert actual == expected


def test_custom_sequence(compare: Compare) -> None:
    class Seq:
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> int:
            if i >= 2:
                raise IndexError(i)
            return i * 10

    expected, actual = compare(_select("SELECT ?, ?", Seq()))
    assert expected == ("returned", [(0, 10)])
    assert actual == expected


# -- binding errors: same class and message as sqlite3 -------------------------------------------


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT ?, ?", (1,)),
        ("SELECT ?", (1, 2)),
        ("SELECT 1", (1,)),
        ("SELECT ?", ()),
        ("SELECT ?2", (1,)),
        ("SELECT :a, :b", {"a": 1}),
        ("SELECT ?", {"a": 1}),
        ("SELECT :a", None),
        ("SELECT :a", 5),
    ],
)
def test_binding_errors_match_sqlite3(
    compare: Compare, driver: str, sql: str, params: Any
) -> None:
    if driver == "async" and params is None:
        # dqlitepy.aio follows aiosqlite here: None means no parameters (docs/asyncio.md),
        # so it must fail as sqlite3 does without any.
        expected, _ = compare(_select(sql, ()))
        _, actual = compare(_select(sql, params))
    else:
        expected, actual = compare(_select(sql, params))
    assert expected[:2] == ("raised", "ProgrammingError")
    assert actual == expected


def test_wrong_count_exact_message(connect: Connect) -> None:
    conn = connect()
    with pytest.raises(dqlitepy.ProgrammingError) as info:
        conn.execute("SELECT ?, ?", (1,))
    assert str(info.value) == (
        "Incorrect number of bindings supplied. The current statement uses 2, "
        "and there are 1 supplied."
    )
    with pytest.raises(dqlitepy.ProgrammingError, match="You did not supply a value for binding"):
        conn.execute("SELECT :present, :absent", {"present": 1})


@pytest.mark.parametrize("value", [object(), [1], {"a": 1}, {1, 2}, 1j])
def test_unsupported_type_is_programming_error(compare: Compare, value: Any) -> None:
    expected, actual = compare(_select("SELECT ?", (value,)))
    assert expected[:2] == ("raised", "ProgrammingError")
    assert actual[:2] == expected[:2]


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**100])
def test_int_out_of_range_is_overflow_error(compare: Compare, value: int) -> None:
    expected, actual = compare(_select("SELECT ?", (value,)))
    assert expected[:2] == ("raised", "OverflowError")
    assert actual[:2] == expected[:2]


def test_error_leaves_the_connection_usable(connect: Connect) -> None:
    conn = connect()
    with pytest.raises(dqlitepy.ProgrammingError):
        conn.execute("SELECT ?", (object(),))
    with pytest.raises(OverflowError):
        conn.execute("SELECT ?", (2**64,))
    assert conn.execute("SELECT ?", (3,)).fetchone() == (3,)


def test_text_with_nul_cannot_cross_the_wire(connect: Connect) -> None:
    # The protocol's text encoding is NUL-terminated (protocol.md §6.3): refused up front
    # with a clear error instead of being truncated. (sqlite3 would store it.)
    conn = connect()
    with pytest.raises(dqlitepy.ProgrammingError, match="NUL"):
        conn.execute("SELECT ?", ("a\x00b",))
    assert conn.execute("SELECT ?", (b"a\x00b",)).fetchone() == (b"a\x00b",)


# -- adapters ------------------------------------------------------------------------------------


class Point:
    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y


class Conforming:
    def __init__(self, text: str) -> None:
        self.text = text

    def __conform__(self, protocol: Any) -> Any:
        if protocol is sqlite3.PrepareProtocol or protocol is dqlitepy.PrepareProtocol:
            return f"conformed:{self.text}"
        return None


@pytest.fixture
def point_adapter() -> Iterator[None]:
    def adapt_point(p: Point) -> str:
        return f"{p.x};{p.y}"

    sqlite3.register_adapter(Point, adapt_point)
    dqlitepy.register_adapter(Point, adapt_point)
    yield
    sqlite3.adapters.pop((Point, sqlite3.PrepareProtocol), None)
    dqlitepy.adapters.pop((Point, dqlitepy.PrepareProtocol), None)


def test_register_adapter(compare: Compare, point_adapter: None) -> None:
    expected, actual = compare(_select("SELECT ?, typeof(?)", (Point(1.5, 2), Point(0, 0))))
    assert expected == ("returned", [("1.5;2", "text")])
    assert actual == expected
    assert dqlitepy.adapt(Point(3, 4)) == "3;4"


def test_adapter_may_return_any_bindable_type(connect: Connect) -> None:
    class Money:
        def __init__(self, cents: int) -> None:
            self.cents = cents

    dqlitepy.register_adapter(Money, lambda m: m.cents)
    try:
        row = connect().execute("SELECT ?, typeof(?)", (Money(250), Money(1))).fetchone()
    finally:
        dqlitepy.adapters.pop((Money, dqlitepy.PrepareProtocol), None)
    assert row == (250, "integer")


def test_conform(compare: Compare) -> None:
    expected, actual = compare(_select("SELECT ?", (Conforming("p"),)))
    assert expected == ("returned", [("conformed:p",)])
    assert actual == expected


def test_default_date_and_datetime_adapters(connect: Connect) -> None:
    # sqlite3's default adapters (ISO format, space separator); stated literally because
    # Python 3.12 deprecates them with a warning.
    row = (
        connect()
        .execute(
            "SELECT ?, ?, typeof(?)",
            (
                datetime.date(2020, 1, 2),
                datetime.datetime(2020, 1, 2, 3, 4, 5, 6),
                datetime.date(2000, 1, 1),
            ),
        )
        .fetchone()
    )
    assert row == ("2020-01-02", "2020-01-02 03:04:05.000006", "text")


def test_buffer_types_bind_as_blobs(compare: Compare) -> None:
    expected, actual = compare(
        _select("SELECT ?, ?, typeof(?)", (memoryview(b"ab"), bytearray(b"cd"), bytearray(b"")))
    )
    assert expected == ("returned", [(b"ab", b"cd", "blob")])
    assert actual == expected


def test_bool_binds_as_integer(compare: Compare) -> None:
    expected, actual = compare(_select("SELECT ?, ?, typeof(?)", (True, False, True)))
    assert expected == ("returned", [(1, 0, "integer")])
    assert actual == expected


def test_executemany_with_named_parameters(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (a, b)")
        cur = conn.executemany(
            "INSERT INTO t VALUES (:a, :b)", [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
        )
        return cur.rowcount, conn.execute("SELECT * FROM t ORDER BY a").fetchall()

    expected, actual = compare(run)
    assert expected == ("returned", (2, [(1, "x"), (2, "y")]))
    assert actual == expected


def test_executemany_binding_error_midway(compare: Compare) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.execute("CREATE TABLE t (a)")
        try:
            conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (1, 2)])
        except module.ProgrammingError as exc:
            return "raised", str(exc), conn.execute("SELECT a FROM t ORDER BY a").fetchall()
        return "no error"

    expected, actual = compare(run)
    assert expected[1][0] == "raised"
    assert actual == expected
