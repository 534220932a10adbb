"""The ``sqlite3`` module's type helpers: adapters, converters, ``Row`` and DB-API constructors.

Adapters turn Python objects into values the wire can carry before they are
bound; converters turn the bytes of a result value into Python objects when
``detect_types`` asks for it.  Both registries are module-global, as in
``sqlite3``.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import ProgrammingError

if TYPE_CHECKING:
    from .dbapi import Cursor

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


def register_adapter(type_: type, adapter: Callable[[Any], Any], /) -> None:
    """Register a callable that turns instances of ``type_`` into bindable values."""
    adapters[(type_, PrepareProtocol)] = adapter


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
    adapt_method = getattr(proto, "__adapt__", None)
    if adapt_method is not None:
        result = adapt_method(obj)
        if result is not None:
            return result
    conform = getattr(obj, "__conform__", None)
    if conform is not None:
        result = conform(proto)
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


class Row:
    """A result row addressable by index and, case-insensitively, by column name."""

    __slots__ = ("_description", "_values")

    def __init__(self, cursor: Cursor, data: tuple[Any, ...], /) -> None:
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
            folded = key.casefold()
            for i, d in enumerate(self._description):
                if d[0].casefold() == folded:
                    return self._values[i]
            raise IndexError("No item with that key")
        return self._values[key]

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

