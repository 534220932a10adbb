"""Tests of the exception tree, the code tables and the sqlite3 constants."""

from __future__ import annotations

import pickle
import sqlite3

import pytest

from dqlitepy.client import constants, errors
from dqlitepy.client.errors import (
    ERROR_NAMES,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    LeadershipLostError,
    NoLeaderError,
    NotLeaderError,
    OperationalError,
    ProgrammingError,
    Warning,
    error_from_code,
    make_error,
)

_PEP249_NAMES = [
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

_PRIMARY_NAMES = {name for code, name in ERROR_NAMES.items() if code <= 0xFF}


def _stdlib_code(exc: sqlite3.Error) -> tuple[int, str]:
    # typeshed declares these attributes only for Python >= 3.11, and mypy
    # checks this project as 3.10.
    code: int = getattr(exc, "sqlite_errorcode")  # noqa: B009
    name: str = getattr(exc, "sqlite_errorname")  # noqa: B009
    return code, name


def _is_result_code_name(name: str) -> bool:
    """Tell result codes from authorizer, limit and config constants of the same prefix."""
    return name in _PRIMARY_NAMES or any(name.startswith(p + "_") for p in _PRIMARY_NAMES)


# ---------------------------------------------------------------------------
# The exception tree
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", _PEP249_NAMES)
def test_hierarchy_matches_sqlite3(name: str) -> None:
    ours = getattr(errors, name)
    theirs = getattr(sqlite3, name)
    assert [c.__name__ for c in ours.__mro__] == [c.__name__ for c in theirs.__mro__]


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (NotLeaderError, OperationalError),
        (LeadershipLostError, OperationalError),
        (NoLeaderError, OperationalError),
    ],
)
def test_dqlite_errors_are_operational(cls: type[Error], base: type[Error]) -> None:
    assert issubclass(cls, base)
    assert issubclass(cls, DatabaseError)


def test_warning_is_not_an_error() -> None:
    assert not issubclass(Warning, Error)
    assert issubclass(Warning, Exception)


def test_plain_construction_has_no_code() -> None:
    exc = OperationalError("boom")
    assert exc.args == ("boom",)
    assert str(exc) == "boom"
    assert exc.sqlite_errorcode is None
    assert exc.sqlite_errorname is None
    assert NoLeaderError("none").sqlite_errorcode is None


def test_make_error() -> None:
    exc = make_error(OperationalError, "database is locked", code=5)
    assert isinstance(exc, OperationalError)
    assert exc.args == ("database is locked",)
    assert (exc.sqlite_errorcode, exc.sqlite_errorname) == (5, "SQLITE_BUSY")
    custom = make_error(IntegrityError, "x", code=2067, name="CUSTOM")
    assert custom.sqlite_errorname == "CUSTOM"
    unknown = make_error(DatabaseError, "x", code=12345)
    assert (unknown.sqlite_errorcode, unknown.sqlite_errorname) == (12345, None)
    # Setting the code on one instance leaves the class default alone.
    assert OperationalError.sqlite_errorcode is None


def test_errors_pickle_with_their_codes() -> None:
    exc = error_from_code(2067, "UNIQUE constraint failed: t.a")
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is IntegrityError
    assert copy.args == exc.args
    assert copy.sqlite_errorcode == 2067
    assert copy.sqlite_errorname == "SQLITE_CONSTRAINT_UNIQUE"


# ---------------------------------------------------------------------------
# ERROR_NAMES
# ---------------------------------------------------------------------------


def test_error_names_cover_sqlite3_result_codes() -> None:
    names = [n for n in dir(sqlite3) if n.startswith("SQLITE_") and _is_result_code_name(n)]
    assert len(names) >= 105  # Python 3.11 exports 105 result codes
    for name in names:
        assert ERROR_NAMES[getattr(sqlite3, name)] == name


def test_error_names_match_sqlite3_errorname() -> None:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t(a UNIQUE, b NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, 1)")
        for sql in ["INSERT INTO t VALUES (1, 1)", "INSERT INTO t VALUES (2, NULL)", "SELEC"]:
            with pytest.raises(sqlite3.Error) as info:
                conn.execute(sql)
            code, name = _stdlib_code(info.value)
            assert ERROR_NAMES[code] == name
    finally:
        conn.close()


def test_error_names_cover_apsw() -> None:
    apsw = pytest.importorskip("apsw")
    known: dict[str, int] = {}
    for table in (apsw.mapping_result_codes, apsw.mapping_extended_result_codes):
        known.update({k: v for k, v in table.items() if isinstance(k, str)})
    for name, code in known.items():
        assert ERROR_NAMES.get(code) == name


def test_error_names_are_consistent() -> None:
    assert len(set(ERROR_NAMES.values())) == len(ERROR_NAMES)
    dqlite = {10250, 10506, 1002, 1005}
    for code, name in ERROR_NAMES.items():
        if code in dqlite:
            continue
        assert name.startswith("SQLITE_")
        if code > 0xFF:
            # An extended code's name starts with its primary code's name.
            assert name.startswith(ERROR_NAMES[code & 0xFF] + "_")


def test_dqlite_code_names() -> None:
    assert ERROR_NAMES[10250] == "SQLITE_IOERR_NOT_LEADER"
    assert ERROR_NAMES[10506] == "SQLITE_IOERR_LEADERSHIP_LOST"
    assert ERROR_NAMES[1005] == "DQLITE_PARSE"
    assert ERROR_NAMES[1002] == "DQLITE_NOTFOUND"
    assert 10250 == 10 | (40 << 8)
    assert 10506 == 10 | (41 << 8)
    # The legacy values are SQLite's own codes; the table keeps SQLite's names.
    assert ERROR_NAMES[8202] == "SQLITE_IOERR_DATA"
    assert ERROR_NAMES[8458] == "SQLITE_IOERR_CORRUPTFS"


# ---------------------------------------------------------------------------
# error_from_code
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls", "name"),
    [
        (0, ProgrammingError, "SQLITE_OK"),
        (1, OperationalError, "SQLITE_ERROR"),
        (2, InternalError, "SQLITE_INTERNAL"),
        (3, OperationalError, "SQLITE_PERM"),
        (4, OperationalError, "SQLITE_ABORT"),
        (516, OperationalError, "SQLITE_ABORT_ROLLBACK"),
        (5, OperationalError, "SQLITE_BUSY"),
        (517, OperationalError, "SQLITE_BUSY_SNAPSHOT"),
        (6, OperationalError, "SQLITE_LOCKED"),
        (8, OperationalError, "SQLITE_READONLY"),
        (9, OperationalError, "SQLITE_INTERRUPT"),
        (10, OperationalError, "SQLITE_IOERR"),
        (266, OperationalError, "SQLITE_IOERR_READ"),
        (11, DatabaseError, "SQLITE_CORRUPT"),
        (12, InternalError, "SQLITE_NOTFOUND"),
        (13, OperationalError, "SQLITE_FULL"),
        (14, OperationalError, "SQLITE_CANTOPEN"),
        (15, OperationalError, "SQLITE_PROTOCOL"),
        (16, OperationalError, "SQLITE_EMPTY"),
        (17, OperationalError, "SQLITE_SCHEMA"),
        (18, DataError, "SQLITE_TOOBIG"),
        (19, IntegrityError, "SQLITE_CONSTRAINT"),
        (2067, IntegrityError, "SQLITE_CONSTRAINT_UNIQUE"),
        (1299, IntegrityError, "SQLITE_CONSTRAINT_NOTNULL"),
        (20, IntegrityError, "SQLITE_MISMATCH"),
        (21, InterfaceError, "SQLITE_MISUSE"),
        (22, DatabaseError, "SQLITE_NOLFS"),
        (23, DatabaseError, "SQLITE_AUTH"),
        (24, DatabaseError, "SQLITE_FORMAT"),
        (25, InterfaceError, "SQLITE_RANGE"),
        (26, DatabaseError, "SQLITE_NOTADB"),
        (27, DatabaseError, "SQLITE_NOTICE"),
        (28, DatabaseError, "SQLITE_WARNING"),
        (100, DatabaseError, "SQLITE_ROW"),
        (101, DatabaseError, "SQLITE_DONE"),
        (10250, NotLeaderError, "SQLITE_IOERR_NOT_LEADER"),
        (8202, NotLeaderError, "SQLITE_IOERR_NOT_LEADER_LEGACY"),
        (10506, LeadershipLostError, "SQLITE_IOERR_LEADERSHIP_LOST"),
        (8458, LeadershipLostError, "SQLITE_IOERR_LEADERSHIP_LOST_LEGACY"),
        (1005, InterfaceError, "DQLITE_PARSE"),
        (1002, OperationalError, "DQLITE_NOTFOUND"),
        (99, DatabaseError, None),
        (123456, DatabaseError, None),
    ],
)
def test_error_from_code(code: int, cls: type[Error], name: str | None) -> None:
    exc = error_from_code(code, "the message")
    assert type(exc) is cls
    assert isinstance(exc, Error)
    assert exc.args == ("the message",)
    assert exc.sqlite_errorcode == code
    assert exc.sqlite_errorname == name


@pytest.mark.parametrize("code", [7, 7 | (1 << 8)])
def test_nomem_is_memory_error(code: int) -> None:
    exc = error_from_code(code, "out of memory")
    assert isinstance(exc, MemoryError)
    assert not isinstance(exc, Error)
    assert str(exc) == "out of memory"
    # Unlike sqlite3's bare MemoryError, ours still tells which code it was.
    assert getattr(exc, "sqlite_errorcode", None) == code


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("SELEC 1", 1),
        ("INSERT INTO u VALUES (1)", 2067),
        ("INSERT INTO u VALUES (NULL)", 1299),
        ("SELECT * FROM nosuch", 1),
        ("SELECT ?0", 1),
    ],
)
def test_error_from_code_matches_sqlite3(sql: str, code: int) -> None:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE u(a UNIQUE NOT NULL)")
        conn.execute("INSERT INTO u VALUES (1)")
        with pytest.raises(sqlite3.Error) as info:
            conn.execute(sql)
    finally:
        conn.close()
    theirs = info.value
    their_code, their_name = _stdlib_code(theirs)
    assert their_code == code
    ours = error_from_code(their_code, str(theirs))
    assert type(ours).__name__ == type(theirs).__name__
    assert isinstance(ours, Error)
    assert ours.sqlite_errorname == their_name


def test_every_known_code_follows_its_primary() -> None:
    special = {10250, 10506, 8202, 8458, 1002, 1005}
    for code in ERROR_NAMES:
        # SQLITE_OK's extended codes are not errors and NOMEM is a MemoryError.
        if code in special or code & 0xFF in (0, 7):
            continue
        exc = error_from_code(code, "m")
        assert type(exc) is type(error_from_code(code & 0xFF, "m"))


# ---------------------------------------------------------------------------
# constants
# ---------------------------------------------------------------------------


def test_constants_cover_sqlite3() -> None:
    theirs = {n for n in dir(sqlite3) if n.startswith("SQLITE_")}
    assert theirs <= set(constants.__all__)
    for name in theirs:
        assert getattr(constants, name) == getattr(sqlite3, name), name


def test_constants_all_is_exact() -> None:
    public = {n for n in vars(constants) if n.startswith("SQLITE_")}
    assert public == set(constants.__all__)
    assert len(constants.__all__) == len(set(constants.__all__))


def test_constants_agree_with_error_names() -> None:
    for name in constants.__all__:
        if _is_result_code_name(name):
            assert ERROR_NAMES[getattr(constants, name)] == name


def test_dbconfig_constants() -> None:
    apsw = pytest.importorskip("apsw")
    for name in constants.__all__:
        if name.startswith("SQLITE_DBCONFIG_"):
            assert apsw.mapping_db_config[name] == getattr(constants, name)
