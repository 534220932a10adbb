"""Unit tests of the driver's pure pieces: the transaction table and the address parser.

No server: what the driver believes about a session's transaction, statement by
statement, and which node addresses it accepts.
"""

from __future__ import annotations

import socket

import pytest

from dqlitepy.client.address import address_host, parse_address
from dqlitepy.client.transaction import (
    _TRANSITIONS,
    LEGACY_TRANSACTION_CONTROL,
    Transaction,
    TxnEvent,
    TxnState,
)


def _run(txn: Transaction, *statements: str) -> None:
    for sql in statements:
        txn.note(sql.split()[0].upper(), sql)


def test_the_transition_table_is_complete() -> None:
    # Every confirmed statement must be followed, whatever the driver believed before.
    assert set(_TRANSITIONS) == {(s, e) for s in TxnState for e in TxnEvent}


def test_begin_commit_rollback() -> None:
    txn = Transaction(LEGACY_TRANSACTION_CONTROL, "")
    assert txn.state is TxnState.IDLE and not txn.active
    _run(txn, "BEGIN")
    assert txn.state is TxnState.BEGUN
    _run(txn, "COMMIT")
    assert txn.state is TxnState.IDLE
    txn.begun()
    _run(txn, "ROLLBACK TO x")
    assert txn.state is TxnState.BEGUN
    _run(txn, "ROLLBACK")
    assert txn.state is TxnState.IDLE


def test_a_savepoint_outside_a_transaction_opens_one_that_its_release_commits() -> None:
    txn = Transaction(LEGACY_TRANSACTION_CONTROL, "")
    _run(txn, "SAVEPOINT a", "SAVEPOINT b")
    assert txn.state is TxnState.SAVEPOINT
    assert txn.may_commit("RELEASE") and not txn.opens("SAVEPOINT")
    _run(txn, "RELEASE b")
    assert txn.state is TxnState.SAVEPOINT
    _run(txn, "RELEASE SAVEPOINT A")  # names are case-insensitive
    assert txn.state is TxnState.IDLE and txn.opens("SAVEPOINT")


def test_releasing_an_outer_savepoint_releases_the_inner_ones() -> None:
    txn = Transaction(LEGACY_TRANSACTION_CONTROL, "")
    _run(txn, "SAVEPOINT a", "SAVEPOINT b", "SAVEPOINT c", "RELEASE a")
    assert txn.state is TxnState.IDLE


def test_savepoints_inside_begin_never_commit() -> None:
    txn = Transaction(LEGACY_TRANSACTION_CONTROL, "")
    _run(txn, "BEGIN", "SAVEPOINT a")
    assert not txn.may_commit("RELEASE")
    _run(txn, "RELEASE a")
    assert txn.state is TxnState.BEGUN


def test_losing_the_session_forgets_everything() -> None:
    txn = Transaction(LEGACY_TRANSACTION_CONTROL, "")
    _run(txn, "SAVEPOINT a")
    assert txn.lose() is True
    assert txn.state is TxnState.IDLE
    assert txn.lose() is False
    _run(txn, "BEGIN", "SAVEPOINT a", "RELEASE a")
    assert txn.state is TxnState.BEGUN  # the old savepoint did not survive


@pytest.mark.parametrize(
    ("autocommit", "level", "active", "expected"),
    [
        (LEGACY_TRANSACTION_CONTROL, "", False, True),
        (LEGACY_TRANSACTION_CONTROL, None, False, False),
        (LEGACY_TRANSACTION_CONTROL, "", True, False),
        (True, "", False, False),
        (False, "", False, False),
    ],
)
def test_implicit_begin_follows_sqlite3(
    autocommit: bool | int, level: str | None, active: bool, expected: bool
) -> None:
    txn = Transaction(autocommit, level)
    if active:
        txn.begun()
    assert txn.needs_implicit_begin(True) is expected
    assert txn.needs_implicit_begin(False) is False


@pytest.mark.parametrize(
    ("address", "family", "sockaddr"),
    [
        ("127.0.0.1:9001", socket.AF_INET, ("127.0.0.1", 9001)),
        ("localhost:0", socket.AF_INET, ("localhost", 0)),
        ("[::1]:9001", socket.AF_INET6, ("::1", 9001)),
        ("@dqlite", socket.AF_UNIX, "\0dqlite"),
    ],
)
def test_addresses(address: str, family: int, sockaddr: object) -> None:
    assert parse_address(address) == (family, sockaddr)


@pytest.mark.parametrize("address", ["", "@", "host", ":9001", "host:", "host:x", "h:70000", "h:²"])
def test_bad_addresses(address: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        parse_address(address)


def test_address_host() -> None:
    assert address_host("[::1]:1") == "::1"
    assert address_host("example.com:9001") == "example.com"
    assert address_host("@name") is None
