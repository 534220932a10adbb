"""Incremental encoding of ROWS batches, the way dqlite's server cuts them (§3.8).

dqlite keeps stepping a statement and appending rows until the message,
header included, reaches a page (4096 bytes); the check comes before each step,
so a batch overshoots by at most one row.  Every batch repeats the column
header and ends with PART, except the last, which ends with DONE and may hold
no rows at all.

Rows as SQLite returns them (plain Python values) go through :meth:`RowsBatchEncoder.fill`,
the server's hot path: it picks each value's wire type from its Python type and
its column's declared type (§4.2).  Rows of a given shape (the Python types of
their values) share one plan, from which an encoder for that shape is compiled
once (:func:`_compile`): it steps the rows itself and encodes each with one
``struct`` call per run of one-word values, and every part of a batch is joined
once at the end.
:meth:`RowsBatchEncoder.add_row` encodes rows whose wire types are given, with
:class:`~dqlitepy.wire.codec.Writer` (the reference encoding).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from typing import Any, Final

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

_pack_u64 = struct.Struct("<Q").pack
# Text is NUL-terminated and padded to a word: 8 - (n % 8) zeros, at least one.
_TEXT_PAD = tuple(bytes(8 - k) for k in range(8))
# Blob data is padded to a word: (8 - n % 8) % 8 zeros.
_BLOB_PAD = tuple(bytes((8 - k) & 7) for k in range(8))
_MARKERS = {True: _pack_u64(MARKER_DONE), False: _pack_u64(MARKER_PART)}
# A message header (framing.encode_header), and the largest body it can announce.
_HEADER_PACK = struct.Struct("<IBBH").pack
_MAX_BODY = 0xFFFF_FFFF * 8

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


# What a compiled encoder returns instead of a row: the batch is full, the rows ran out.
_FULL: Final = object()
_END: Final = object()

# encode(rows, append, size, limit, count) -> (row, size, count): appends the rows of
# one shape to a batch until it is full (_FULL) or ``rows`` ran out (_END); a row of
# another shape is returned, not encoded.  ``size`` and ``count`` are the batch's.
_Encode = Callable[
    [Iterator[tuple[Any, ...]], Callable[[bytes], None], int, int, int],
    tuple[object, int, int],
]

_FIXED_FORMATS = {_OP_INT: "q", _OP_U64: "Q", _OP_FLOAT: "d", _OP_NULL: "8x"}


def _compile(plan: _Plan) -> _Encode:
    """A function encoding rows of one shape, its loop and values inline.

    Written out as Python source for the plan and compiled once per shape (shared
    by every result), so that a row costs one tuple unpacking, one class check per
    value and one ``struct`` call per run of one-word values (the row header
    included), instead of a loop over the values that dispatches on each one's
    operation.  The source holds only generated names and numbers, never data.
    """
    header, ops, fixed = plan
    names = [f"v{i}" for i in range(len(ops))]
    namespace: dict[str, Any] = {
        "_FULL": _FULL,
        "_END": _END,
        "_H": header,
        "_TP": _TEXT_PAD,
        "_BP": _BLOB_PAD,
        "_M": _U64_MASK,
    }
    checks: list[str] = []
    prepare: list[str] = []
    pieces: list[str] = []
    sizes = [str(fixed)]
    run_format, run_args = f"<{len(header)}s", ["_H"]

    def flush() -> None:
        nonlocal run_format, run_args
        if run_format != "<":
            packer = f"_S{len(pieces)}"
            namespace[packer] = struct.Struct(run_format).pack
            pieces.append(f"{packer}({', '.join(run_args)})")
        run_format, run_args = "<", []

    for name, op in zip(names, ops, strict=True):
        if op == _OP_NULL:
            checks.append(f"{name} is not None")
        elif op == _OP_TEXT:
            checks.append(f"type({name}) is not str")
        elif op == _OP_BLOB:
            checks.append(f"type({name}) is not bytes")
        else:
            checks.append(f"type({name}) is not {'float' if op == _OP_FLOAT else 'int'}")
        if op == _OP_TEXT:
            flush()
            # The protocol's text ends at the first NUL, as dqlite's does.
            # Strict UTF-8 first: the same bytes whenever it succeeds, and cheaper.
            prepare += [
                f'if "\\x00" in {name}:',
                f'    {name} = {name}.split("\\x00", 1)[0]',
                "try:",
                f"    d{name} = {name}.encode()",
                "except UnicodeEncodeError:",
                f'    d{name} = {name}.encode("utf-8", "surrogateescape")',
                f"n{name} = len(d{name})",
            ]
            pieces += [f"d{name}", f"_TP[n{name} & 7]"]
            sizes.append(f"(n{name} | 7) + 1")
        elif op == _OP_BLOB:
            run_format += "Q"
            run_args.append(f"len({name})")
            flush()
            pieces += [name, f"_BP[len({name}) & 7]"]
            sizes.append(f"((len({name}) + 7) & -8)")
        else:
            run_format += _FIXED_FORMATS[op]
            if op != _OP_NULL:
                run_args.append(f"{name} & _M" if op == _OP_U64 else name)
    flush()
    joined = " + ".join(pieces) if len(pieces) <= 4 else f"b''.join(({', '.join(pieces)},))"
    body = [
        "def encode(rows, append, size, limit, count):",
        "    for row in rows:",
        "        try:",
        f"            {', '.join(names)}, = row",
        "        except (TypeError, ValueError):",
        "            return row, size, count",
        f"        if {' or '.join(checks)}:",
        "            return row, size, count",
        *(f"        {line}" for line in prepare),
        f"        append({joined})",
        f"        size += {' + '.join(sizes)}",
        "        count += 1",
        "        if size >= limit:",
        "            return _FULL, size, count",
        "    return _END, size, count",
    ]
    exec(compile("\n".join(body), f"<rows encoder {len(ops)} columns>", "exec"), namespace)
    encode: _Encode = namespace["encode"]
    return encode


# Caches shared by every result: a point read builds no names, kinds or plan of
# its own.  Bounded by clearing (a server seeing endless new shapes or column
# names just rebuilds them); each entry is immutable, so threads may share them.
_CACHE_SIZE = 1024
_prefixes: dict[tuple[tuple[str, ...], tuple[str | None, ...]], tuple[bytes, tuple[int, ...]]] = {}
_encoders: dict[tuple[tuple[type, ...], tuple[int, ...]], _Encode] = {}


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
        "_empty_size",
        "_encode",
        "_encoders",
        "_kinds",
        "_names",
        "_parts",
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
        # The size of a batch without rows.
        self._empty_size = HEADER_SIZE + len(self._names)
        # This result's encoder per row shape, and the one of the last row.
        self._encoders: dict[tuple[type, ...], _Encode] = {}
        self._encode: _Encode | None = None
        self._parts: list[bytes] = []
        self._rows = 0
        self._size = 0
        self._start()

    def _start(self) -> None:
        self._parts = [self._names]
        self._size = self._empty_size
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
        # Rows of the shape last seen go through that shape's compiled encoder,
        # which runs the loop itself; a row of another shape comes back here, and
        # its shape's encoder goes on from it.  A row comes back only when taken
        # below the size (or as a batch's first), so it is always encoded.
        append = self._parts.append
        size = self._size
        count = self._rows
        limit = self._batch_size
        encode = self._encode
        source = rows
        try:
            while count == 0 or size < limit:
                if encode is None:
                    first = next(rows, None)
                    if first is None:
                        return True
                    row = first
                else:
                    stopped, size, count = encode(source, append, size, limit, count)
                    if stopped is _FULL:
                        return False
                    if stopped is _END:
                        return True
                    row = stopped  # type: ignore[assignment]
                encode = self._encoder_for(row)
                if encode is None:  # encoded the reference way
                    size += len(self._parts[-1])
                    count += 1
                    source = rows
                else:
                    source = chain((row,), rows)
            return False
        except (struct.error, UnicodeEncodeError) as exc:
            raise LocalProtocolError(f"row does not fit the wire protocol: {exc}") from exc
        finally:
            self._size = size
            self._rows = count
            self._encode = encode

    def _encoder_for(self, row: tuple[Any, ...]) -> _Encode | None:
        """The encoder of ``row``'s shape; None if ``row`` went the reference way instead."""
        shape = tuple(map(type, row))
        encode = self._encoders.get(shape)
        if encode is not None:
            return encode
        key = (shape, self._kinds)
        encode = _encoders.get(key)
        if encode is None:
            try:
                encode = _compile(_plan(shape, self._kinds))
            except KeyError:
                # A value of an unexpected class (a subclass, a memoryview): encoded
                # as the reference does it, which may convert it or refuse it.
                types, values = _wire_types(row, self._kinds)
                w = Writer()
                w.row(types, values)
                self._parts.append(bytes(w.buf))
                return None
            if len(_encoders) >= _CACHE_SIZE:
                _encoders.clear()
            _encoders[key] = encode
        self._encoders[shape] = encode
        return encode

    def finish(self, *, done: bool) -> bytes:
        """Return the whole message for the current batch and start a new one."""
        self._parts.append(_MARKERS[done])
        body_size = self._size + 8 - HEADER_SIZE
        if body_size & 7 or body_size > _MAX_BODY:
            encode_header(ResponseType.ROWS, 0, body_size)  # raises the error it names
        # encode_header's header, without the call: every result ends here.
        header = _HEADER_PACK(body_size >> 3, ResponseType.ROWS, 0, 0)
        body = b"".join([header, *self._parts])
        # A new batch (_start, without the call: every result ends here).
        self._parts = [self._names]
        self._size = self._empty_size
        self._rows = 0
        return body
