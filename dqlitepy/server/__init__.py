"""The dqlitepy server: listener, per-connection gateways and node state.

Uses :mod:`dqlitepy.wire` for the protocol and :mod:`dqlitepy.engine` for SQL.
"""

from __future__ import annotations

from .cluster import DEFAULT_SNAPSHOT_ENTRIES
from .gateway import Gateway, GatewayFailure, NodeContext, RowsChunk
from .node import BOOTSTRAP_ID, NodeServer, parse_listen_address
from .tls import NodeTLS

__all__ = [
    "BOOTSTRAP_ID",
    "DEFAULT_SNAPSHOT_ENTRIES",
    "Gateway",
    "GatewayFailure",
    "NodeContext",
    "NodeServer",
    "NodeTLS",
    "RowsChunk",
    "parse_listen_address",
]
