"""The server's fast ROWS path (``RowsBatchEncoder.fill``) against the reference encoding.

The reference is what the golden captures check: ``wire_types`` (the declared-type
mapping of §4.2) then ``Writer.row`` through ``add_row``, cut into batches with the
size check before each step (G5, G21).  Both must give the same messages, byte for byte.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dqlitepy.wire import LocalProtocolError, RemoteProtocolError, ValueType
from dqlitepy.wire.codec import Reader
from dqlitepy.wire.constants import MARKER_DONE, MARKER_PART
from dqlitepy.wire.rows import RowsBatchEncoder, wire_types

_DECLTYPES = st.sampled_from([None, "INTEGER", "TEXT", "datetime", "DATE", "TIMESTAMP", "Boolean"])
_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=False),
    st.text(),  # unicode, empty, with NULs
    st.binary(max_size=40),  # empty blobs, every padding
)


def _reference(
    columns: list[str], decltypes: list[str | None], rows: list[tuple[Any, ...]], size: int
) -> list[bytes]:
    encoder = RowsBatchEncoder(columns, batch_size=size)
    out: list[bytes] = []
    pending = iter(rows)
    while True:
        # dqlite checks the size before each step, so a full batch ends with PART
        # even if no row follows (G21); dqlitepy puts at least one row in a batch.
        if encoder.full and encoder.rows:
            out.append(encoder.finish(done=False))
        row = next(pending, None)
        if row is None:
            out.append(encoder.finish(done=True))
            return out
        encoder.add_row(*wire_types(row, decltypes))


def _fast(
    columns: list[str], decltypes: list[str | None], rows: list[tuple[Any, ...]], size: int
) -> list[bytes]:
    encoder = RowsBatchEncoder(columns, batch_size=size, decltypes=decltypes)
    pending = iter(rows)
    out: list[bytes] = []
    while not encoder.fill(pending):
        out.append(encoder.finish(done=False))
    out.append(encoder.finish(done=True))
    return out


@st.composite
def _results(draw: st.DrawFn) -> tuple[list[str], list[str | None], list[tuple[Any, ...]], int]:
    n = draw(st.integers(min_value=1, max_value=40))  # 1..40 columns: 1 to 3 header words
    decltypes = draw(st.lists(_DECLTYPES, min_size=n, max_size=n))
    rows = draw(st.lists(st.tuples(*[_VALUES] * n), max_size=20))
    size = draw(st.sampled_from([8, 64, 200, 4096]))  # small sizes cut many batches
    return [f"c{i}" for i in range(n)], decltypes, rows, size


@settings(max_examples=150, deadline=None)
@given(_results())
def test_fast_path_matches_the_reference(
    result: tuple[list[str], list[str | None], list[tuple[Any, ...]], int],
) -> None:
    columns, decltypes, rows, size = result
    assert _fast(columns, decltypes, rows, size) == _reference(columns, decltypes, rows, size)


def test_declared_types_pick_the_wire_types() -> None:
    """One row of every mapping of §4.2, through the fast path, decoded back."""
    decltypes = ["DATETIME", "date", "BOOLEAN", "BOOLEAN", "TEXT", None, "DATE"]
    row = (7, "2024-01-02", -1, None, "a\x00b", b"", 1.5)
    (message,) = _fast([f"c{i}" for i in range(7)], decltypes, [row], 4096)
    r = Reader(message[8:])
    assert r.u64() == 7
    for _ in range(7):
        r.text()
    rows, types, done = r.rows(7)
    assert done
    assert types == [
        (
            ValueType.UNIXTIME,
            ValueType.ISO8601,
            ValueType.BOOLEAN,
            ValueType.NULL,
            ValueType.TEXT,
            ValueType.BLOB,
            ValueType.FLOAT,
        )
    ]
    assert rows == [(7, "2024-01-02", (1 << 64) - 1, None, "a", b"", 1.5)]


def test_batches_are_cut_before_the_row_that_would_start_past_the_size() -> None:
    """The size check comes before each row: 100 one-word-header rows of 16 bytes."""
    rows = [(i,) for i in range(100)]
    messages = _fast(["n"], [None], rows, 200)
    # 8 (header) + 16 (count, name) = 24; each row adds 16: full at 24 + 11 * 16 = 200.
    assert [len(m) for m in messages[:2]] == [8 + 16 + 11 * 16 + 8] * 2
    assert messages == _reference(["n"], [None], rows, 200)


def test_unexpected_classes_take_the_reference_path() -> None:
    """A bool (an int subclass) and a memoryview encode as the reference does."""
    rows: list[tuple[Any, ...]] = [(True, memoryview(b"abc")), (2, b"xyz")]
    assert _fast(["a", "b"], [None, None], rows, 4096) == _reference(
        ["a", "b"], [None, None], rows, 4096
    )


@pytest.mark.parametrize(
    "row",
    [(1 << 63,), ("\udc80\ud800",), ()],
    ids=["int-overflow", "lone-surrogate", "no-columns"],
)
def test_values_the_protocol_cannot_carry_are_refused(row: tuple[Any, ...]) -> None:
    encoder = RowsBatchEncoder(["c"] * len(row), decltypes=[None] * len(row))
    with pytest.raises(LocalProtocolError):
        encoder.fill(iter([row]))


def _rows_one_by_one(body: bytes, n: int) -> tuple[list[Any], list[Any], bool]:
    """The reference decoding of a whole body."""
    return _rows_one_by_one_reader(Reader(body), n)


def _outcome(decode: Any) -> Any:
    try:
        return decode()
    except RemoteProtocolError as exc:
        return type(exc), str(exc)


@settings(max_examples=150, deadline=None)
@given(_results(), st.data())
def test_client_decoding_matches_the_reference(
    result: tuple[list[str], list[str | None], list[tuple[Any, ...]], int], data: st.DataObject
) -> None:
    """``Reader.rows`` against ``Reader.row``, on whole and on truncated bodies."""
    columns, decltypes, rows, _size = result
    (message,) = _fast(columns, decltypes, rows, 1 << 30)
    n = len(columns)
    names = Reader(message[8:])
    names.u64()
    for _ in columns:
        names.text()
    body = message[8 + names.pos :]
    assert Reader(body).rows(n) == _rows_one_by_one(body, n)
    cut = body[: data.draw(st.integers(min_value=0, max_value=len(body) - 1))]
    fast, slow = Reader(cut), Reader(cut)
    assert _outcome(lambda: fast.rows(n)) == _outcome(lambda: _rows_one_by_one_reader(slow, n))
    assert fast.pos == slow.pos


def _rows_one_by_one_reader(r: Reader, n: int) -> tuple[list[Any], list[Any], bool]:
    """``Reader.row`` per row, then the marker: what ``Reader.rows`` did before it was inlined."""
    rows: list[Any] = []
    types: list[Any] = []
    while True:
        if r.pos + 8 > r.end:
            raise r._short("row or end marker")
        if r.data[r.pos] in (0xFF, 0xEE):
            marker = r.u64()
            if marker not in (MARKER_DONE, MARKER_PART):
                raise RemoteProtocolError(f"bad end marker {marker:#x}", recoverable=True)
            return rows, types, marker == MARKER_DONE
        t, v = r.row(n)
        types.append(t)
        rows.append(v)


def test_client_decoding_refuses_unknown_types_as_the_reference() -> None:
    body = bytes([0x07]) + bytes(7) + bytes(8) + bytes([0xFF] * 8)
    fast, slow = Reader(body), Reader(body)
    assert _outcome(lambda: fast.rows(1)) == _outcome(lambda: _rows_one_by_one_reader(slow, 1))
    assert "unknown value type 7" in str(_outcome(lambda: Reader(body).rows(1)))


def test_rows_changing_shape_mid_batch_match_the_reference() -> None:
    """Each row shape gets its own compiled encoder; switching back and forth (NULLs,
    a float among integers, a blob among texts) keeps the bytes and the batch cuts."""
    rows: list[tuple[Any, ...]] = []
    for i in range(300):
        rows.append(
            (
                i if i % 7 else None,
                f"t{i}\x00cut" if i % 11 == 0 else ("x" * (i % 17) if i % 5 else b"b" * (i % 9)),
                float(i) if i % 3 == 0 else i,
                True if i % 13 == 0 else i - 150,
            )
        )
    decltypes: list[str | None] = [None, "TEXT", None, "BOOLEAN"]
    for size in (8, 100, 4096):
        assert _fast(["a", "b", "c", "d"], decltypes, rows, size) == _reference(
            ["a", "b", "c", "d"], decltypes, rows, size
        )


def test_a_row_with_a_different_number_of_values_is_refused() -> None:
    """The compiled encoder of a 2-value shape hands a 1-value row back, which is refused."""
    encoder = RowsBatchEncoder(["a", "b"], decltypes=[None, None])
    with pytest.raises(LocalProtocolError, match="1 values for 2 columns"):
        encoder.fill(iter([(1, 2), (3,)]))


def test_a_full_batch_stops_stepping_and_the_next_fill_goes_on() -> None:
    """fill takes no row past a full batch: the iterator is left at the next row."""
    rows = iter([(i, "v" * 20) for i in range(50)])
    encoder = RowsBatchEncoder(["k", "v"], batch_size=100, decltypes=[None, None])
    assert not encoder.fill(rows)
    taken = encoder.rows
    assert next(rows) == (taken, "v" * 20)


def test_text_holding_escaped_bytes_is_sent_as_those_bytes() -> None:
    """Text read from SQLite that is not UTF-8 arrives as surrogate escapes (\\udcXX):
    strict UTF-8 refuses it, and the encoder sends the original bytes, as the reference."""
    rows: list[tuple[Any, ...]] = [("ok",), ("a\udcffb",), ("\udc80",), ("é",)]
    messages = _fast(["t"], [None], rows, 4096)
    assert messages == _reference(["t"], [None], rows, 4096)
    assert b"a\xffb\x00" in messages[0]
