"""Values across the wire: parameters bound, columns described, rows converted.

The rules are ``sqlite3``'s: parameters go through registered adapters (and
``__conform__``) before they are bound; result columns get converters from
their declared type (``PARSE_DECLTYPES``) or from a ``[type]`` in their name
(``PARSE_COLNAMES``); text goes through the connection's ``text_factory``.
What differs is the wire (``protocol.md`` §4): text cannot hold NUL, a NULL in a
DATETIME column arrives as an empty ISO8601 value, and text that is not UTF-8
arrives with its bytes kept as lone surrogates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from ..wire import Value, ValueTuple, ValueType
from . import types as _types
from .errors import OperationalError, ProgrammingError
from .sqltext import ParsedSQL, iter_values
from .types import PARSE_COLNAMES, PrepareProtocol, adapt, adapters, converters

__all__ = ["Converter", "Description", "bind", "convert_row", "describe"]

#: A ``register_converter`` function: the value's bytes in, a Python object out.
Converter = Callable[[bytes], Any]
#: ``Cursor.description``: seven items per column, only the name filled in.
Description = tuple[tuple[str, None, None, None, None, None, None], ...]

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
# Exact types sqlite3 binds without trying adapters (unless one is registered
# for such a type).
_NOT_ADAPTED = frozenset({int, float, str, bytearray})
# "INTEGER NOT NULL" -> "INTEGER", "NUMBER(10)" -> "NUMBER", as sqlite3 splits
# declared types to find a converter.
_DECLTYPE_WORD = re.compile(r"[^ (]*")


# ------------------------------------------------------------------ parameters


def _adapt(value: object, index: int) -> Value:
    # As sqlite3: exact int, float, str and bytearray skip adaptation unless an
    # adapter was registered for one of those types; everything else goes
    # through adapt() with itself as the fallback.  (None and bytes have no
    # __conform__, so for them only a registered adapter can apply.)
    kind = type(value)
    needs_adapting = _types.base_types_adapted() or kind not in _NOT_ADAPTED
    plain = kind is bytes or value is None
    if needs_adapting and (not plain or (kind, PrepareProtocol) in adapters):
        value = adapt(value, PrepareProtocol, value)
    if value is None:
        return None
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return _text(value, index)
    if isinstance(value, bytes):
        return bytes(value)
    return _buffer(value, index)


def _text(value: str, index: int) -> str:
    if not value.isascii():
        value.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError, as in sqlite3
    if "\x00" in value:
        raise ProgrammingError(
            f"Error binding parameter {index}: the dqlite protocol cannot carry "
            "text containing NUL characters"
        )
    return str(value)


def _buffer(value: object, index: int) -> bytes:
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        raise ProgrammingError(
            f"Error binding parameter {index}: type '{type(value).__name__}' is not supported"
        ) from None
    with view:
        if not view.c_contiguous:
            raise BufferError("memoryview: underlying buffer is not C-contiguous")
        return view.tobytes()


def bind(parsed: ParsedSQL, parameters: Any) -> ValueTuple:
    """The wire values of ``parameters`` for ``parsed``, by position.

    Values are taken one at a time and adapted before the next is read, as
    sqlite3 binds them (an adapter may change the parameter list).

    Raises:
        ProgrammingError: wrong number or kind of parameters, or a value that
            cannot be bound.
    """
    return ValueTuple.of(_adapt(v, i) for i, v in enumerate(iter_values(parsed, parameters), 1))


# --------------------------------------------------------------------- columns


def _colname(column: str) -> tuple[str, Converter | None]:
    """PARSE_COLNAMES: the name before ``[``, and the converter named in the brackets.

    The converter is named by the last ``[`` before the first ``]`` after it;
    the name ends before the first ``[`` (and one blank before it).
    """
    conv = None
    type_start = -1
    for pos, char in enumerate(column):
        if char == "[":
            type_start = pos + 1
        elif char == "]" and type_start >= 0:
            conv = converters.get(column[type_start:pos].upper())
            break
    open_at = column.find("[")
    if open_at < 0:
        return column, conv
    if column[open_at - 1 : open_at] == " ":
        open_at -= 1
    return column[:open_at], conv


def describe(
    columns: Sequence[str], decltypes: Sequence[str | None] | None, detect_types: int
) -> tuple[Description, list[Converter | None]]:
    """``Cursor.description`` and the converter of each column (empty list: none at all)."""
    names: list[str] = []
    convs: list[Converter | None] = []
    for i, column in enumerate(columns):
        conv = None
        name = column
        if detect_types & PARSE_COLNAMES:
            name, conv = _colname(column)
        decltype = decltypes[i] if decltypes is not None else None
        if conv is None and decltype:
            word = _DECLTYPE_WORD.match(decltype)
            if word is not None:
                conv = converters.get(word.group().upper())
        names.append(name)
        convs.append(conv)
    description = tuple((n, None, None, None, None, None, None) for n in names)
    return description, convs if any(c is not None for c in convs) else []


# ------------------------------------------------------------------------ rows


def _float_text(value: float) -> str:
    # The text SQLite gives a REAL ("%!.15g"): always with a decimal point.
    text = f"{value:.15g}"
    if not any(c in text for c in ".eni"):
        text += ".0"
    return text


def _as_bytes(value: Value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, float):
        return _float_text(value).encode()
    return str(value).encode()


def _check_utf8(value: str, name: str) -> None:
    # Text arrives decoded with surrogateescape: TEXT that is not UTF-8 keeps
    # its bytes as lone surrogates, which only text_factory can accept.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogateescape")
        raise OperationalError(
            f"Could not decode to UTF-8 column '{name}' with text "
            f"'{raw.decode('utf-8', 'replace')}'"
        ) from None


def _text_value(value: str, text_factory: Any, columns: Sequence[str], i: int) -> Any:
    if text_factory is str:
        if not value.isascii():
            _check_utf8(value, columns[i] if i < len(columns) else str(i))
        return value
    raw = value.encode("utf-8", "surrogateescape")
    return raw if text_factory is bytes else text_factory(raw)


def convert_row(
    values: tuple[Value, ...],
    types: tuple[int, ...],
    convs: Sequence[Converter | None],
    text_factory: Any,
    columns: Sequence[str],
) -> tuple[Any, ...]:
    """A row as ``sqlite3`` returns it: converters, then ``text_factory`` for text.

    Args:
        values: the row's wire values.
        types: their wire types.
        convs: each column's converter (empty: none at all).
        text_factory: the connection's ``text_factory``.
        columns: the column names (for error messages).

    Raises:
        OperationalError: text that is not UTF-8 with ``text_factory`` ``str``.
    """
    out: list[Any] = []
    for i, (value, type_) in enumerate(zip(values, types, strict=True)):
        if type_ == ValueType.ISO8601 and value == "":
            # dqlite sends NULL in a DATETIME column as empty ISO8601 (§4.2).
            value = None
        conv = convs[i] if convs else None
        if conv is not None:
            # As sqlite3: NULL and empty values (no blob pointer) give None.
            raw = _as_bytes(value) if value is not None else b""
            out.append(conv(raw) if raw else None)
        elif isinstance(value, str):
            out.append(_text_value(value, text_factory, columns, i))
        else:
            out.append(value)
    return tuple(out)
