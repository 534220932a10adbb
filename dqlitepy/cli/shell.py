"""``dqlitepy shell``: SQL and dot commands against a cluster, as the Go ``dqlite`` shell.

Output follows the Go shell so scripts written for one work with the other.
Rows print as ``|``-separated values formatted as Go's ``%v`` would (``<nil>``
for NULL, ``[1 2]`` for blobs, ``true``/``false`` for booleans); ``.cluster``
prints ``id|address|role`` with the id in hex; ``.cluster`` and ``.describe``
honour ``-f json`` exactly as the Go shell does.  With ``-f json`` query results
print as a JSON array of objects (the Go shell 1.11 prints them as tabular).

Input, as the Go shell takes it (measured against ``/usr/bin/dqlite`` 1.11.5, see
``docs/server.md``): SQL given as an argument runs statement by statement and stops at
the first error (``Error: <query|exec>: <message>`` on stderr, exit 1).  Piped input runs
to its end: each error is printed in place on stdout as ``Error:  <query|exec>:
<message>``, a ``dqlite> `` prompt precedes every line read unless stdout is a terminal,
and the exit status is 0.  :class:`~.script.ScriptReader` says where statements and dot
commands begin and end; unlike the Go shell, a statement may span lines.

Only the driver is used (``dqlitepy.connect``, ``dqlitepy.Client``): the shell never
loads the server.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import ssl
import sys
from collections.abc import Callable
from typing import TextIO

import dqlitepy
from dqlitepy.client.url import servers_from_env

from .clientargs import client_tls
from .output import format_value, json_value
from .script import Command, DotCommand, ScriptReader

__all__ = ["Shell", "add_parser", "run"]

_ROLE_NAMES = {0: "voter", 1: "stand-by", 2: "spare"}
_HELP = """\
.cluster                   Show the cluster members (id|address|role).
.leader                    Show the current leader's address.
.remove <address>          Remove a node from the cluster.
.describe <address>        Show a node's failure domain and weight.
.weight <address> <n>      Set a node's weight.
.dump <address> <db>       Write a database's files into the current directory.
.add <id> <address>        Add a node as a spare.
.assign <address> <role>   Give a node a role (voter, standby, spare).
.transfer <address>        Hand leadership over to a node.
.help                      Show this help.
"""


class Shell:
    """Runs SQL and dot commands against one database of a cluster."""

    def __init__(
        self,
        servers: list[str],
        database: str,
        fmt: str,
        out: TextIO,
        tls: ssl.SSLContext | None = None,
        cluster_key_file: str | None = None,
    ) -> None:
        self.servers = servers
        self.cluster_key_file = cluster_key_file
        self.database = database
        self.format = fmt
        self.out = out
        self.tls = tls
        self._conn: dqlitepy.Connection | None = None
        self._client: dqlitepy.Client | None = None

    @property
    def conn(self) -> dqlitepy.Connection:
        if self._conn is None:
            self._conn = dqlitepy.connect(
                self.database, servers=self.servers, isolation_level=None, ssl=self.tls
            )
        return self._conn

    @property
    def client(self) -> dqlitepy.Client:
        if self._client is None:
            # The key (file, else DQLITEPY_CLUSTER_KEY) for .add/.assign/.remove/.transfer.
            self._client = dqlitepy.Client(
                self.servers, cluster_key=self.cluster_key_file, ssl=self.tls
            )
        return self._client

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._client is not None:
            self._client.close()

    def execute(self, statement: str) -> None:
        """Run one SQL statement, printing its rows."""
        cursor = self.conn.execute(statement)
        if cursor.description is None:
            return
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        if self.format == "json":
            self.out.write(
                json.dumps([dict(zip(columns, map(json_value, r), strict=True)) for r in rows])
                + "\n"
            )
            return
        for row in rows:
            self.out.write("|".join(format_value(v) for v in row) + "\n")

    def dot(self, line: str) -> None:
        """Run one dot command (``.leader``, ``.cluster`` ...), printing its output."""
        self._dot(line.split())

    def _node_id(self, address: str) -> int:
        for node in self.client.cluster():
            if node.address == address:
                return node.id
        # Worded and quoted as the Go shell does (Go's %q).
        raise dqlitepy.OperationalError(f'no node has address "{address}"')

    def _dot(self, words: list[str]) -> None:
        command, args = words[0], words[1:]
        handlers: dict[str, tuple[int, Callable[[list[str]], None]]] = {
            ".cluster": (0, self._cluster),
            ".leader": (0, self._leader),
            ".remove": (1, lambda a: self.client.remove(self._node_id(a[0]))),
            ".describe": (1, self._describe),
            ".weight": (2, lambda a: self.client.weight(int(a[1]), a[0])),
            ".dump": (2, self._dump),
            ".add": (2, lambda a: self.client.add(int(a[0], 0), a[1])),
            ".assign": (2, lambda a: self.client.assign(self._node_id(a[0]), a[1])),
            ".transfer": (1, lambda a: self.client.transfer(self._node_id(a[0]))),
            ".help": (0, self._help),
        }
        if command not in handlers:
            raise dqlitepy.OperationalError(f"unknown command {command!r}; try .help")
        arity, handler = handlers[command]
        if len(args) != arity:
            raise dqlitepy.OperationalError(f"{command} takes {arity} argument(s)")
        handler(args)

    def _help(self, args: list[str]) -> None:
        self.out.write(_HELP)

    def _cluster(self, args: list[str]) -> None:
        nodes = self.client.cluster()
        if self.format == "json":
            records = [{"ID": n.id, "Address": n.address, "Role": int(n.role)} for n in nodes]
            self.out.write(json.dumps(records, indent="\t") + "\n")
            return
        for node in nodes:
            role = _ROLE_NAMES.get(int(node.role), str(node.role))
            self.out.write(f"{node.id:x}|{node.address}|{role}\n")

    def _leader(self, args: list[str]) -> None:
        leader = self.client.leader()
        self.out.write((leader.address if leader else "") + "\n")

    def _describe(self, args: list[str]) -> None:
        meta = self.client.describe(args[0])
        if self.format == "json":
            record = {"FailureDomain": meta.failure_domain, "Weight": meta.weight}
            self.out.write(json.dumps(record, indent="\t") + "\n")
            return
        self.out.write(f"{args[0]}|{meta.failure_domain}|{meta.weight}\n")

    def _dump(self, args: list[str]) -> None:
        for name, data in self.client.dump(args[1], args[0]).items():
            with open(name, "wb") as f:
                f.write(data)


#: The Go shell's prompt. Its line reader (liner) prints it even when the input is
#: piped, unless the output is a terminal whose TERM it supports.
_PROMPT = "dqlite> "
_CONTINUATION = "   ...> "
_UNSUPPORTED_TERMS = frozenset({"", "dumb", "cons25"})


def _error_text(command: Command, exc: Exception) -> str:
    """The message the Go shell gives: SQL errors say whether they came from a query."""
    if isinstance(command, DotCommand):
        return str(exc)
    # The Go shell sends lines starting with SELECT as queries, the others as execs.
    kind = "query" if command.text[:6].upper() == "SELECT" else "exec"
    return f"{kind}: {exc}"


_SHELL_ERRORS = (dqlitepy.Error, OSError, ValueError)


def _run(shell: Shell, command: Command) -> None:
    if isinstance(command, DotCommand):
        shell.dot(command.text)
    else:
        shell.execute(command.text)


def _run_argument(shell: Shell, text: str) -> int:
    """``dqlitepy shell ... DATABASE SQL``: stop at the first error, as the Go shell does."""
    reader = ScriptReader()
    commands = [c for line in text.split("\n") for c in reader.feed(line)] + reader.finish()
    for command in commands:
        try:
            _run(shell, command)
        except _SHELL_ERRORS as exc:
            shell.out.flush()
            print(f"Error: {_error_text(command, exc)}", file=sys.stderr)
            return 1
    return 0


def _run_lines(shell: Shell, stream: TextIO, prompts: bool) -> int:
    """Piped input: run it all, printing each error in place and going on (exit 0).

    As the Go shell: a prompt before each line read (when ``prompts``), errors on
    stdout as ``Error:  <message>`` (two spaces: Go's ``Println("Error: ", err)``),
    and the exit status 0 whatever failed.
    """
    out = shell.out
    reader = ScriptReader()

    def run(commands: list[Command]) -> None:
        for command in commands:
            try:
                _run(shell, command)
            except _SHELL_ERRORS as exc:
                out.write(f"Error:  {_error_text(command, exc)}\n")

    def prompt() -> None:
        if prompts:
            out.write(_PROMPT)
            out.flush()

    prompt()
    line = stream.readline()
    while line:
        run(reader.feed(line.rstrip("\r\n")))
        if reader.pending:
            # Nothing runs until the next line comes: read it before prompting, so
            # that a statement without ";" that the end of the input or a dot
            # command ends prints before the next prompt, as in the Go shell (which
            # runs every line as soon as it is read).
            line = stream.readline()
            if not line or reader.is_dot_command(line.rstrip("\r\n")):
                run(reader.finish())
            prompt()
        else:
            out.flush()
            prompt()
            line = stream.readline()
    out.flush()
    return 0


def _servers(args: argparse.Namespace) -> list[str]:
    """``-s``, else ``DQLITEPY_SERVERS``: the servers the driver would use too."""
    servers = [s for s in ",".join(args.servers or []).split(",") if s] or servers_from_env()
    if not servers:
        raise ValueError("no servers: give -s ADDR[,ADDR...] or set DQLITEPY_SERVERS")
    return servers


def _key_file(args: argparse.Namespace) -> str | None:
    """``--cluster-key-file``, else ``DQLITEPY_CLUSTER_KEY_FILE``; None: the driver's default
    (``DQLITEPY_CLUSTER_KEY``).  Both variables at once are refused, as ``dqlitepy server``
    refuses them."""
    if args.cluster_key_file:
        return str(args.cluster_key_file)
    path = os.environ.get("DQLITEPY_CLUSTER_KEY_FILE", "").strip()
    if path and os.environ.get("DQLITEPY_CLUSTER_KEY", "").strip():
        raise ValueError(
            "env DQLITEPY_CLUSTER_KEY_FILE and env DQLITEPY_CLUSTER_KEY both set the cluster "
            "key: keep one"
        )
    return path or None


def run(args: argparse.Namespace) -> int:
    """Run ``dqlitepy shell``; returns the exit status."""
    try:
        servers = _servers(args)
        tls = client_tls(args)
        key_file = _key_file(args)
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    shell = Shell(servers, args.database, args.format, sys.stdout, tls, key_file)
    try:
        if args.sql is not None:
            return _run_argument(shell, args.sql)
        if sys.stdin.isatty():
            _interactive(shell)
            return 0
        # Bytes that are not UTF-8 fail their own statement, not the whole input.
        stdin = io.TextIOWrapper(sys.stdin.buffer, errors="surrogateescape")
        prompts = not sys.stdout.isatty() or os.environ.get("TERM", "") in _UNSUPPORTED_TERMS
        return _run_lines(shell, stdin, prompts)
    except OSError as exc:  # reading the input failed: the Go shell gives up too
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(*_SHELL_ERRORS):
            shell.close()


def _interactive(shell: Shell) -> None:
    with contextlib.suppress(ImportError):  # readline is missing on some platforms
        import readline  # noqa: F401 - line editing and history for input()
    reader = ScriptReader()
    while True:
        end = False
        try:
            line = input(_CONTINUATION if reader.pending else _PROMPT)
        except EOFError:
            print()
            end = True
            commands = reader.finish()
        except KeyboardInterrupt:
            print()
            reader = ScriptReader()  # Ctrl-C drops the statement being typed
            continue
        else:
            commands = reader.feed(line)
        for command in commands:
            try:
                _run(shell, command)
            except _SHELL_ERRORS as exc:
                print(f"Error:  {_error_text(command, exc)}")
        if end:
            return


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``shell`` and its options to the command's subparsers."""
    shell = sub.add_parser("shell", help="run SQL against a dqlite cluster (like `dqlite`)")
    shell.add_argument(
        "-s",
        "--servers",
        action="append",
        help="comma-separated node addresses (default: DQLITEPY_SERVERS)",
    )
    shell.add_argument("-f", "--format", choices=("tabular", "json"), default="tabular")
    shell.add_argument("-c", "--cert", help="TLS certificate to present (PEM), as the dqlite shell")
    shell.add_argument("-k", "--key", help="its private key (PEM)")
    shell.add_argument(
        "--ca", help="CA certificates the servers' must chain to (default: the --cert file itself)"
    )
    shell.add_argument(
        "--cluster-key-file",
        help="file holding the cluster key, proved to nodes that ask for it before .add, "
        ".assign, .remove and .transfer (default: DQLITEPY_CLUSTER_KEY_FILE, else the key in "
        "DQLITEPY_CLUSTER_KEY, if set)",
    )
    shell.add_argument("database")
    shell.add_argument("sql", nargs="?", help="one statement or dot command (default: stdin)")
    shell.set_defaults(func=run)
