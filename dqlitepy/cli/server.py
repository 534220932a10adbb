"""``dqlitepy server``: run a dqlitepy node until SIGINT or SIGTERM.

The node is a :class:`dqlitepy.Node`.  Its options come from flags, environment
variables and a TOML config file (:mod:`.server_options` lists them, :mod:`.config`
reads them) and are checked here (their types, TLS files, the cluster key, the
client connection limits) so that an operator's mistake exits 2 with a message
before anything starts.  A node that refuses to start
because of one (its data directory in use, a missing or wrong cluster key: see
``docs/server.md``) exits 2 too; any other failure to start exits 1.  SIGINT or SIGTERM
stops the node at once even while it starts (a ``--join`` that waits for its cluster): it
shuts down and exits 0, as after a stop of a running node (systemd counts both as clean).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

import dqlitepy
from dqlitepy.node import StartupRefused
from dqlitepy.server.limits import Limits
from dqlitepy.server.tls import NodeTLS

from .config import ConfigError, add_options, read_cluster_key, resolve
from .server_options import GROUPS, SERVER_OPTIONS

__all__ = ["add_parser", "run"]


class _StopRequested(BaseException):
    """SIGINT or SIGTERM arrived while the node was starting (a BaseException: no
    ``except Exception`` on the way, say in a join's retries, may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stopped_while_starting(signum: int, join: list[str]) -> str:
    """What the operator is told when a signal stopped the node before it was up."""
    name = signal.Signals(signum).name
    if join:
        return (
            f"Stopped by {name} while joining the cluster through {', '.join(join)}: the "
            "node shut down before it finished joining; starting it again goes on joining"
        )
    return f"Stopped by {name} while starting: the node shut down before it was up"


def _serving(node: dqlitepy.Node) -> str:
    """The line a started node prints: where it serves, its cluster, its metrics."""
    where = node.listen_address
    if node.address != where:
        where += f", advertised as {node.address}"
    if node.cluster_id is not None:
        where += f"; cluster {node.cluster_id}"
    if node.metrics_address is not None:
        where += f"; metrics on http://{node.metrics_address}/metrics"
    return f"dqlitepy node {node.id:x} serving on {where}"


def _tls(args: argparse.Namespace) -> NodeTLS | None:
    if not (args.tls_cert or args.tls_key or args.tls_ca or args.tls_admin_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    try:
        return NodeTLS.from_files(args.tls_cert, args.tls_key, args.tls_ca, args.tls_admin_ca)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _node_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of :class:`dqlitepy.Node` that ``args`` ask for.

    Raises:
        ConfigError: they contradict each other, or a file they name is unusable.
    """
    join = list(args.join)
    key = read_cluster_key(
        args.cluster_key_file, None if args.cluster_key is None else str(args.cluster_key)
    )
    if join and key is None:
        raise ConfigError(
            "joining a cluster needs its key: --cluster-key-file FILE or "
            "DQLITEPY_CLUSTER_KEY (the same on every node)"
        )
    try:
        limits = Limits(
            max_connections=args.max_connections,
            max_message_size=args.max_message_size,
            idle_timeout=args.idle_timeout or None,
            request_timeout=args.request_timeout,
            request_memory=args.request_memory,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return {
        "join": join,
        "cluster_key": key,
        "voters": args.voters,
        "standbys": args.standbys,
        "trust_loopback_admin": args.trust_loopback_admin,
        "tls": _tls(args),
        "advertise": args.advertise,
        "max_connections": limits.max_connections,
        "max_message_size": limits.max_message_size,
        "idle_timeout": limits.idle_timeout,
        "request_timeout": limits.request_timeout,
        "request_memory": limits.request_memory,
        "read_lease": args.read_lease,
        "snapshot_entries": args.snapshot_entries,
        "metrics_address": args.metrics_address,
    }


def _configure(args: argparse.Namespace) -> int | None:
    """Put the effective options on ``args``; an exit status if there is nothing to start.

    ``--print-config`` exits here (0), before anything is opened: it works beside a
    running node, whose data directory is locked.
    """
    try:
        config = resolve(SERVER_OPTIONS, args, os.environ)
        config.one_of("cluster-key-file", "cluster-key", "the cluster key")
    except ConfigError as exc:
        _print_errors(exc)
        return 2
    if args.print_config:
        sys.stdout.write(config.render("dqlitepy server"))
        return 0
    config.apply(args)
    return None


def _print_errors(exc: ConfigError) -> None:
    for line in str(exc).splitlines():
        print(f"Error: {line}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run ``dqlitepy server``; returns the exit status."""
    status = _configure(args)
    if status is not None:
        return status
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        options = _node_options(args)
    except ConfigError as exc:
        _print_errors(exc)
        return 2
    stop = threading.Event()
    starting = True

    def on_signal(signum: int, frame: object) -> None:
        logging.getLogger("dqlitepy.cli").info("signal %d: shutting down", signum)
        again = stop.is_set()
        stop.set()
        if starting and not again:
            # The start may wait long (a join retries for 30 s, a call waits for a silent
            # peer): interrupt it where it stands; Node.start closes what it opened (a
            # second signal does not interrupt that).
            raise _StopRequested(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    node: dqlitepy.Node | None = None
    try:
        node = dqlitepy.Node(args.address, args.data_dir, **options)
        node.start()
        starting = False
    except _StopRequested as exc:
        starting = False
        if node is not None:
            node.close()
        print(_stopped_while_starting(exc.signum, options["join"]), file=sys.stderr)
        return 0
    except StartupRefused as exc:
        # The operator's mistake (a busy directory, a missing or wrong key): nothing changed.
        print(f"Error: cannot start node on {args.address}: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"Error: cannot start node on {args.address}: {exc}", file=sys.stderr)
        return 1
    print(_serving(node), file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        node.close()
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``server`` and its options (:data:`.server_options.SERVER_OPTIONS`)."""
    server = sub.add_parser(
        "server",
        # No prefixes: "--cluster-key SECRET" would be taken for --cluster-key-file, and an
        # option added to the table would change what a prefix meant.
        allow_abbrev=False,
        help="run a dqlitepy node",
        description="Run a dqlitepy node. Every option is also an environment variable "
        "(DQLITEPY_<NAME>) and a key of the TOML file --config names; precedence: flag > "
        "environment > config file > default (docs/configuration.md).",
    )
    add_options(server, SERVER_OPTIONS, GROUPS)
    server.set_defaults(func=run)
