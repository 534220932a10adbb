"""The options of ``dqlitepy server``: one table, read by :mod:`.config`.

Each row is a flag (``--name``), an environment variable (``DQLITEPY_NAME``) and a key of
the config file (``name``) at once; ``docs/configuration.md`` lists them all.  To add an
option, add a row here and use ``args.<name>`` in :func:`dqlitepy.cli.server.run`, which
sees the effective value (flag > environment > file > default).
"""

from __future__ import annotations

from dqlitepy.server import DEFAULT_SNAPSHOT_ENTRIES
from dqlitepy.server.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_MEMORY,
    DEFAULT_REQUEST_TIMEOUT,
)
from dqlitepy.server.metrics import parse_metrics_address
from dqlitepy.wire import DEFAULT_MAX_MESSAGE_SIZE

from .config import Option
from .kinds import (
    ADDRESSES,
    AUTO_SWITCH,
    PATH,
    SECRET,
    SIZE,
    SWITCH,
    TEXT,
    Kind,
    integer,
    seconds,
)

__all__ = ["GROUPS", "SERVER_OPTIONS"]


def _metrics_address(text: str) -> str:
    parse_metrics_address(text)  # a ValueError names what is wrong
    return text


def _load_metrics_address(value: object, base: object) -> str:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return _metrics_address(value)


#: ``HOST:PORT`` of the metrics endpoint, checked when read.
_METRICS_ADDRESS = Kind(
    "HOST:PORT (a TCP address, port 1-65535)", _metrics_address, _load_metrics_address
)

_LIMITS = "client connection limits"
_RAFT = "replication"

#: The description of each section of ``dqlitepy server --help``.
GROUPS = {
    _LIMITS: "what clients may hold (see docs/server.md, Limits)",
    _RAFT: "Raft tuning (see docs/replication.md)",
}

#: Every option of ``dqlitepy server``, in the order ``--help`` and ``--print-config`` show.
SERVER_OPTIONS: tuple[Option, ...] = (
    Option(
        "address",
        TEXT,
        "127.0.0.1:9001",
        "address to serve on: host:port (port 0: any free one) or @abstract",
        short="-a",
        metavar="ADDRESS",
    ),
    Option(
        "advertise",
        TEXT,
        None,
        "the address other nodes and clients dial, when it is not --address (a node binding "
        "0.0.0.0, or behind NAT): the node's name in the cluster and in LEADER answers; "
        "needed for a replicated node on 0.0.0.0 or [::]",
        metavar="HOST:PORT",
    ),
    Option("data-dir", PATH, "./dqlitepy-data", "data directory", short="-d", metavar="DIR"),
    Option(
        "join",
        ADDRESSES,
        [],
        "comma-separated addresses of cluster members to join (may be repeated)",
        short="-j",
        metavar="ADDR[,ADDR...]",
    ),
    Option(
        "cluster-key-file",
        PATH,
        None,
        "file holding the key all members share; with it (or DQLITEPY_CLUSTER_KEY) the node "
        "replicates through Raft",
        short="-k",
        metavar="FILE",
    ),
    Option(
        "cluster-key",
        SECRET,
        None,
        "the cluster key itself; an environment variable only, never printed",
        in_file=False,
        on_command_line=False,
        secret=True,
    ),
    Option(
        "voters",
        integer(1),
        3,
        "on joining, become a voter while the cluster has fewer; as leader, promote standbys "
        "to replace voters offline for 10 s",
        metavar="N",
    ),
    Option(
        "standbys",
        integer(0),
        3,
        "on joining, else become a standby while it has fewer; later nodes join as spares",
        metavar="N",
    ),
    Option(
        "trust-loopback-admin",
        AUTO_SWITCH,
        None,
        "serve add/assign/remove/transfer to clients on this host without a proof of the "
        "cluster key; auto: only when the address is loopback or @abstract",
    ),
    Option(
        "tls-cert",
        PATH,
        None,
        "serve clients and Raft over TLS with this certificate (PEM); with --tls-key",
        metavar="FILE",
    ),
    Option("tls-key", PATH, None, "the certificate's private key (PEM)", metavar="FILE"),
    Option(
        "tls-ca",
        PATH,
        None,
        "mutual TLS: every client and peer must present a certificate this CA signed "
        "(unset: clients need none; peers must present one the --tls-cert file vouches for)",
        metavar="FILE",
    ),
    Option(
        "tls-admin-ca",
        PATH,
        None,
        "clients presenting a certificate this CA signed may add, assign, remove and transfer "
        "without the cluster key (default: the --tls-ca; unset too: no certificate may); "
        "without --tls-ca, clients may present one and need not",
        metavar="FILE",
    ),
    Option(
        "max-connections",
        integer(1),
        DEFAULT_MAX_CONNECTIONS,
        "client connections served at once; past it a new connection takes the slot of the "
        "one idle (or slowest to send its request) the longest",
        metavar="N",
        group=_LIMITS,
    ),
    Option(
        "idle-timeout",
        seconds(zero="never"),
        0.0,
        "close client connections idle this long between requests; 0: never, as pooled "
        "go-dqlite connections stay idle indefinitely",
        metavar="SECONDS",
        group=_LIMITS,
    ),
    Option(
        "request-timeout",
        seconds(),
        DEFAULT_REQUEST_TIMEOUT,
        "time a request may take to arrive after its first byte, and a response may wait "
        "for its client per MiB",
        metavar="SECONDS",
        group=_LIMITS,
    ),
    Option(
        "max-message-size",
        SIZE,
        DEFAULT_MAX_MESSAGE_SIZE,
        "largest request one connection may send; K, M, G suffixes",
        metavar="BYTES",
        group=_LIMITS,
    ),
    Option(
        "request-memory",
        SIZE,
        DEFAULT_REQUEST_MEMORY,
        "request bytes the node buffers at once over all connections; larger requests wait "
        "for it up to --request-timeout",
        metavar="BYTES",
        group=_LIMITS,
    ),
    Option(
        "read-lease",
        SWITCH,
        True,
        "serve reads under the leader's lease; --no-read-lease confirms every read with a "
        "ReadIndex round instead, trusting no clock",
        group=_RAFT,
    ),
    Option(
        "snapshot-entries",
        integer(1),
        DEFAULT_SNAPSHOT_ENTRIES,
        "log entries after which the node writes a snapshot and compacts its Raft log",
        metavar="N",
        group=_RAFT,
    ),
    Option(
        "metrics-address",
        _METRICS_ADDRESS,
        None,
        "serve Prometheus metrics (/metrics), /healthz and /readyz over HTTP here (needs "
        "pip install dqlitepy[metrics]; see docs/metrics.md)",
        metavar="HOST:PORT",
    ),
    Option("verbose", SWITCH, False, "debug logging", short="-v"),
)
