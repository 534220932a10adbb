"""The ``sqlite3`` module's type helpers: adapters, converters, ``Row`` and DB-API constructors.

Adapters turn Python objects into values the wire can carry before they are
bound; converters turn the bytes of a result value into Python objects when
``detect_types`` asks for it.  Both registries are module-global, as in
``sqlite3``.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ProgrammingError

if TYPE_CHECKING:
    from .cursor import CursorBase

__all__ = [
    "PARSE_COLNAMES",
    "PARSE_DECLTYPES",
    "Binary",
    "Date",
    "DateFromTicks",
    "PrepareProtocol",
    "Row",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "adapt",
    "adapters",
    "converters",
    "register_adapter",
    "register_converter",
]

#: Look up converters by the declared type of a column.
PARSE_DECLTYPES = 1
#: Look up converters by a ``[type]`` suffix in the column name.
PARSE_COLNAMES = 2

Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime
Binary = memoryview


def DateFromTicks(ticks: float) -> datetime.date:
    """Return the local date of a Unix time."""
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:
    """Return the local time of day of a Unix time."""
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:
    """Return the local date and time of a Unix time."""
    return Timestamp(*time.localtime(ticks)[:6])


class PrepareProtocol:
    """The protocol object adapters are registered for (PEP 246 style, as in ``sqlite3``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass


#: ``(type, protocol) -> adapter`` registry.
adapters: dict[tuple[type, type], Callable[[Any], Any]] = {}
#: Upper-cased type name -> converter registry.
converters: dict[str, Callable[[bytes], Any]] = {}

_MISSING = object()
# The types sqlite3 binds as they are, without looking for an adapter, until an
# adapter is registered for one of them.
_BASE_TYPES = (int, float, str, bytearray)
_base_types_adapted = False


def base_types_adapted() -> bool:
    """True once an adapter was registered for int, float, str or bytearray.

    Until then values of exactly those types are bound without adaptation, as
    ``sqlite3`` does.
    """
    return _base_types_adapted


def register_adapter(type_: type, adapter: Callable[[Any], Any], /) -> None:
    """Register a callable that turns instances of ``type_`` into bindable values."""
    global _base_types_adapted
    adapters[(type_, PrepareProtocol)] = adapter
    if type_ in _BASE_TYPES:
        _base_types_adapted = True


def register_converter(typename: str, converter: Callable[[bytes], Any], /) -> None:
    """Register a callable that turns a value's bytes into an object of ``typename``."""
    converters[typename.upper()] = converter


def adapt(obj: Any, proto: type = PrepareProtocol, alt: Any = _MISSING, /) -> Any:
    """Adapt ``obj`` for ``proto`` the way ``sqlite3.adapt`` does.

    Raises:
        ProgrammingError: no adaptation is possible and no ``alt`` was given.
    """
    adapter = adapters.get((type(obj), proto))
    if adapter is not None:
        return adapter(obj)
    # Then the protocol's __adapt__(obj), then the object's __conform__(proto).
    # As in sqlite3 (PEP 246), None or a TypeError means "cannot", and the next
    # way is tried; any other exception propagates.
    for method, argument in (
        (getattr(proto, "__adapt__", None), obj),
        (getattr(obj, "__conform__", None), proto),
    ):
        if method is None:
            continue
        try:
            result = method(argument)
        except TypeError:
            continue
        if result is not None:
            return result
    if alt is not _MISSING:
        return alt
    raise ProgrammingError("can't adapt")


def _adapt_date(value: datetime.date) -> str:
    return value.isoformat()


def _adapt_datetime(value: datetime.datetime) -> str:
    return value.isoformat(" ")


def _convert_date(value: bytes) -> datetime.date:
    return datetime.date(*map(int, value.split(b"-")))


def _convert_timestamp(value: bytes) -> datetime.datetime:
    date_part, _, time_part = value.partition(b" ")
    if not time_part:
        date_part, _, time_part = value.partition(b"T")
    year, month, day = map(int, date_part.split(b"-"))
    hms, _, fraction = time_part.partition(b".")
    pieces = [int(p) for p in hms.split(b":")] if hms else [0, 0, 0]
    while len(pieces) < 3:
        pieces.append(0)
    micro = int(fraction.ljust(6, b"0")[:6]) if fraction else 0
    return datetime.datetime(year, month, day, pieces[0], pieces[1], pieces[2], micro)


# sqlite3 registers these by default (deprecated there since 3.12, but still on).
register_adapter(datetime.date, _adapt_date)
register_adapter(datetime.datetime, _adapt_datetime)
register_converter("date", _convert_date)
register_converter("timestamp", _convert_timestamp)


def _ascii_casefold(text: str) -> str:
    # sqlite3 matches column names case-insensitively for ASCII letters only.
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


class Row:
    """A result row addressable by index and by column name (ASCII case-insensitive)."""

    __slots__ = ("_description", "_values")

    def __init__(self, cursor: CursorBase, data: tuple[Any, ...], /) -> None:
        from .cursor import CursorBase  # here: the cursor module imports this one

        # The object's real type, not what its __class__ claims (as sqlite3 checks);
        # dqlitepy.aio's cursors are welcome too.
        if not issubclass(type(cursor), CursorBase):
            raise TypeError(
                f"Row() argument 1 must be dqlitepy.Cursor, not {type(cursor).__name__}"
            )
        if not isinstance(data, tuple):
            raise TypeError("Row() argument 2 must be a tuple")
        self._description = cursor.description or ()
        self._values = data

    def keys(self) -> list[str]:
        """The column names, in order."""
        return [d[0] for d in self._description]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            folded = _ascii_casefold(key)
            for i, d in enumerate(self._description):
                if _ascii_casefold(d[0]) == folded:
                    return self._values[i]
            raise IndexError("No item with that key")
        if isinstance(key, (int, slice)):
            return self._values[key]
        raise IndexError("Index must be int or string")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Row):
            return NotImplemented
        return self._description == other._description and self._values == other._values

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash(self._description) ^ hash(self._values)

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.Row object at {id(self):#x}>"


# As in sqlite3: a Row is a sequence (index, len, iteration, reversed()).
Sequence.register(Row)
