"""dqlitepy for asyncio: ``await dqlitepy.aio.connect("dqlite://h1:9001,h2:9001/app.db")``.

A native asyncio driver with aiosqlite's surface (``docs/asyncio.md``)::

    import dqlitepy.aio

    async with dqlitepy.aio.connect("dqlite://10.0.0.1:9001/app.db") as conn:
        async with conn.execute("SELECT x FROM t WHERE k = ?", (1,)) as cur:
            async for row in cur:
                ...
        await conn.commit()

It runs the blocking driver's own logic (leader discovery, failover, the
transaction rules, the error classes: :mod:`dqlitepy.client`, written once as
generators) on the event loop with an asyncio waiter: no thread per connection
and no blocking call in the loop.  A task cancelled (or timed out) during a
request leaves its connection clean or closed, never half-read; a query it
cancels is interrupted on the server.  :func:`create_pool` makes a pool of
connections shared by many tasks; :class:`Client` is the admin client.

Importing ``dqlitepy`` does not import this package (nor asyncio).
"""

from __future__ import annotations

from ..client.admin import NodeMetadata
from ..client.errors import (
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
from ..client.transaction import LEGACY_TRANSACTION_CONTROL
from ..client.types import PARSE_COLNAMES, PARSE_DECLTYPES, Row
from .admin import Client
from .connection import Connection, connect
from .cursor import Cursor
from .pool import Pool, create_pool

__all__ = [
    "LEGACY_TRANSACTION_CONTROL",
    "PARSE_COLNAMES",
    "PARSE_DECLTYPES",
    "Client",
    "Connection",
    "ConnectionLostError",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "LeadershipLostError",
    "NoLeaderError",
    "NodeMetadata",
    "NotLeaderError",
    "NotSupportedError",
    "OperationalError",
    "Pool",
    "ProgrammingError",
    "Row",
    "Warning",
    "connect",
    "create_pool",
]
