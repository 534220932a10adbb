"""The kinds of values an option takes: how each is parsed, loaded from TOML and printed.

A :class:`Kind` reads a value from a flag or an environment variable (text) and from a
config file (a TOML value), and writes it back as text (``--help``) and as TOML
(``--print-config``).  Values read from TOML keep their TOML type: ``max-connections =
"10"`` is refused rather than guessed at, and ``true`` is not an integer (Python's ``bool``
is an ``int``: checked explicitly).  Sizes are the exception, as ``"64M"`` reads better
than ``67108864``: a TOML integer or a string with a suffix.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ADDRESSES",
    "AUTO_SWITCH",
    "PATH",
    "SECRET",
    "SIZE",
    "SWITCH",
    "TEXT",
    "Kind",
    "integer",
    "parse_size",
    "seconds",
]


@dataclass(frozen=True, slots=True)
class Kind:
    """How the values of an option are read and written.

    Attributes:
        expected: what a value must be, for error messages ("a positive integer").
        parse: the text of a flag or an environment variable -> the value; raises
            ``ValueError`` if it is not one.
        load: a value read from TOML, and the config file's directory (for relative
            paths) -> the value; raises ``ValueError`` if it is not one.
        text: a value -> its text as a flag takes it (for ``--help``).
        toml: a value -> its TOML literal (for ``--print-config``).
        switch: a flag without an argument: ``--name`` sets it, ``--no-name`` clears it.
        many: a flag that may be repeated, its values adding up.
    """

    expected: str
    parse: Callable[[str], Any]
    load: Callable[[object, Path], Any]
    text: Callable[[Any], str] = str
    toml: Callable[[Any], str] = json.dumps
    switch: bool = False
    many: bool = False


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("empty")
    return text


def _load_text(value: object, base: Path) -> str:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return _text(value)


def _load_path(value: object, base: Path) -> str:
    # Relative to the file, which means the same whoever starts the command and where.
    return str(base / _load_text(value, base))


def _addresses(text: str) -> list[str]:
    found = [part.strip() for part in text.split(",") if part.strip()]
    if not found:
        raise ValueError("no address")
    return found


def _load_addresses(value: object, base: Path) -> list[str]:
    if isinstance(value, str):
        return _addresses(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [address for item in value for address in _addresses(item)]
    raise ValueError("not a list of strings")


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """A byte count: ``268435456``, ``256M``, ``256MiB`` or ``1G`` (powers of 1,024).

    Raises:
        ValueError: not a positive byte count.
    """
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = number[-1:] if number[-1:] in _SIZE_UNITS else ""
    value = int(number.removesuffix(unit)) * _SIZE_UNITS[unit]
    if value <= 0:
        raise ValueError(f"invalid size {text!r}: must be positive")
    return value


def _load_size(value: object, base: Path) -> int:
    if isinstance(value, str):
        return parse_size(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError("not a byte count")


def _size_text(value: int) -> str:
    for unit in ("G", "M", "K"):
        if value % _SIZE_UNITS[unit] == 0:
            return f"{value // _SIZE_UNITS[unit]}{unit}"
    return str(value)


def _size_toml(value: int) -> str:
    text = _size_text(value)
    return text if text.isdigit() else json.dumps(text)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _switch(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise ValueError(f"not a boolean: {text!r}")


def _load_switch(value: object, base: Path) -> bool:
    if not isinstance(value, bool):
        raise ValueError("not a boolean")
    return value


def _switch_text(value: bool | None) -> str:
    return "auto" if value is None else "true" if value else "false"


def _auto_switch(text: str) -> bool | None:
    return None if text.strip().lower() == "auto" else _switch(text)


def _load_auto_switch(value: object, base: Path) -> bool | None:
    return None if value == "auto" else _load_switch(value, base)


def _auto_switch_toml(value: bool | None) -> str:
    return '"auto"' if value is None else _switch_text(value)


#: A string, such as an address (checked by whoever uses it).
TEXT = Kind("a string", _text, _load_text)
#: A file or directory; relative in a config file: to the file's directory.  Printed
#: absolute (from the working directory), so that ``--print-config``'s output means the
#: same wherever it is saved.
PATH = Kind(
    "a path (a string)", _text, _load_path, toml=lambda value: json.dumps(os.path.abspath(value))
)
#: Addresses: comma-separated in a flag or variable, a list (or that string) in a file; a
#: repeated flag adds to them.
ADDRESSES = Kind(
    "a list of addresses (in TOML, a list of strings)",
    _addresses,
    _load_addresses,
    text=",".join,
    many=True,
)
#: A byte count, with K, M, G suffixes (powers of 1,024); in TOML an integer or a string.
SIZE = Kind(
    'a byte count (65536, or with a suffix: "64K", "64M", "1G")',
    parse_size,
    _load_size,
    text=_size_text,
    toml=_size_toml,
)
#: On or off: ``--name``/``--no-name``, ``1/0``, ``true/false``, ``yes/no``, ``on/off``.
SWITCH = Kind(
    "a boolean (true or false; in a variable also 1/0, yes/no, on/off)",
    _switch,
    _load_switch,
    text=_switch_text,
    toml=_switch_text,
    switch=True,
)
#: On, off, or ``auto`` (None): the command decides.
AUTO_SWITCH = Kind(
    'true, false or "auto"',
    _auto_switch,
    _load_auto_switch,
    text=_switch_text,
    toml=_auto_switch_toml,
    switch=True,
)
#: A secret: never on the command line (``ps`` shows it) or in a file, never printed.
SECRET = Kind("a non-empty string", _text, _load_text)


def integer(minimum: int) -> Kind:
    """An integer of at least ``minimum``."""
    expected = {0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer of at least {minimum}"
    )

    def check(value: int) -> int:
        if value < minimum:
            raise ValueError(f"below {minimum}")
        return value

    def load(value: object, base: Path) -> int:
        # TOML's true is a Python int: refuse it rather than read it as 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("not an integer")
        return check(value)

    return Kind(expected, lambda text: check(int(text)), load)


def seconds(*, zero: str | None = None) -> Kind:
    """A duration in seconds, above 0; or 0 too, meaning ``zero`` ("never")."""
    expected = "a number of seconds " + (f"(0: {zero})" if zero else "above 0")

    def check(value: float) -> float:
        if math.isnan(value) or value < 0 or (value == 0 and zero is None):
            raise ValueError("out of range")
        return value

    def load(value: object, base: Path) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError("not a number")
        return check(float(value))

    return Kind(
        expected,
        lambda text: check(float(text)),
        load,
        text=lambda value: f"{value:g}",
        toml=lambda value: repr(float(value)),
    )
