"""The options ``dqlitepy backup`` and ``dqlitepy restore`` share: where the cluster is, TLS.

They are the shell's (``-s``, ``-c``/``-k``/``--ca``), so that one set of habits
works for every command that talks to a cluster as a client.
"""

from __future__ import annotations

import argparse
import ssl

from dqlitepy.client.tls import client_context

__all__ = ["add_client_arguments", "client_tls", "servers_of"]


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``-s/--servers``, the TLS options and ``--timeout`` to ``parser``."""
    parser.add_argument(
        "-s", "--servers", action="append", required=True, help="comma-separated node addresses"
    )
    parser.add_argument("-c", "--cert", help="TLS certificate to present (PEM), as the shell")
    parser.add_argument("-k", "--key", help="its private key (PEM)")
    parser.add_argument(
        "--ca", help="CA certificates the servers' must chain to (default: the --cert file itself)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="budget of each request to the cluster (default %(default)g)",
    )


def servers_of(args: argparse.Namespace) -> list[str]:
    """The addresses given with ``-s`` (repeated or comma-separated)."""
    return [s for s in ",".join(args.servers).split(",") if s]


def client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The Go shell's TLS: present ``--cert``, trust ``--ca`` or else ``--cert`` itself.

    As go-dqlite's SimpleDialTLSConfig, the server's certificate must chain to
    that trust anchor; host names are not checked (a cluster certificate names
    the cluster, not each node's address).

    Raises:
        ValueError: only one of ``--cert`` and ``--key``, or files that cannot be used.
    """
    if args.cert is None and args.key is None and args.ca is None:
        return None
    if args.cert is None or args.key is None:
        raise ValueError("both TLS certificate and key must be given (--cert and --key)")
    return client_context(
        ca=args.ca if args.ca is not None else args.cert,
        cert=args.cert,
        key=args.key,
        check_hostname=False,
    )
