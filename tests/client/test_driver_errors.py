"""Driver: errors, the module surface shared with sqlite3, threads and unsupported features."""

from __future__ import annotations

import importlib
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import pytest

import dqlitepy
from dqlitepy.wire import DEFAULT_MAX_MESSAGE_SIZE

pytestmark = [pytest.mark.dqlite, pytest.mark.both_drivers]

Connect = Callable[..., dqlitepy.Connection]
Compare = Callable[..., tuple[Any, Any]]

EXCEPTIONS = [
    "Warning",
    "Error",
    "InterfaceError",
    "DatabaseError",
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
]


def _error(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("no exception raised")


# -- errors from the server ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "failing", "code", "name"),
    [
        (
            "CREATE TABLE u (x UNIQUE); INSERT INTO u VALUES (1);",
            "INSERT INTO u VALUES (1)",
            2067,
            "SQLITE_CONSTRAINT_UNIQUE",
        ),
        (
            "CREATE TABLE p (id INTEGER PRIMARY KEY); INSERT INTO p VALUES (1);",
            "INSERT INTO p VALUES (1)",
            1555,
            "SQLITE_CONSTRAINT_PRIMARYKEY",
        ),
        (
            "CREATE TABLE n (x NOT NULL);",
            "INSERT INTO n VALUES (NULL)",
            1299,
            "SQLITE_CONSTRAINT_NOTNULL",
        ),
        (
            "CREATE TABLE c (x CHECK (x > 0));",
            "INSERT INTO c VALUES (0)",
            275,
            "SQLITE_CONSTRAINT_CHECK",
        ),
        ("", "SELECT * FROM nosuch", 1, "SQLITE_ERROR"),
        ("", "INSERT INTO nosuch VALUES (1)", 1, "SQLITE_ERROR"),
        ("", "SELEC 1", 1, "SQLITE_ERROR"),
        ("", "SELECT nosuchfn(1)", 1, "SQLITE_ERROR"),
        ("CREATE TABLE t (x);", "CREATE TABLE t (x)", 1, "SQLITE_ERROR"),
        pytest.param(
            "",
            "SELECT 1, abs(-9223372036854775808)",
            1,
            "SQLITE_ERROR",
            id="runtime-error-in-a-query",
        ),
    ],
)
def test_server_errors_match_sqlite3(
    compare: Compare, setup: str, failing: str, code: int, name: str
) -> None:
    def run(conn: Any, module: Any) -> Any:
        conn.isolation_level = None
        if setup:
            conn.executescript(setup)
        exc = _error(lambda: conn.execute(failing))
        still_usable = conn.execute("SELECT 1").fetchone()
        return (
            type(exc).__name__,
            str(exc),
            exc.sqlite_errorcode,  # type: ignore[attr-defined]
            exc.sqlite_errorname,  # type: ignore[attr-defined]
            still_usable,
        )

    expected, actual = compare(run)
    assert expected[0] == "returned"
    assert expected[1][2:4] == (code, name)
    assert actual == expected


def test_integrity_error_details(connect: Connect) -> None:
    conn = connect()
    conn.execute("CREATE TABLE u (x UNIQUE)")
    conn.execute("INSERT INTO u VALUES (1)")
    with pytest.raises(dqlitepy.IntegrityError) as info:
        conn.execute("INSERT INTO u VALUES (1)")
    assert isinstance(info.value, dqlitepy.DatabaseError)
    assert info.value.sqlite_errorcode == 2067
    assert info.value.sqlite_errorname == "SQLITE_CONSTRAINT_UNIQUE"
    assert str(info.value) == "UNIQUE constraint failed: u.x"
    assert info.value.args == ("UNIQUE constraint failed: u.x",)
    # The failed statement did not end the transaction (as in sqlite3).
    assert conn.in_transaction
    conn.commit()
    assert conn.execute("SELECT count(*) FROM u").fetchone() == (1,)


def test_no_such_table(connect: Connect) -> None:
    with pytest.raises(dqlitepy.OperationalError) as info:
        connect().execute("SELECT * FROM nosuch")
    assert info.value.sqlite_errorcode == 1
    assert info.value.sqlite_errorname == "SQLITE_ERROR"
    assert str(info.value) == "no such table: nosuch"


def test_errors_are_catchable_as_sqlite3_user_code_does(connect: Connect) -> None:
    conn = connect()
    for sql in ("SELECT * FROM nosuch", "SELEC"):
        with pytest.raises(dqlitepy.DatabaseError):
            conn.execute(sql)
        with pytest.raises(conn.Error):
            conn.execute(sql)


# -- messages over the size limit ----------------------------------------------------------------

LIMIT = DEFAULT_MAX_MESSAGE_SIZE


def test_value_over_the_message_limit_is_refused_before_sending(connect: Connect) -> None:
    conn = connect()
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")  # opens a transaction, which must survive
    for value in (b"\0" * (LIMIT + 1), "x" * (LIMIT + 1)):
        # As sqlite3 refuses a value over SQLITE_LIMIT_LENGTH: DataError, SQLITE_TOOBIG.
        with pytest.raises(dqlitepy.DataError) as info:
            conn.execute("INSERT INTO t VALUES (?)", (value,))
        assert info.value.sqlite_errorcode == 18
        assert info.value.sqlite_errorname == "SQLITE_TOOBIG"
        assert str(info.value).startswith("string or blob too big")
        assert "64 MiB" in str(info.value)
        with pytest.raises(dqlitepy.DataError):
            conn.executemany("INSERT INTO t VALUES (?)", [(2,), (value,)])
        assert conn.in_transaction
    with pytest.raises(dqlitepy.DataError) as info:
        conn.execute("SELECT '" + "x" * LIMIT + "'")
    assert str(info.value).startswith("query string is too large")
    # Nothing was sent: the connection and its transaction go on.
    assert conn.in_transaction
    conn.execute("INSERT INTO t VALUES (3)")
    conn.commit()
    # executemany() ran its first set each time, as sqlite3 does before a failing one.
    assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,), (2,), (3,)]


def test_message_limit_is_a_connect_argument(connect: Connect) -> None:
    conn = connect(isolation_level=None, max_message_size=4096)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (?)", (b"x" * 3000,))
    with pytest.raises(dqlitepy.DataError, match="4096 bytes"):
        conn.execute("INSERT INTO t VALUES (?)", (b"x" * 5000,))
    assert conn.execute("SELECT length(x) FROM t").fetchall() == [(3000,)]


# -- module surface ------------------------------------------------------------------------------


def test_exception_hierarchy_matches_sqlite3() -> None:
    for name in EXCEPTIONS:
        ours = getattr(dqlitepy, name)
        theirs = getattr(sqlite3, name)
        assert [c.__name__ for c in ours.__mro__ if c.__module__ != "builtins"] == [
            c.__name__ for c in theirs.__mro__ if c.__module__ != "builtins"
        ], name
        assert ours.__mro__[-2:] == theirs.__mro__[-2:]  # Exception, BaseException... object
    assert issubclass(dqlitepy.NotLeaderError, dqlitepy.OperationalError)
    assert issubclass(dqlitepy.LeadershipLostError, dqlitepy.OperationalError)
    assert issubclass(dqlitepy.NoLeaderError, dqlitepy.OperationalError)


def test_exceptions_are_connection_attributes(connect: Connect) -> None:
    conn = connect()
    for name in EXCEPTIONS:
        assert getattr(conn, name) is getattr(dqlitepy, name), name
        assert getattr(dqlitepy.Connection, name) is getattr(dqlitepy, name), name


def test_module_constants() -> None:
    assert dqlitepy.apilevel == "2.0"
    assert dqlitepy.paramstyle == "qmark"
    assert dqlitepy.threadsafety in (0, 1, 3)
    assert dqlitepy.PARSE_DECLTYPES == sqlite3.PARSE_DECLTYPES
    assert dqlitepy.PARSE_COLNAMES == sqlite3.PARSE_COLNAMES
    assert isinstance(dqlitepy.sqlite_version, str)
    info = dqlitepy.sqlite_version_info
    assert isinstance(info, tuple)
    assert len(info) == 3
    assert all(isinstance(p, int) for p in info)
    assert ".".join(map(str, info)) == dqlitepy.sqlite_version
    assert info >= (3, 0, 0)
    assert dqlitepy.LEGACY_TRANSACTION_CONTROL == -1
    assert dqlitepy.SQLITE_BUSY == sqlite3.SQLITE_BUSY
    assert dqlitepy.SQLITE_CONSTRAINT_UNIQUE == 2067


def test_sqlite_version_is_the_servers(connect: Connect) -> None:
    (version,) = connect().execute("SELECT sqlite_version()").fetchone()
    server = tuple(int(p) for p in version.split("."))
    assert server >= dqlitepy.sqlite_version_info


def test_dbapi2_module_has_the_same_surface() -> None:
    dbapi2 = importlib.import_module("dqlitepy.dbapi2")
    for name in dqlitepy.__all__:
        assert getattr(dbapi2, name) is getattr(dqlitepy, name), name


def test_dbapi2_is_an_attribute_after_a_plain_import() -> None:
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-c", "import dqlitepy; dqlitepy.dbapi2.connect"],
        check=True,
        capture_output=True,
    )


def test_sqlite3_names_exist() -> None:
    missing = [
        name
        for name in dir(sqlite3)
        if not name.startswith("_")
        # Blob needs blobopen(); the rest are modules sqlite3 happens to import, or gone.
        and name not in {"Blob", "collections", "datetime", "time", "dbapi2", "enable_shared_cache"}
        and not hasattr(dqlitepy, name)
    ]
    assert missing == []
    for cls, names in (
        (dqlitepy.Connection, dir(sqlite3.Connection)),
        (
            dqlitepy.Cursor,
            [
                "execute",
                "executemany",
                "executescript",
                "fetchone",
                "fetchmany",
                "fetchall",
                "close",
                "setinputsizes",
                "setoutputsize",
            ],
        ),
        (dqlitepy.Row, dir(sqlite3.Row)),
    ):
        absent = [
            n
            for n in names
            if not n.startswith("_")
            # Instance attributes, and SQLite limits (no request on the wire).
            and n not in {"row_factory", "text_factory", "getlimit", "setlimit"}
            and not hasattr(cls, n)
        ]
        assert absent == [], cls


def test_type_constructors() -> None:
    assert dqlitepy.Date(2020, 1, 2) == sqlite3.Date(2020, 1, 2)
    assert dqlitepy.Time(1, 2, 3) == sqlite3.Time(1, 2, 3)
    assert dqlitepy.Timestamp(2020, 1, 2, 3, 4, 5) == sqlite3.Timestamp(2020, 1, 2, 3, 4, 5)
    assert dqlitepy.DateFromTicks(0) == sqlite3.DateFromTicks(0)
    assert dqlitepy.TimeFromTicks(3600) == sqlite3.TimeFromTicks(3600)
    assert dqlitepy.TimestampFromTicks(86400) == sqlite3.TimestampFromTicks(86400)
    assert bytes(dqlitepy.Binary(b"ab")) == b"ab"


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1",
        "SELECT 1;",
        "SELECT 1; SELECT",
        "SELECT 'a;",
        "CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1;",
        "CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1; END;",
        "-- c;\n",
        ";",
        "",
    ],
)
def test_complete_statement(text: str) -> None:
    assert dqlitepy.complete_statement(text) == sqlite3.complete_statement(text)


# -- threads -------------------------------------------------------------------------------------


def _in_thread(fn: Callable[[], Any]) -> BaseException | None:
    errors: list[BaseException | None] = [None]

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors[0] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return errors[0]


@pytest.mark.sync_driver_only
def test_check_same_thread(connect: Connect) -> None:
    conn = connect()
    cur = conn.cursor()
    for fn in (
        lambda: conn.execute("SELECT 1"),
        conn.cursor,
        conn.commit,
        conn.rollback,
        conn.close,
        lambda: cur.execute("SELECT 1"),
        cur.fetchall,
    ):
        exc = _in_thread(fn)
        assert isinstance(exc, dqlitepy.ProgrammingError), exc
        assert "same thread" in str(exc)
    assert conn.execute("SELECT 1").fetchone() == (1,)  # still open and usable here


def test_check_same_thread_false(connect: Connect) -> None:
    conn = connect(check_same_thread=False)
    results: list[Any] = []
    assert _in_thread(lambda: results.append(conn.execute("SELECT 42").fetchone())) is None
    assert results == [(42,)]


# -- what cannot cross the wire ------------------------------------------------------------------


@pytest.mark.sync_driver_only
def test_unsupported_features_raise_not_supported(connect: Connect) -> None:
    conn = connect()
    calls: list[Callable[[], Any]] = [
        lambda: conn.create_collation("rev", lambda a, b: 0),
        lambda: conn.blobopen("t", "c", 1),
        lambda: conn.backup(sqlite3.connect(":memory:")),
        lambda: conn.create_aggregate("agg", 1, object),
        lambda: conn.create_window_function("win", 1, object),
        lambda: conn.set_authorizer(lambda *a: 0),
        lambda: conn.set_progress_handler(lambda: 0, 100),
        lambda: conn.enable_load_extension(True),
        lambda: conn.load_extension("x"),
        lambda: conn.serialize(),
        lambda: conn.deserialize(b""),
    ]
    for call in calls:
        exc = _error(call)
        assert isinstance(exc, dqlitepy.NotSupportedError), exc
        assert isinstance(exc, dqlitepy.DatabaseError)
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_create_function_exists_and_does_not_raise(connect: Connect) -> None:
    conn = connect()
    conn.create_function("double", 1, lambda x: x * 2)
    conn.create_function("double", 1, lambda x: x * 2, deterministic=True)
    # Recorded, but it cannot run on the server: SQL that calls it fails there.
    with pytest.raises(dqlitepy.OperationalError, match="no such function: double"):
        conn.execute("SELECT double(2)")
    conn.create_function("double", 1, None)  # removing it is fine too
    assert conn.execute("SELECT 1").fetchone() == (1,)
    conn.close()
    with pytest.raises(dqlitepy.ProgrammingError, match="closed database"):
        conn.create_function("double", 1, None)


def test_unsupported_features_of_both_drivers(connect: Connect) -> None:
    """What aiosqlite has and dqlite cannot do: the same refusal from both drivers."""
    conn = connect()
    calls: list[tuple[Callable[[], Any], str]] = [
        (lambda: conn.set_progress_handler(lambda: 0, 100), "call back"),
        (lambda: conn.enable_load_extension(True), "extensions"),
        (lambda: conn.load_extension("x"), "extensions"),
        (lambda: conn.backup(sqlite3.connect(":memory:")), "Client.dump"),
    ]
    for call, why in calls:
        exc = _error(call)
        assert isinstance(exc, dqlitepy.NotSupportedError), exc
        assert why in str(exc)
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_interrupt_and_callback_tracebacks_are_accepted(connect: Connect) -> None:
    conn = connect()
    conn.interrupt()
    dqlitepy.enable_callback_tracebacks(False)
    assert conn.execute("SELECT 1").fetchone() == (1,)
