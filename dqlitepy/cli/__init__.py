"""The ``dqlitepy`` command line: ``dqlitepy server``, ``dqlitepy shell`` and the operator's.

``dqlitepy shell`` (:mod:`.shell`) is modelled on the Go ``dqlite`` shell: its
input is cut by :mod:`.script` and its output formatted by :mod:`.output`.
``dqlitepy server`` (:mod:`.server`) runs a node; its options (:mod:`.server_options`)
are flags, environment variables and keys of a TOML config file at once (:mod:`.config`,
:mod:`.kinds`).
``dqlitepy server`` (:mod:`.server`) runs a node.  ``dqlitepy backup``,
``dqlitepy restore`` and ``dqlitepy recover`` (:mod:`.backup`, :mod:`.restore`,
:mod:`.recover`) are the operator's (``docs/backup.md``).

Exit codes: 0 ok, 1 SQL or cluster error of an argument (message on stderr), 2 usage
error; ``dqlitepy server`` also exits 2 when the node refuses to start because of an
operator's mistake (its data directory in use, a missing or wrong cluster key: see
``docs/server.md``).

Only public APIs are used here (``dqlitepy.connect``, ``dqlitepy.Client``, ``dqlitepy.Node``
and its errors, the server's option types), and the driver's SQL scanner
(:mod:`dqlitepy.client.sqltext`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import dqlitepy

from . import backup, recover, restore, server, shell
from .output import format_value

__all__ = ["format_value", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dqlitepy", description="dqlitepy command line")
    parser.add_argument("--version", action="version", version=dqlitepy.__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    shell.add_parser(sub)
    server.add_parser(sub)
    backup.add_parser(sub)
    restore.add_parser(sub)
    recover.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dqlitepy`` command."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "shell" and args.sql is None and len(extra) == 1:
        # argparse fills DATABASE and the optional SQL from one run of positionals, so
        # "shell -s A DB --cluster-key-file K SQL" (options between them, as the Go shell
        # allows) would leave SQL over: it is the statement.
        args.sql, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)
