"""The wire layer is sans-I/O: no sockets, threads, clocks or processes.

Every module of ``dqlitepy/wire`` is parsed with :mod:`ast` (nothing is
executed) and every import is checked: no I/O, concurrency or clock module, and
nothing from ``dqlitepy`` outside ``dqlitepy.wire``.  Calls to the I/O builtins
(``open``, ``print``, ``input``, ``__import__`` ...) are refused too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dqlitepy.wire

WIRE_DIR = Path(dqlitepy.wire.__file__).resolve().parent
PACKAGE = "dqlitepy.wire"

#: Top-level modules the wire layer must not import.
FORBIDDEN_MODULES = frozenset(
    {
        "socket",
        "socketserver",
        "select",
        "selectors",
        "asyncio",
        "threading",
        "_thread",
        "concurrent",
        "multiprocessing",
        "subprocess",
        "signal",
        "time",
        "datetime",
        "calendar",
        "os",
        "ssl",
        "http",
        "urllib",
        "importlib",
        "sched",
        "queue",
    }
)

#: Builtins that do I/O or import by name.
FORBIDDEN_CALLS = frozenset({"open", "print", "input", "__import__", "breakpoint", "exec", "eval"})


#: The sanctioned exceptions, one ``exec`` call each, which does no I/O and imports
#: nothing: ``record.py`` compiles each record class's ``__init__`` (as ``dataclasses``
#: does) from field names it checks are plain identifiers; ``rows.py`` compiles the ROWS
#: encoder of each row shape from names and numbers it generates (never data).
SANCTIONED = {"record": ["calls exec()"], "rows": ["calls exec()"]}


def _modules() -> list[Path]:
    return sorted(WIRE_DIR.glob("*.py"))


def _module_name(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    """Absolute name of a ``from ... import`` target."""
    if node.level == 0:
        return node.module or ""
    parts = current.split(".")
    base = parts if is_package else parts[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every import or call in ``source`` that breaks the sans-I/O rule."""
    found: list[str] = []

    def check(name: str, line: int) -> None:
        top = name.split(".")[0]
        if top in FORBIDDEN_MODULES:
            found.append(f"line {line}: imports {name}")
        elif top == "dqlitepy" and name != PACKAGE and not name.startswith(PACKAGE + "."):
            found.append(f"line {line}: imports {name} from outside {PACKAGE}")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            if target in ("", "dqlitepy"):
                # ``from .. import client`` names submodules of the parent package.
                for alias in node.names:
                    check(f"{target}.{alias.name}".lstrip("."), node.lineno)
            else:
                check(target, node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in FORBIDDEN_CALLS
        ):
            found.append(f"line {node.lineno}: calls {node.func.id}()")
    return found


def test_wire_package_has_modules() -> None:
    names = {p.stem for p in _modules()}
    assert {"__init__", "codec", "connection", "constants", "errors", "framing", "messages"} <= (
        names
    )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_module_is_sans_io(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    found = violations(source, _module_name(path), path.stem == "__init__")
    assert [v.split(": ", 1)[1] for v in found] == SANCTIONED.get(path.stem, [])


@pytest.mark.parametrize(
    ("source", "module", "is_package"),
    [
        ("import socket", "dqlitepy.wire.codec", False),
        ("import os.path", "dqlitepy.wire.codec", False),
        ("from time import monotonic", "dqlitepy.wire.codec", False),
        ("from datetime import datetime", "dqlitepy.wire.codec", False),
        ("import asyncio as aio", "dqlitepy.wire.codec", False),
        ("def f():\n    import threading\n", "dqlitepy.wire.codec", False),
        ("from concurrent.futures import Future", "dqlitepy.wire.codec", False),
        ("from dqlitepy.client import x", "dqlitepy.wire.codec", False),
        ("import dqlitepy.server", "dqlitepy.wire.codec", False),
        ("from .. import client", "dqlitepy.wire.codec", False),
        ("from ..client import connect", "dqlitepy.wire.codec", False),
        ("import dqlitepy", "dqlitepy.wire.codec", False),
        ("from .. import server", "dqlitepy.wire", True),
        ("open('f')", "dqlitepy.wire.codec", False),
        ("print('x')", "dqlitepy.wire.codec", False),
        ("__import__('socket')", "dqlitepy.wire.codec", False),
    ],
)
def test_checker_catches(source: str, module: str, is_package: bool) -> None:
    """The checker itself flags what it must (so the real test can fail)."""
    assert violations(source, module, is_package)


@pytest.mark.parametrize(
    ("source", "is_package"),
    [
        ("import struct", False),
        ("from enum import IntEnum", False),
        ("from .codec import Reader", False),
        ("from . import codec", False),
        ("from . import codec", True),  # in __init__, "." is dqlitepy.wire itself
        ("from dqlitepy import wire", False),
        ("from dqlitepy.wire.errors import ProtocolError", False),
        ("import dqlitepy.wire.framing", False),
        ("x = 'import socket'", False),
    ],
)
def test_checker_allows(source: str, is_package: bool) -> None:
    module = "dqlitepy.wire" if is_package else "dqlitepy.wire.codec"
    assert violations(source, module, is_package) == []
