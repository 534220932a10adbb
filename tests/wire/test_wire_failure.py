"""FAILURE bodies with dqlite 1.11's half-built ROWS batch in front (protocol.md §3.1)."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from dqlitepy.wire import FailureResponse, RemoteProtocolError
from dqlitepy.wire.codec import Writer


def _stale(columns: list[str], rows: list[list[int]], code: int, message: str) -> bytes:
    w = Writer()
    w.u64(len(columns))
    for name in columns:
        w.text(name)
    for row in rows:
        w.row([1] * len(row), row)
    w.u64(code)
    w.text(message)
    return w.getvalue()


def test_the_example_of_the_spec() -> None:
    # "01.. 'v'.. 01.. 01.. 01.. 02.. | 01.. "integer overflow"": an error on row 3.
    body = (
        bytes.fromhex(
            "0100000000000000"
            "7600000000000000"
            "0100000000000000"
            "0100000000000000"
            "0100000000000000"
            "0200000000000000"
            "0100000000000000"
        )
        + b"integer overflow"
        + bytes(8)
    )
    assert FailureResponse.decode_body(body) == FailureResponse(1, "integer overflow")


@settings(max_examples=200, deadline=None)
@given(
    columns=st.lists(st.text(alphabet="abcxyz_", min_size=1, max_size=12), min_size=1, max_size=5),
    n_rows=st.integers(0, 4),
    code=st.integers(1, 30000),
    message=st.text(alphabet="abcdefghij klmnop", min_size=1, max_size=40),
)
def test_stale_batches_are_recovered(
    columns: list[str], n_rows: int, code: int, message: str
) -> None:
    rows = [[i * 7 + j for j in range(len(columns))] for i in range(n_rows)]
    body = _stale(columns, rows, code, message)
    assert FailureResponse.decode_body(body) == FailureResponse(code, message)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200).map(lambda b: b + bytes(-len(b) % 8)))
def test_any_body_decodes_or_raises_the_wire_error(body: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        FailureResponse.decode_body(body)


def test_plain_failures_are_unchanged() -> None:
    plain = FailureResponse(2067, "UNIQUE constraint failed: u.x")
    assert FailureResponse.decode_body(plain.encode_body()) == plain
