"""Incremental encoding of ROWS batches, the way dqlite's server cuts them (§3.8).

dqlite keeps stepping a statement and appending rows until the message,
header included, reaches a page (4096 bytes); the check comes before each step,
so a batch overshoots by at most one row.  Every batch repeats the column
header and ends with PART, except the last, which ends with DONE and may hold
no rows at all.

Rows as SQLite returns them (plain Python values) go through :meth:`RowsBatchEncoder.fill`,
the server's hot path: it picks each value's wire type from its Python type and
its column's declared type (§4.2) and encodes it without a method call per value.
Rows of a given shape (the Python types of their values) share one plan, built
once per result, and every part of a batch is joined once at the end.
:meth:`RowsBatchEncoder.add_row` encodes rows whose wire types are given, with
:class:`~dqlitepy.wire.codec.Writer` (the reference encoding).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

from .codec import Value, Writer, pad8
from .constants import (
    HEADER_SIZE,
    MARKER_DONE,
    MARKER_PART,
    ROWS_BATCH_SIZE,
    ResponseType,
    ValueType,
)
from .errors import LocalProtocolError
from .framing import encode_header

__all__ = ["RowsBatchEncoder", "declared_kinds", "wire_types"]

_DATE_TYPES = frozenset({"DATETIME", "DATE", "TIMESTAMP"})
_U64_MASK = (1 << 64) - 1

# Column kinds from the declared type (§4.2).
_PLAIN, _DATE, _BOOLEAN = 0, 1, 2

# How a value is encoded, decided once per row shape.
_OP_INT, _OP_U64, _OP_FLOAT, _OP_TEXT, _OP_BLOB, _OP_NULL = range(6)

_pack_i64 = struct.Struct("<q").pack
_pack_u64 = struct.Struct("<Q").pack
_pack_f64 = struct.Struct("<d").pack
_NULL_WORD = bytes(8)
# Text is NUL-terminated and padded to a word: 8 - (n % 8) zeros, at least one.
_TEXT_PAD = tuple(bytes(8 - k) for k in range(8))
# Blob data is padded to a word: (8 - n % 8) % 8 zeros.
_BLOB_PAD = tuple(bytes((8 - k) & 7) for k in range(8))
_MARKERS = {True: _pack_u64(MARKER_DONE), False: _pack_u64(MARKER_PART)}

# A row shape's header, its values' operations, and its size without text and blobs.
_Plan = tuple[bytes, tuple[int, ...], int]


def declared_kinds(decltypes: Sequence[str | None]) -> tuple[int, ...]:
    """Each column's kind for the declared-type mapping (§4.2): plain, date or boolean."""
    kinds = []
    for decl in decltypes:
        upper = decl.upper() if decl is not None else None
        kinds.append(_DATE if upper in _DATE_TYPES else _BOOLEAN if upper == "BOOLEAN" else _PLAIN)
    return tuple(kinds)


def wire_types(
    values: Sequence[Any], decltypes: Sequence[str | None]
) -> tuple[list[int], list[Value]]:
    """Wire types and values of one row under the declared-type mapping (§4.2).

    The reference for :meth:`RowsBatchEncoder.fill`: text ends at its first NUL,
    as dqlite's does; a BOOLEAN travels as uint64; NULL stays NULL whatever
    the declared type (where 1.11.1 would send "" or 0).
    """
    return _wire_types(values, declared_kinds(decltypes))


def _wire_types(values: Sequence[Any], kinds: Sequence[int]) -> tuple[list[int], list[Value]]:
    types: list[int] = []
    out: list[Value] = []
    for value, kind in zip(values, kinds, strict=True):
        if value is None:
            types.append(ValueType.NULL)
        elif isinstance(value, int):
            if kind == _DATE:
                types.append(ValueType.UNIXTIME)
            elif kind == _BOOLEAN:
                types.append(ValueType.BOOLEAN)
                value = value & _U64_MASK
            else:
                types.append(ValueType.INTEGER)
        elif isinstance(value, float):
            types.append(ValueType.FLOAT)
        elif isinstance(value, str):
            if "\x00" in value:
                value = value.split("\x00", 1)[0]
            types.append(ValueType.ISO8601 if kind == _DATE else ValueType.TEXT)
        else:
            types.append(ValueType.BLOB)
            value = bytes(value)
        out.append(value)
    return types, out


def _plan(shape: tuple[type, ...], kinds: tuple[int, ...]) -> _Plan:
    """The row header and per-value operations for rows of one shape."""
    n = len(shape)
    if n != len(kinds):
        raise LocalProtocolError(f"row has {n} values for {len(kinds)} columns")
    if n == 0:
        raise LocalProtocolError("a row must have at least one column")
    header = bytearray(pad8((n + 1) // 2))
    ops = []
    fixed = len(header)
    for i, (cls, kind) in enumerate(zip(shape, kinds, strict=True)):
        # Exact classes only: a subclass (bool, a str subclass...) takes the
        # reference path, which the caller falls back to on KeyError.
        if cls is int:
            code, op = (
                (ValueType.UNIXTIME, _OP_INT)
                if kind == _DATE
                else (ValueType.BOOLEAN, _OP_U64)
                if kind == _BOOLEAN
                else (ValueType.INTEGER, _OP_INT)
            )
        elif cls is float:
            code, op = ValueType.FLOAT, _OP_FLOAT
        elif cls is str:
            code, op = (ValueType.ISO8601 if kind == _DATE else ValueType.TEXT), _OP_TEXT
        elif cls is bytes:
            code, op = ValueType.BLOB, _OP_BLOB
        elif cls is type(None):
            code, op = ValueType.NULL, _OP_NULL
        else:
            raise KeyError(cls)
        header[i >> 1] |= code << ((i & 1) * 4)
        ops.append(op)
        if op != _OP_TEXT:
            fixed += 8  # a blob's length word; its data counts apart
    return bytes(header), tuple(ops), fixed


# Caches shared by every result: a point read builds no names, kinds or plan of
# its own.  Bounded by clearing (a server seeing endless new shapes or column
# names just rebuilds them); each entry is immutable, so threads may share them.
_CACHE_SIZE = 1024
_prefixes: dict[tuple[tuple[str, ...], tuple[str | None, ...]], tuple[bytes, tuple[int, ...]]] = {}
_plans: dict[tuple[tuple[type, ...], tuple[int, ...]], _Plan] = {}


def _prefix(
    columns: tuple[str, ...], decltypes: tuple[str | None, ...]
) -> tuple[bytes, tuple[int, ...]]:
    """The encoded column count and names, and the columns' kinds."""
    key = (columns, decltypes)
    found = _prefixes.get(key)
    if found is None:
        names = Writer()
        names.u64(len(columns))
        for name in columns:
            names.text(name)
        found = (bytes(names.buf), declared_kinds(decltypes))
        if len(_prefixes) >= _CACHE_SIZE:
            _prefixes.clear()
        _prefixes[key] = found
    return found


class RowsBatchEncoder:
    """Builds the ROWS messages of one result.

    Usage: :meth:`fill` with the result's rows until it says the result is
    done, calling :meth:`finish` after each fill; or ``add_row`` while ``full``
    is False, then ``finish(done=False)`` to get a PART message and start the
    next batch, or ``finish(done=True)`` for the final DONE message.

    Args:
        columns: the result's column names.
        batch_size: the message size (header included) that closes a batch.
        decltypes: each column's declared type, for :meth:`fill` (§4.2).
    """

    __slots__ = (
        "_batch_size",
        "_columns",
        "_kinds",
        "_names",
        "_parts",
        "_plans",
        "_rows",
        "_size",
    )

    def __init__(
        self,
        columns: Sequence[str],
        batch_size: int = ROWS_BATCH_SIZE,
        decltypes: Sequence[str | None] | None = None,
    ) -> None:
        self._columns = tuple(columns)
        self._batch_size = batch_size
        self._names, self._kinds = _prefix(
            self._columns,
            tuple(decltypes) if decltypes is not None else (None,) * len(self._columns),
        )
        self._plans: dict[tuple[type, ...], _Plan] = {}
        self._parts: list[bytes] = []
        self._rows = 0
        self._size = 0
        self._start()

    def _start(self) -> None:
        self._parts = [self._names]
        self._size = HEADER_SIZE + len(self._names)
        self._rows = 0

    @property
    def rows(self) -> int:
        """Rows in the current batch."""
        return self._rows

    @property
    def full(self) -> bool:
        """True once the batch has reached the size that closes it."""
        return self._size >= self._batch_size

    def add_row(self, types: Sequence[int], values: Sequence[Value]) -> None:
        """Append one row (types per value, see §4.1)."""
        w = Writer()
        w.row(types, values)
        self._parts.append(bytes(w.buf))
        self._size += len(w.buf)
        self._rows += 1

    def fill(self, rows: Iterator[tuple[Any, ...]]) -> bool:
        """Append rows from ``rows`` until the batch is full; True if ``rows`` ran out.

        A row is taken only while the batch is below its size, as dqlite checks
        before each step; a batch holds at least one row, unless ``rows`` ran out.
        """
        try:
            return self._fill(rows)
        except (struct.error, UnicodeEncodeError) as exc:
            raise LocalProtocolError(f"row does not fit the wire protocol: {exc}") from exc

    def _fill(self, rows: Iterator[tuple[Any, ...]]) -> bool:
        # One loop without a call per value, everything it uses in locals: this
        # is where a scan's time goes.  A plan's fixed size covers its header and
        # every one-word value; text and blobs add their own length.
        parts = self._parts
        append = parts.append
        plans = self._plans
        size = self._size
        limit = self._batch_size
        count = self._rows
        pack_i64, pack_u64, pack_f64 = _pack_i64, _pack_u64, _pack_f64
        text_pad, blob_pad, null_word, u64_mask = _TEXT_PAD, _BLOB_PAD, _NULL_WORD, _U64_MASK
        op_int, op_text, op_float, op_null, op_blob = (
            _OP_INT,
            _OP_TEXT,
            _OP_FLOAT,
            _OP_NULL,
            _OP_BLOB,
        )
        try:
            while count == 0 or size < limit:
                row = next(rows, None)
                if row is None:
                    return True
                shape = tuple(map(type, row))
                plan = plans.get(shape)
                if plan is None:
                    plan = self._new_plan(shape, row)
                    if plan is None:
                        size += len(parts[-1])
                        count += 1
                        continue
                header, ops, fixed = plan
                append(header)
                size += fixed
                # The plan was made for this row's shape: as many ops as values.
                for op, value in zip(ops, row, strict=False):
                    if op == op_int:
                        append(pack_i64(value))
                    elif op == op_text:
                        if "\x00" in value:
                            # The protocol's text ends at the first NUL, as dqlite's does.
                            value = value.split("\x00", 1)[0]
                        data = value.encode("utf-8", "surrogateescape")
                        append(data)
                        append(text_pad[len(data) & 7])
                        size += (len(data) | 7) + 1
                    elif op == op_float:
                        append(pack_f64(value))
                    elif op == op_null:
                        append(null_word)
                    elif op == op_blob:
                        append(pack_u64(len(value)))
                        append(value)
                        append(blob_pad[len(value) & 7])
                        size += (len(value) + 7) & ~7
                    else:
                        append(pack_u64(value & u64_mask))
                count += 1
            return False
        finally:
            self._size = size
            self._rows = count

    def _new_plan(self, shape: tuple[type, ...], row: tuple[Any, ...]) -> _Plan | None:
        """The plan for rows of ``shape``; None if ``row`` went the reference way instead."""
        key = (shape, self._kinds)
        try:
            plan = _plans.get(key) or _plan(shape, self._kinds)
        except KeyError:
            # A value of an unexpected class (a subclass, a memoryview): encoded
            # as the reference does it, which may convert it or refuse it.
            types, values = _wire_types(row, self._kinds)
            w = Writer()
            w.row(types, values)
            self._parts.append(bytes(w.buf))
            return None
        if len(_plans) >= _CACHE_SIZE:
            _plans.clear()
        _plans[key] = self._plans[shape] = plan
        return plan

    def finish(self, *, done: bool) -> bytes:
        """Return the whole message for the current batch and start a new one."""
        self._parts.append(_MARKERS[done])
        header = encode_header(ResponseType.ROWS, 0, self._size + 8 - HEADER_SIZE)
        body = b"".join([header, *self._parts])
        self._start()
        return body
