"""dqlitepy: highly-available SQLite, a Python re-creation of dqlite.

The package root is a drop-in for the standard library's ``sqlite3``::

    import dqlitepy as sqlite3
    conn = sqlite3.connect("dqlite://127.0.0.1:9001,127.0.0.1:9002/app.db")

plus :class:`Node` (a node running inside this process) and :class:`Client`
for cluster administration.  With no servers configured, ``connect("app.db")``
uses an embedded node, so ``import dqlitepy as sqlite3`` just works.  Importing the
package loads the driver alone; the server is loaded when a node starts
(see :mod:`dqlitepy.node`).
"""

from __future__ import annotations

from .client.admin import Client, NodeMetadata
from .client.constants import *  # noqa: F403 - the sqlite3 module's SQLITE_* names
from .client.constants import __all__ as _constants_all
from .client.dbapi import (
    LEGACY_TRANSACTION_CONTROL,
    Cursor,
    complete_statement,
    enable_callback_tracebacks,
    enable_shared_cache,
)
from .client.errors import (
    ConnectionLostError,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    LeadershipLostError,
    NoLeaderError,
    NotLeaderError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
)
from .client.types import (
    PARSE_COLNAMES,
    PARSE_DECLTYPES,
    Binary,
    Date,
    DateFromTicks,
    PrepareProtocol,
    Row,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
    adapt,
    adapters,
    converters,
    register_adapter,
    register_converter,
)
from .node import Connection, Node, connect
from .wire import NodeInfo, NodeRole

__version__ = "0.1.0.dev0"

#: PEP 249 globals.
apilevel = "2.0"
#: Threads may share the module but not connections (``check_same_thread``).
threadsafety = 1
#: qmark is native; named (``:x``) and numbered (``?1``) are accepted too.
paramstyle = "qmark"

#: The SQLite version the oldest supported server (Debian's dqlite 1.11.1) runs.
sqlite_version = "3.40.1"
sqlite_version_info = tuple(int(p) for p in sqlite_version.split("."))
#: The version of this DB-API module, as ``sqlite3.version`` (deprecated there).
version = "2.6.0"
version_info = (2, 6, 0)

__all__ = [
    "LEGACY_TRANSACTION_CONTROL",
    "PARSE_COLNAMES",
    "PARSE_DECLTYPES",
    "Binary",
    "Client",
    "Connection",
    "ConnectionLostError",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "LeadershipLostError",
    "NoLeaderError",
    "Node",
    "NodeInfo",
    "NodeMetadata",
    "NodeRole",
    "NotLeaderError",
    "NotSupportedError",
    "OperationalError",
    "PrepareProtocol",
    "ProgrammingError",
    "Row",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "Warning",
    "adapt",
    "adapters",
    "apilevel",
    "complete_statement",
    "connect",
    "converters",
    "enable_callback_tracebacks",
    "enable_shared_cache",
    "paramstyle",
    "register_adapter",
    "register_converter",
    "sqlite_version",
    "sqlite_version_info",
    "threadsafety",
    "version",
    "version_info",
    *_constants_all,
]


def __getattr__(name: str) -> object:
    # sqlite3 (3.10, 3.11) still offers OptimizedUnicode, deprecated, as an alias of str.
    if name == "OptimizedUnicode":
        import warnings

        warnings.warn(
            "OptimizedUnicode is deprecated and will be removed in Python 3.12; "
            "it has been an alias of str since Python 3.3.",
            DeprecationWarning,
            stacklevel=2,
        )
        return str
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# `sqlite3.dbapi2` is importable as an attribute after `import sqlite3`; so is ours.
from . import dbapi2  # noqa: E402, F401
