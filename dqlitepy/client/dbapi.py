"""The PEP 249 driver, shaped like the standard library's ``sqlite3``: its public names.

This module gathers what ``dqlitepy`` (and ``import dqlitepy as sqlite3``
code) takes from the driver; the driver itself is split by concern:

* :mod:`~dqlitepy.client.connection` — :class:`Connection` and :func:`connect`;
* :mod:`~dqlitepy.client.cursor` — :class:`Cursor`;
* :mod:`~dqlitepy.client.session` — the server session a connection and its
  cursors run statements through;
* :mod:`~dqlitepy.client.transaction` — the transaction state and its rules;
* :mod:`~dqlitepy.client.failover` — keeping the session on the leader, and
  what may be retried (``docs/architecture.md``, "What users see");
* :mod:`~dqlitepy.client.discovery` — finding the leader;
* :mod:`~dqlitepy.client.url` — ``dqlite://`` URLs and ``DQLITEPY_SERVERS``;
* :mod:`~dqlitepy.client.convert` — parameters and rows across the wire.

Every error says what became of a request cut off from its leader, in its
message and in ``outcome`` (see :mod:`dqlitepy.client.errors`).
"""

from __future__ import annotations

import warnings

from .connection import (
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_LEADER_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    Connection,
    Statement,
    connect,
)
from .cursor import Cursor
from .session import enable_callback_tracebacks
from .sqltext import is_complete
from .transaction import LEGACY_TRANSACTION_CONTROL
from .url import parse_url

__all__ = [
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_LEADER_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "LEGACY_TRANSACTION_CONTROL",
    "Connection",
    "Cursor",
    "Statement",
    "complete_statement",
    "connect",
    "enable_callback_tracebacks",
    "enable_shared_cache",
    "parse_url",
]


def enable_shared_cache(enable: int, /) -> None:
    """Deprecated in ``sqlite3`` (3.10) and without effect here.

    SQLite's shared cache is a setting of the process that opens the database
    files; with dqlite that is the server, whose sessions never use it.
    """
    warnings.warn(
        "enable_shared_cache is deprecated and will be removed in Python 3.12. "
        "Shared cache is strongly discouraged by the SQLite 3 documentation, and "
        "dqlite servers never use it.",
        DeprecationWarning,
        stacklevel=2,
    )


def complete_statement(statement: str) -> bool:
    """Return True if ``statement`` holds at least one complete SQL statement."""
    return is_complete(statement)
