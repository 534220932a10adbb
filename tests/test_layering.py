"""Dependencies go with the grain of the layers: one table, checked on every module.

Every module of ``dqlitepy`` is parsed with :mod:`ast` (nothing is executed) and
each of its imports is checked against :data:`LAYERS`.  A *unit* is a package of
``dqlitepy`` (``dqlitepy.client`` and every module under it, however it is split)
or one of the top-level modules named in :data:`TOP_LEVEL`; a unit may always
import itself.  ``LAYERS[unit]`` lists everything else it may import, each with
how:

* ``EAGER``: anything of the target, anywhere in the module;
* ``LAZY``: only inside a function or under ``if TYPE_CHECKING:``, so that
  importing the unit does not load the target (``dqlitepy.node`` starts a server
  only when a node is constructed);
* ``PUBLIC``: the front-ends' rule (the command line and the SQLAlchemy dialect use
  what a user of dqlitepy could): only modules whose dotted path has no ``_private``
  part, and from them only names their ``__all__`` lists (or their public
  submodules).  A module without ``__all__`` offers no names.

Third-party packages that appear in the table (``apsw``, ``pysyncobj``,
``sqlalchemy``, ``alembic``, ``prometheus_client``) may be imported only by the units
that list them: APSW stays in the engine, PySyncObj in replication, prometheus_client
in the server (lazily: a node serving no metrics runs without it).  Other third-party and
standard-library modules are free here (``tests/wire/test_wire_purity.py`` keeps the
wire layer free of I/O).  Imports by name (``importlib.import_module("x")``,
``__import__("x")`` with a literal) count as imports.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dqlitepy

EAGER = "eager"
LAZY = "lazy"
PUBLIC = "public"

#: unit -> what else it may import, and how.  The table of the layers.
LAYERS: dict[str, dict[str, str]] = {
    # Sans-I/O protocol: nothing else of dqlitepy.
    "dqlitepy.wire": {},
    # The driver: the wire layer only, never the server side.
    "dqlitepy.client": {"dqlitepy.wire": EAGER},
    # SQLite: the only importer of APSW.
    "dqlitepy.engine": {"dqlitepy.wire": EAGER, "apsw": EAGER},
    # Raft: the only importer of PySyncObj.
    "dqlitepy.replication": {"dqlitepy.wire": EAGER, "pysyncobj": EAGER},
    # The node: everything below it; the client for its admin Client; prometheus_client
    # (optional, dqlitepy[metrics]) only once a node serves metrics.
    "dqlitepy.server": {
        "dqlitepy.wire": EAGER,
        "dqlitepy.engine": EAGER,
        "dqlitepy.replication": EAGER,
        "dqlitepy.client": EAGER,
        "prometheus_client": LAZY,
    },
    # The embedding glue: a node is a server, loaded only when one is constructed.
    "dqlitepy.node": {"dqlitepy.client": EAGER, "dqlitepy.wire": EAGER, "dqlitepy.server": LAZY},
    # The asyncio driver: the client's core on an asyncio waiter; the embedded default
    # (dqlitepy.node) is loaded only when a connection needs it.
    "dqlitepy.aio": {"dqlitepy.client": EAGER, "dqlitepy.wire": EAGER, "dqlitepy.node": LAZY},
    # The package root (and dbapi2): what a sqlite3 user imports.
    "dqlitepy": {"dqlitepy.client": EAGER, "dqlitepy.wire": EAGER, "dqlitepy.node": EAGER},
    # Front-ends: public names only.
    "dqlitepy.cli": {
        "dqlitepy": PUBLIC,
        "dqlitepy.node": PUBLIC,
        "dqlitepy.client": PUBLIC,
        "dqlitepy.server": PUBLIC,
        "dqlitepy.wire": PUBLIC,
    },
    "dqlitepy.sqlalchemy": {
        "dqlitepy": PUBLIC,
        "dqlitepy.aio": PUBLIC,
        "dqlitepy.client": PUBLIC,
        "sqlalchemy": EAGER,
        "alembic": EAGER,
    },
    # The pytest plugin: what a user's tests could write, through the package root alone
    # (pytest loads it in every session: it must not load the server either).
    "dqlitepy.testing": {"dqlitepy": PUBLIC},
}

#: The top-level modules of dqlitepy that are no package, and the unit each belongs to.
TOP_LEVEL = {
    "__init__": "dqlitepy",
    "dbapi2": "dqlitepy",
    "node": "dqlitepy.node",
    # ``python -m dqlitepy`` is the command line.
    "__main__": "dqlitepy.cli",
}

PACKAGE_DIR = Path(dqlitepy.__file__).resolve().parent

#: Third-party packages only the units that list them may import.
GUARDED = frozenset(
    target for allowed in LAYERS.values() for target in allowed if not target.startswith("dqlitepy")
)


@dataclass(frozen=True)
class Import:
    """One imported module, or one name imported from a module."""

    module: str  #: absolute dotted name
    name: str | None  #: the name imported from ``module`` (``from m import name``), if any
    line: int
    lazy: bool  #: inside a function or under ``if TYPE_CHECKING:``


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def _file_of(module: str) -> Path | None:
    """The source file of a dqlitepy module, or None if there is none."""
    base = PACKAGE_DIR.parent.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _is_package(module: str) -> bool:
    path = _file_of(module)
    return path is not None and path.name == "__init__.py"


def unit_of(module: str) -> str:
    """The unit of a dqlitepy module (``dqlitepy.client.dbapi`` -> ``dqlitepy.client``)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "dqlitepy"
    if (PACKAGE_DIR / parts[1]).is_dir():
        return f"dqlitepy.{parts[1]}"
    return TOP_LEVEL.get(parts[1], f"dqlitepy.{parts[1]}")


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    """Absolute name of a ``from ... import`` target."""
    if node.level == 0:
        return node.module or ""
    parts = current.split(".")
    base = parts if is_package else parts[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _dynamic_import(node: ast.Call) -> str | None:
    """The module a call such as ``importlib.import_module("x")`` imports, if literal."""
    func = node.func
    named = (isinstance(func, ast.Name) and func.id in ("__import__", "import_module")) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module"
    )
    if named and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return value if isinstance(value, str) else None
    return None


def imports_of(source: str, module: str, is_package: bool = False) -> Iterator[Import]:
    """Every import in ``source`` (the text of ``module``), eager or lazy."""

    def visit(node: ast.AST, lazy: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, None, node.lineno, lazy)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if target.split(".")[0] == "dqlitepy" and _file_of(submodule) is not None:
                    yield Import(submodule, None, node.lineno, lazy)  # a submodule, by name
                else:
                    yield Import(target, alias.name, node.lineno, lazy)
        elif isinstance(node, ast.Call) and (name := _dynamic_import(node)) is not None:
            yield Import(name, None, node.lineno, lazy)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.body:
                yield from visit(statement, True)
            for statement in node.orelse:
                yield from visit(statement, lazy)
            return
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            yield from visit(child, inner)

    yield from visit(ast.parse(source), False)


def _is_all(target: ast.expr) -> bool:
    return isinstance(target, ast.Name) and target.id == "__all__"


def _declared_all(module: str) -> frozenset[str]:
    """The string entries of ``module``'s ``__all__`` (empty if it has none)."""
    path = _file_of(module)
    if path is None:
        return frozenset()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if any(_is_all(t) for t in targets) and isinstance(node.value, (ast.List, ast.Tuple)):
            return frozenset(
                e.value
                for e in node.value.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            )
    return frozenset()


def is_public(imported: Import) -> bool:
    """True if a front-end may import this: a public module, a name in its ``__all__``."""
    if any(part.startswith("_") for part in imported.module.split(".")):
        return False
    return imported.name is None or imported.name in _declared_all(imported.module)


def _check(unit: str, imported: Import) -> str | None:
    """Why ``unit`` may not make this import, or None if it may."""
    top = imported.module.split(".")[0]
    if top == "dqlitepy":
        target = unit_of(imported.module)
        if target == unit:
            return None
    elif top in GUARDED:
        target = top
    else:
        return None
    what = imported.module + (f".{imported.name}" if imported.name else "")
    how = LAYERS[unit].get(target)
    if how is None:
        allowed = ", ".join(sorted(LAYERS[unit])) or "nothing else"
        return f"imports {what} ({target}); {unit} may import {allowed}"
    if how == LAZY and not imported.lazy:
        return (
            f"imports {what} at import time; {unit} may import {target} only inside "
            "functions or under TYPE_CHECKING"
        )
    if how == PUBLIC and not is_public(imported):
        return f"imports {what}, which is not public (a _private module or not in its __all__)"
    return None


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every import in ``source`` (the text of ``module``) against the grain of the layers."""
    unit = unit_of(module)
    if unit not in LAYERS:
        return [f"{module} belongs to {unit}, which is not in LAYERS"]
    found = []
    for imported in imports_of(source, module, is_package):
        reason = _check(unit, imported)
        if reason is not None:
            found.append(f"line {imported.line}: {reason}")
    return found


# -- the code base -----------------------------------------------------------------------------


def test_every_unit_is_in_the_table() -> None:
    units = {unit_of(_module_name(p)) for p in _modules()}
    assert units == set(LAYERS), "add new packages to LAYERS (and TOP_LEVEL for modules)"
    assert set(TOP_LEVEL.values()) <= set(LAYERS)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE_DIR.parent)))
def test_module_goes_with_the_layers(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert violations(source, _module_name(path), path.name == "__init__.py") == []


@functools.cache
def _eager_graph() -> dict[str, frozenset[str]]:
    """unit -> the units and guarded packages it loads when it is imported."""
    graph: dict[str, set[str]] = {unit: set() for unit in LAYERS}
    for path in _modules():
        module = _module_name(path)
        source = path.read_text(encoding="utf-8")
        for imported in imports_of(source, module, path.name == "__init__.py"):
            top = imported.module.split(".")[0]
            if imported.lazy or (top != "dqlitepy" and top not in GUARDED):
                continue
            graph[unit_of(module)].add(unit_of(imported.module) if top == "dqlitepy" else top)
    return {unit: frozenset(targets) for unit, targets in graph.items()}


@pytest.mark.parametrize(
    "unit", ["dqlitepy", "dqlitepy.client", "dqlitepy.sqlalchemy", "dqlitepy.testing"]
)
def test_client_units_do_not_load_the_server(unit: str) -> None:
    """Following only import-time edges, a client never reaches the server's units."""
    graph = _eager_graph()
    reached, todo = set(), [unit]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in reached:
                reached.add(target)
                todo.append(target)
    server_side = {"dqlitepy.server", "dqlitepy.engine", "dqlitepy.replication"}
    assert reached & (server_side | {"apsw", "pysyncobj"}) == set()


# -- the checker itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("dqlitepy.wire.codec", "from ..client import dbapi"),
        ("dqlitepy.wire.codec", "import dqlitepy"),
        ("dqlitepy.wire", "from .. import server"),
        ("dqlitepy.client.dbapi", "from ..server import NodeServer"),
        ("dqlitepy.client.dbapi", "from dqlitepy.engine import Engine"),
        ("dqlitepy.client.dbapi", "from .. import replication"),
        ("dqlitepy.client.dbapi", "import apsw"),
        ("dqlitepy.client.dbapi", "def f():\n    import pysyncobj.syncobj\n"),
        ("dqlitepy.client.dbapi", "import sqlalchemy"),
        ("dqlitepy.client.dbapi", "__import__('dqlitepy.server')"),
        ("dqlitepy.engine.session", "from ..replication import raft"),
        ("dqlitepy.engine.session", "from ..server import gateway"),
        ("dqlitepy.engine.session", "from pysyncobj import SyncObj"),
        ("dqlitepy.replication.replicator", "from ..engine import Engine"),
        ("dqlitepy.replication.replicator", "from ..client import dbapi"),
        ("dqlitepy.replication.replicator", "import apsw.ext"),
        ("dqlitepy.server.node", "import apsw"),
        ("dqlitepy.server.node", "from pysyncobj.config import FAIL_REASON"),
        ("dqlitepy.server.node", "from ..node import Node"),
        ("dqlitepy.node", "from .server import NodeServer"),
        ("dqlitepy.node", "from .server.datadir import StartupRefused"),
        ("dqlitepy.node", "class A:\n    from .server import NodeServer\n"),
        ("dqlitepy.node", "from .engine import Engine"),
        ("dqlitepy", "from .server import NodeServer"),
        ("dqlitepy.dbapi2", "import dqlitepy.replication"),
        ("dqlitepy.sqlalchemy.dialect", "from dqlitepy.server import NodeServer"),
        ("dqlitepy.sqlalchemy.dialect", "from dqlitepy.client.sqltext import _scan"),
        ("dqlitepy.sqlalchemy.dialect", "from dqlitepy.client.dbapi import json"),
        ("dqlitepy.sqlalchemy.dialect", "import dqlitepy.client._hidden"),
        ("dqlitepy.cli.shell", "from dqlitepy.engine import Engine"),
        ("dqlitepy.cli.shell", "import importlib\nimportlib.import_module('apsw')"),
        ("dqlitepy.cli.server", "import dqlitepy.replication.raft"),
        ("dqlitepy.cli.server", "from dqlitepy.server.node import _NOT_LEADER"),
        ("dqlitepy.__main__", "from dqlitepy.engine import Engine"),
        ("dqlitepy.server.metrics", "from prometheus_client import CollectorRegistry"),
        ("dqlitepy.client.dbapi", "def f():\n    import prometheus_client\n"),
        ("dqlitepy.replication.stats", "import prometheus_client"),
        ("dqlitepy.testing.cluster", "from dqlitepy.server import NodeServer"),
        ("dqlitepy.testing.process", "from dqlitepy.client.admin import Client"),
        ("dqlitepy.testing.nodes", "from dqlitepy.node import Node"),
        ("dqlitepy.testing.plugin", "import apsw"),
        ("dqlitepy.newlayer", "import os"),
    ],
)
def test_checker_rejects(module: str, source: str) -> None:
    """Positive control: the checker the real test uses flags what it must."""
    assert violations(source, module, _is_package(module))


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("dqlitepy.wire.codec", "import struct\nfrom .constants import ValueType"),
        ("dqlitepy.client.dbapi", "from ..wire import NodeInfo\nfrom . import errors"),
        ("dqlitepy.engine.session", "import apsw.ext\nfrom ..wire import NodeInfo"),
        (
            "dqlitepy.replication.replicator",
            "from pysyncobj import SyncObj\nfrom ..wire import NodeRole",
        ),
        (
            "dqlitepy.server.node",
            "from ..engine import Engine\nfrom ..replication import raft\n"
            "from ..client.admin import Client\nimport cbor2",
        ),
        ("dqlitepy.node", "def f():\n    from .server import NodeServer\n"),
        ("dqlitepy.server.metrics", "def f():\n    from prometheus_client import REGISTRY\n"),
        ("dqlitepy.node", "if TYPE_CHECKING:\n    from .server import NodeServer\n"),
        ("dqlitepy.node", "import typing\nif typing.TYPE_CHECKING:\n    from . import server\n"),
        ("dqlitepy", "from .node import Node\nfrom .client.dbapi import Cursor"),
        ("dqlitepy.dbapi2", "from . import *"),
        (
            "dqlitepy.sqlalchemy.dialect",
            "import dqlitepy\nfrom dqlitepy.client.tls import context_from_url\n"
            "from sqlalchemy import exc",
        ),
        ("dqlitepy.sqlalchemy.provision", "from sqlalchemy.testing import provision"),
        ("dqlitepy.cli.script", "from dqlitepy.client.sqltext import split_statements"),
        ("dqlitepy.cli.server", "from dqlitepy.server.tls import NodeTLS"),
        ("dqlitepy.cli.server", "from dqlitepy import node"),
        ("dqlitepy.cli", "from . import server, shell"),
        ("dqlitepy.__main__", "from .cli import main"),
        ("dqlitepy.testing.cluster", "import dqlitepy\nfrom dqlitepy import Client\nimport pytest"),
        ("dqlitepy.testing", "from .cluster import Cluster\nfrom ._support import free_port"),
    ],
)
def test_checker_allows(module: str, source: str) -> None:
    assert violations(source, module, _is_package(module)) == []
