"""Field and value encodings of the dqlite wire protocol (``protocol.md`` §1.4–§1.5, §4).

Every integer is little-endian; bodies are whole 8-byte words.  Only text, blob
and tuple headers pad themselves, and readers must ignore padding content
because both go-dqlite and the C server leave garbage there (§1.4).

Text values are decoded with ``surrogateescape`` so that SQLite TEXT that is not
valid UTF-8 survives a decode/encode round trip byte for byte; the driver decides
what a user sees.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from .constants import MARKER_DONE, MARKER_PART, ValueType
from .errors import LocalProtocolError, RemoteProtocolError
from .record import record

__all__ = [
    "Reader",
    "Value",
    "ValueTuple",
    "Writer",
    "infer_type",
    "pad8",
]

#: A Python value as carried by the protocol.
Value = int | float | str | bytes | None

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_U32_PAIR = struct.Struct("<II")
_U64_PAIR = struct.Struct("<QQ")

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_U64_MASK = (1 << 64) - 1
_ZEROS = bytes(8)

_TEXT_TYPES = (ValueType.TEXT, ValueType.ISO8601)
_VALID_TYPES = frozenset(int(t) for t in ValueType)


def pad8(n: int) -> int:
    """Return ``n`` rounded up to a multiple of 8."""
    return (n + 7) & ~7


def infer_type(value: object) -> ValueType:
    """Pick the wire type for a Python value.

    ``bool`` goes as INTEGER (SQLite has no boolean storage class, and ``sqlite3``
    binds ``True`` as 1).

    Raises:
        LocalProtocolError: for a type the protocol cannot carry.
    """
    if value is None:
        return ValueType.NULL
    if isinstance(value, int):
        return ValueType.INTEGER
    if isinstance(value, float):
        return ValueType.FLOAT
    if isinstance(value, str):
        return ValueType.TEXT
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ValueType.BLOB
    raise LocalProtocolError(f"cannot encode a value of type {type(value).__name__!r}")


@record
class ValueTuple:
    """Values with their wire types, as carried by a parameter tuple (§4.3)."""

    types: tuple[int, ...] = ()
    values: tuple[Value, ...] = ()

    def __post_init__(self) -> None:
        if len(self.types) != len(self.values):
            raise LocalProtocolError(
                f"tuple has {len(self.types)} types but {len(self.values)} values"
            )

    @classmethod
    def of(cls, values: Iterable[object]) -> ValueTuple:
        """Build a tuple from plain Python values, inferring each wire type."""
        vals: list[Value] = []
        types: list[int] = []
        for v in values:
            t = infer_type(v)
            if t is ValueType.INTEGER:
                v = int(v)  # type: ignore[call-overload]
            elif t is ValueType.BLOB and not isinstance(v, bytes):
                v = bytes(v)  # type: ignore[call-overload]
            types.append(t)
            vals.append(v)  # type: ignore[arg-type]
        return cls(tuple(types), tuple(vals))

    def __len__(self) -> int:
        return len(self.values)


class Writer:
    """Appends encoded fields to a growing body."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def u32_pair(self, a: int, b: int) -> None:
        try:
            self.buf += _U32_PAIR.pack(a, b)
        except struct.error as exc:
            raise LocalProtocolError(f"not a pair of uint32: {a!r}, {b!r}") from exc

    def u64(self, value: int) -> None:
        # Negative values travel as two's complement (a rowid, a BOOLEAN read from
        # SQLite); anything outside int64 ∪ uint64 would be silently truncated.
        try:
            if not _INT64_MIN <= value <= _U64_MASK:
                raise LocalProtocolError(f"integer out of the 64-bit range: {value!r}")
            self.buf += _U64.pack(value & _U64_MASK)
        except TypeError as exc:
            raise LocalProtocolError(f"not an integer: {value!r}") from exc

    def i64(self, value: int) -> None:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise LocalProtocolError(f"integer out of the int64 range: {value!r}")
        self.buf += _I64.pack(value)

    def double(self, value: float) -> None:
        self.buf += _F64.pack(value)

    def text(self, value: str) -> None:
        try:
            data = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(f"text is not encodable as UTF-8: {value!r}") from exc
        if b"\x00" in data:
            # The server finds the end of a text field with strlen: a NUL would
            # shift every later field (§1.5).
            raise LocalProtocolError(f"text cannot contain NUL characters: {value!r}")
        self.buf += data
        self.buf += _ZEROS[: 8 - (len(data) & 7)]

    def blob(self, value: bytes) -> None:
        self.buf += _U64.pack(len(value))
        self.buf += value
        if len(value) & 7:
            self.buf += _ZEROS[: 8 - (len(value) & 7)]

    def raw(self, data: bytes) -> None:
        self.buf += data

    def value(self, type_: int, value: Value) -> None:
        """Encode one value of the given wire type (§4.1)."""
        try:
            if type_ == ValueType.INTEGER or type_ == ValueType.UNIXTIME:
                self.i64(value)  # type: ignore[arg-type]
            elif type_ == ValueType.FLOAT:
                self.double(value)  # type: ignore[arg-type]
            elif type_ == ValueType.TEXT or type_ == ValueType.ISO8601:
                self.text(value)  # type: ignore[arg-type]
            elif type_ == ValueType.BLOB:
                self.blob(value)  # type: ignore[arg-type]
            elif type_ == ValueType.NULL:
                self.buf += _ZEROS
            elif type_ == ValueType.BOOLEAN:
                self.u64(value)  # type: ignore[arg-type]
            else:
                raise LocalProtocolError(f"unknown value type {type_!r}")
        except (struct.error, TypeError, AttributeError) as exc:
            raise LocalProtocolError(f"value {value!r} does not fit wire type {type_!r}") from exc

    def _type_header(self, types: Sequence[int], prefix: bytes) -> None:
        header = bytearray(prefix)
        for t in types:
            if t not in _VALID_TYPES:
                raise LocalProtocolError(f"unknown value type {t!r}")
            header.append(t)
        header += _ZEROS[: (8 - (len(header) & 7)) & 7]
        self.buf += header

    def params(self, params: ValueTuple, schema: int) -> None:
        """Encode a parameter tuple; schema 0 has a 1-byte count, schema 1 a 4-byte one."""
        n = len(params.types)
        if schema == 0:
            if n > 255:
                raise LocalProtocolError(f"{n} parameters do not fit schema 0 (at most 255)")
            self._type_header(params.types, bytes((n,)))
        elif schema == 1:
            self._type_header(params.types, _U32.pack(n))
        else:
            raise LocalProtocolError(f"unknown parameter schema {schema!r}")
        for t, v in zip(params.types, params.values, strict=True):
            self.value(t, v)

    def row(self, types: Sequence[int], values: Sequence[Value]) -> None:
        """Encode one row: 4-bit types, low nibble first, padded to a word (§3.8)."""
        n = len(types)
        if n != len(values):
            raise LocalProtocolError(f"row has {n} types but {len(values)} values")
        if n == 0:
            # A row without values has no bytes at all: it would vanish on the wire.
            raise LocalProtocolError("a row must have at least one column")
        header = bytearray(pad8((n + 1) // 2))
        for i, t in enumerate(types):
            if t not in _VALID_TYPES:
                raise LocalProtocolError(f"unknown value type {t!r}")
            header[i >> 1] |= t << ((i & 1) * 4)
        self.buf += header
        for t, v in zip(types, values, strict=True):
            self.value(t, v)

    def getvalue(self) -> bytes:
        return bytes(self.buf)


class Reader:
    """Decodes fields from a body, raising :class:`RemoteProtocolError` on bad input."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.end = len(self.data)

    def _short(self, what: str) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"message body too short: {what} at byte {self.pos} of {self.end}",
            recoverable=True,
        )

    def remaining(self) -> int:
        return self.end - self.pos

    def at_end(self) -> bool:
        return self.pos >= self.end

    def u32_pair(self) -> tuple[int, int]:
        if self.pos + 8 > self.end:
            raise self._short("two uint32")
        a, b = _U32_PAIR.unpack_from(self.data, self.pos)
        self.pos += 8
        return a, b

    def u64(self) -> int:
        if self.pos + 8 > self.end:
            raise self._short("uint64")
        (v,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return int(v)

    def i64(self) -> int:
        if self.pos + 8 > self.end:
            raise self._short("int64")
        (v,) = _I64.unpack_from(self.data, self.pos)
        self.pos += 8
        return int(v)

    def double(self) -> float:
        if self.pos + 8 > self.end:
            raise self._short("double")
        (v,) = _F64.unpack_from(self.data, self.pos)
        self.pos += 8
        return float(v)

    def text(self) -> str:
        nul = self.data.find(b"\x00", self.pos, self.end)
        if nul < 0:
            raise self._short("NUL-terminated text")
        value = self.data[self.pos : nul].decode("utf-8", "surrogateescape")
        # Padding counts from the start of the field, as Writer.text writes it: a
        # FILES name can follow raw file bytes that end off a word boundary.
        self.pos = min(self.end, self.pos + pad8(nul + 1 - self.pos))
        return value

    def blob(self) -> bytes:
        n = self.u64()
        if n > self.end - self.pos:
            raise RemoteProtocolError(
                f"blob of {n} bytes overruns the message body", recoverable=True
            )
        value = self.data[self.pos : self.pos + n]
        self.pos = min(self.end, self.pos + pad8(n))
        return value

    def raw(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise self._short(f"{n} raw bytes")
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    def value(self, type_: int) -> Value:
        """Decode one value of the given wire type (§4.1)."""
        if type_ == ValueType.INTEGER or type_ == ValueType.UNIXTIME:
            return self.i64()
        if type_ == ValueType.TEXT or type_ == ValueType.ISO8601:
            return self.text()
        if type_ == ValueType.FLOAT:
            return self.double()
        if type_ == ValueType.NULL:
            self.u64()
            return None
        if type_ == ValueType.BLOB:
            return self.blob()
        if type_ == ValueType.BOOLEAN:
            return self.u64()
        raise RemoteProtocolError(f"unknown value type {type_!r}", recoverable=True)

    def params(self, schema: int) -> ValueTuple:
        """Decode an optional parameter tuple: no bytes left means no parameters (§4.3)."""
        if self.at_end():
            return ValueTuple()
        if schema == 0:
            n = self.data[self.pos]
            header = 1 + n
        elif schema == 1:
            if self.pos + 4 > self.end:
                raise self._short("parameter count")
            (n,) = _U32.unpack_from(self.data, self.pos)
            header = 4 + n
        else:
            raise RemoteProtocolError(f"unknown parameter schema {schema!r}", recoverable=True)
        if self.pos + pad8(header) > self.end:
            raise self._short("parameter types")
        types = tuple(self.data[self.pos + header - n : self.pos + header])
        self.pos += pad8(header)
        for t in types:
            if t not in _VALID_TYPES:
                raise RemoteProtocolError(f"unknown parameter type {t!r}", recoverable=True)
        values = tuple(self.value(t) for t in types)
        return ValueTuple(types, values)

    def rows(self, n_columns: int) -> tuple[list[tuple[Value, ...]], list[tuple[int, ...]], bool]:
        """Decode rows up to and including the end marker.

        The common values are decoded inline and each distinct row header is
        parsed once: a client reading a large result spends its time here.
        Anything unusual (a short body, an unknown type) goes through the
        field methods, which raise exactly as :meth:`row` does.

        Returns:
            ``(rows, row_types, done)`` where ``done`` tells DONE from PART.
        """
        rows: list[tuple[Value, ...]] = []
        row_types: list[tuple[int, ...]] = []
        data = self.data
        end = self.end
        pos = self.pos
        header_len = (n_columns + 1) // 2
        header_size = pad8(header_len)
        headers: dict[bytes, tuple[int, ...]] = {}
        unpack_i64, unpack_f64, find = _I64.unpack_from, _F64.unpack_from, data.find
        while True:
            if pos + header_size > end or data[pos] == 0xFF or data[pos] == 0xEE or not n_columns:
                # A marker (a type nibble is never 0xE or 0xF, §3.8), a short
                # body, or a row where there can be none: the slow way.
                self.pos = pos
                done = self._marker_or_row(n_columns, rows, row_types)
                if done is not None:
                    return rows, row_types, done
                pos = self.pos
                continue
            header = data[pos : pos + header_len]
            types = headers.get(header)
            if types is None:
                types = headers[header] = tuple(
                    (header[i >> 1] >> ((i & 1) * 4)) & 0x0F for i in range(n_columns)
                )
            pos += header_size
            values: list[Value] = []
            for t in types:
                if (t == 1 or t == 9) and pos + 8 <= end:
                    values.append(unpack_i64(data, pos)[0])
                    pos += 8
                elif (t == 3 or t == 10) and (nul := find(b"\x00", pos, end)) >= 0:
                    values.append(data[pos:nul].decode("utf-8", "surrogateescape"))
                    # NUL included, padded to a word from the field's start.
                    pos = min(end, pos + ((nul - pos) | 7) + 1)
                elif t == 2 and pos + 8 <= end:
                    values.append(unpack_f64(data, pos)[0])
                    pos += 8
                else:
                    # NULL, BLOB, BOOLEAN, unknown types and short bodies.
                    self.pos = pos
                    values.append(self.value(t))
                    pos = self.pos
            rows.append(tuple(values))
            row_types.append(types)

    def _marker_or_row(
        self, n_columns: int, rows: list[tuple[Value, ...]], row_types: list[tuple[int, ...]]
    ) -> bool | None:
        """Decode an end marker (True: DONE, False: PART) or one row (None)."""
        if self.pos + 8 > self.end:
            raise self._short("row or end marker")
        first = self.data[self.pos]
        if first == 0xFF or first == 0xEE:
            marker = self.u64()
            if marker == MARKER_DONE:
                return True
            if marker == MARKER_PART:
                return False
            raise RemoteProtocolError(f"bad end marker {marker:#x}", recoverable=True)
        types, values = self.row(n_columns)
        row_types.append(types)
        rows.append(values)
        return None

    def row(self, n_columns: int) -> tuple[tuple[int, ...], tuple[Value, ...]]:
        """Decode one row: its 4-bit type header, then its values (§3.8)."""
        if n_columns == 0:
            raise RemoteProtocolError("row in a result without columns", recoverable=True)
        header_size = pad8((n_columns + 1) // 2)
        if self.pos + header_size > self.end:
            raise self._short("row header")
        header = self.data[self.pos : self.pos + (n_columns + 1) // 2]
        self.pos += header_size
        types = tuple((header[i >> 1] >> ((i & 1) * 4)) & 0x0F for i in range(n_columns))
        return types, tuple([self.value(t) for t in types])
