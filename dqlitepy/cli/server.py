"""``dqlitepy server``: run a dqlitepy node until SIGINT or SIGTERM.

The node is a :class:`dqlitepy.Node`; its options are checked here (TLS files,
the cluster key, the client connection limits) so that an operator's mistake
exits 2 with a message before anything starts.  A node that refuses to start
because of one (its data directory in use, a missing or wrong cluster key: see
``docs/server.md``) exits 2 too; any other failure to start exits 1.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import dqlitepy
from dqlitepy.node import StartupRefused
from dqlitepy.server.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_MEMORY,
    DEFAULT_REQUEST_TIMEOUT,
    Limits,
)
from dqlitepy.server.metrics import parse_metrics_address
from dqlitepy.server.tls import NodeTLS
from dqlitepy.wire import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["add_parser", "run"]


def _cluster_key(path: str | None) -> bytes | None:
    """The cluster key from a file or ``DQLITEPY_CLUSTER_KEY``; None: no replication."""
    if path:
        with open(path, "rb") as f:
            return f.read().strip()
    value = os.environ.get("DQLITEPY_CLUSTER_KEY", "")
    return value.encode() if value else None


def run(args: argparse.Namespace) -> int:
    """Run ``dqlitepy server``; returns the exit status."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    join = [a for a in ",".join(args.join or []).split(",") if a]
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logging.getLogger("dqlitepy.cli").info("signal %d: shutting down", signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    tls: NodeTLS | None = None
    if args.tls_cert or args.tls_key or args.tls_ca:
        if not (args.tls_cert and args.tls_key):
            print("Error: TLS needs both --tls-cert and --tls-key", file=sys.stderr)
            return 2
        try:
            tls = NodeTLS.from_files(args.tls_cert, args.tls_key, args.tls_ca)
        except ValueError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 2
    key = _cluster_key(args.cluster_key_file)
    if join and key is None:
        print(
            "Error: joining a cluster needs its key: --cluster-key-file FILE or "
            "DQLITEPY_CLUSTER_KEY (the same on every node)",
            file=sys.stderr,
        )
        return 2
    try:
        limits = Limits(
            max_connections=args.max_connections,
            max_message_size=args.max_message_size,
            idle_timeout=args.idle_timeout or None,
            request_timeout=args.request_timeout,
            request_memory=args.request_memory,
        )
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    try:
        node = dqlitepy.Node(
            args.address,
            args.data_dir,
            join=join,
            cluster_key=key,
            voters=args.voters,
            standbys=args.standbys,
            trust_loopback_admin=args.trust_loopback_admin,
            tls=tls,
            advertise=args.advertise or os.environ.get("DQLITEPY_ADVERTISE") or None,
            max_connections=limits.max_connections,
            max_message_size=limits.max_message_size,
            idle_timeout=limits.idle_timeout,
            request_timeout=limits.request_timeout,
            request_memory=limits.request_memory,
            metrics_address=args.metrics_address,
        ).start()
    except StartupRefused as exc:
        # The operator's mistake (a busy directory, a missing or wrong key): nothing changed.
        print(f"Error: cannot start node on {args.address}: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"Error: cannot start node on {args.address}: {exc}", file=sys.stderr)
        return 1
    where = node.listen_address
    if node.address != where:
        where += f", advertised as {node.address}"
    if node.metrics_address is not None:
        where += f"; metrics on http://{node.metrics_address}/metrics"
    print(f"dqlitepy node {node.id:x} serving on {where}", file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        node.close()
    return 0


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(text: str) -> int:
    """A byte count: ``268435456``, ``256M``, ``256MiB`` or ``1G``."""
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = number[-1:] if number[-1:] in _SIZE_UNITS else ""
    try:
        value = int(number.removesuffix(unit)) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: expected e.g. 65536 or 64M"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: must be positive")
    return value


def _metrics_address(text: str) -> str:
    """An argparse type: ``HOST:PORT`` for the metrics endpoint."""
    try:
        parse_metrics_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive(kind: Callable[[str], float], *, zero: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` above 0 (or 0 itself, with ``zero``)."""

    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
        if value < 0 or (value == 0 and not zero) or math.isnan(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``server`` and its options to the command's subparsers."""
    server = sub.add_parser("server", help="run a dqlitepy node")
    server.add_argument(
        "-a",
        "--address",
        default="127.0.0.1:9001",
        help="address to serve on: host:port or @abstract (default %(default)s)",
    )
    server.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="the address other nodes and clients dial, when it is not --address (a node "
        "binding 0.0.0.0, or behind NAT): the node's name in the cluster and in LEADER "
        "answers; needed for a replicated node on 0.0.0.0 or [::] (or DQLITEPY_ADVERTISE)",
    )
    server.add_argument(
        "-d", "--data-dir", default="./dqlitepy-data", help="data directory (default %(default)s)"
    )
    server.add_argument(
        "-j", "--join", action="append", help="comma-separated addresses of cluster members to join"
    )
    server.add_argument(
        "-k",
        "--cluster-key-file",
        help="file holding the key all members share; with it (or DQLITEPY_CLUSTER_KEY) the "
        "node replicates through Raft",
    )
    server.add_argument(
        "--voters",
        type=int,
        default=3,
        help="on joining, become a voter while the cluster has fewer (default %(default)s); "
        "as leader, promote standbys to replace voters offline for 10 s",
    )
    server.add_argument(
        "--standbys",
        type=int,
        default=3,
        help="on joining, else become a standby while it has fewer (default %(default)s); "
        "later nodes join as spares",
    )
    server.add_argument(
        "--trust-loopback-admin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve add/assign/remove/transfer to clients on this host without a proof of the "
        "cluster key (default: only when the address is loopback or @abstract)",
    )
    server.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve clients and Raft over TLS with this certificate (PEM); with --tls-key",
    )
    server.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    server.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="mutual TLS: every client and peer must present a certificate this CA signed "
        "(default: clients need none; peers must present one the --tls-cert file vouches for)",
    )
    limits = server.add_argument_group(
        "client connection limits", "what clients may hold (see docs/server.md, Limits)"
    )
    limits.add_argument(
        "--max-connections",
        type=_positive(int),
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="client connections served at once; past it a new connection takes the slot of "
        "the one idle (or slowest to send its request) the longest (default %(default)s)",
    )
    limits.add_argument(
        "--idle-timeout",
        type=_positive(float, zero=True),
        default=0.0,
        metavar="SECONDS",
        help="close client connections idle this long between requests; 0: never (default "
        "%(default)g, as pooled go-dqlite connections stay idle indefinitely)",
    )
    limits.add_argument(
        "--request-timeout",
        type=_positive(float),
        default=DEFAULT_REQUEST_TIMEOUT,
        metavar="SECONDS",
        help="time a request may take to arrive after its first byte, and a response may "
        "stall (default %(default)g)",
    )
    limits.add_argument(
        "--max-message-size",
        type=_size,
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help="largest request one connection may send; K, M, G suffixes (default 64M)",
    )
    limits.add_argument(
        "--request-memory",
        type=_size,
        default=DEFAULT_REQUEST_MEMORY,
        metavar="BYTES",
        help="request bytes the node buffers at once over all connections; larger requests "
        "wait for it up to --request-timeout (default 256M)",
    )
    server.add_argument(
        "--metrics-address",
        type=_metrics_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics (/metrics), /healthz and /readyz over HTTP here "
        "(needs pip install dqlitepy[metrics]; see docs/metrics.md)",
    )
    server.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    server.set_defaults(func=run)
