"""The ``dqlitepy`` command line: ``dqlitepy server`` and ``dqlitepy shell``.

``dqlitepy shell`` is modelled on the Go ``dqlite`` shell.

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
and the exit status is 0.  :class:`ScriptReader` says where statements and dot commands
begin and end; unlike the Go shell, a statement may span lines.

Exit codes: 0 ok, 1 SQL or cluster error of an argument (message on stderr), 2 usage
error; ``dqlitepy server`` also exits 2 when the node refuses to start because of an
operator's mistake (its data directory in use, a missing or wrong cluster key: see
``docs/server.md``).

Only public APIs are used here (``dqlitepy.connect``, ``dqlitepy.Client``, ``dqlitepy.Node``
and its errors), and the driver's SQL scanner (:mod:`dqlitepy.client.sqltext`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import re
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import dqlitepy
from dqlitepy.client.sqltext import has_more_statements, is_complete, split_statements
from dqlitepy.client.tls import client_context
from dqlitepy.node import StartupRefused
from dqlitepy.server.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_MEMORY,
    DEFAULT_REQUEST_TIMEOUT,
    Limits,
)
from dqlitepy.server.tls import NodeTLS
from dqlitepy.wire import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["format_value", "main"]

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


def _go_float(value: float) -> str:
    """Format a float the way Go's ``%v`` does: shortest digits, %e past 1e6 or below 1e-4."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    # repr() gives the shortest digits that round-trip, as Go's strconv does.
    digits = repr(abs(value))
    if "e" in digits:
        significand, _, exp_text = digits.partition("e")
        exp = int(exp_text)  # repr puts exactly one digit before the point here
        sig = significand.replace(".", "").rstrip("0") or "0"
    else:
        whole, _, frac = digits.partition(".")
        if whole != "0":
            exp = len(whole) - 1
            sig = (whole + frac).rstrip("0")
        else:
            stripped = frac.lstrip("0")
            exp = -(len(frac) - len(stripped)) - 1
            sig = stripped.rstrip("0")
    if exp < -4 or exp >= 6:
        body = sig[0] + ("." + sig[1:] if len(sig) > 1 else "")
        return f"{sign}{body}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    point = exp + 1
    if point <= 0:
        return f"{sign}0.{'0' * -point}{sig}"
    if point >= len(sig):
        return f"{sign}{sig}{'0' * (point - len(sig))}"
    return f"{sign}{sig[:point]}.{sig[point:]}"


def format_value(value: Any) -> str:
    """Render one result value as the Go shell prints it."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "[" + " ".join(str(b) for b in bytes(value)) + "]"
    return str(value)


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
                json.dumps([dict(zip(columns, map(_json_value, r), strict=True)) for r in rows])
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


def _json_value(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return list(bytes(value))
    return value


@dataclass(frozen=True, slots=True)
class Statement:
    """A SQL statement of the shell's input, ``;`` included."""

    text: str


@dataclass(frozen=True, slots=True)
class DotCommand:
    """A dot command of the shell's input (``.leader``, ``.remove ADDR`` ...)."""

    text: str


Command = Statement | DotCommand

#: A dot command's line: a "." then a letter (".5" begins a number).
_DOT_LINE = re.compile(r"[ \t]*\.[A-Za-z]")


class ScriptReader:
    """Cuts the shell's input, line by line, into statements and dot commands.

    * A statement ends at a ``;`` outside string literals (``'...'``), quoted
      identifiers (``"..."``, ```...```, ``[...]``) and comments (``-- ...``,
      ``/* ... */``), and may span lines; a ``CREATE TRIGGER`` ends at the ``;``
      after its ``END`` (the rules of ``sqlite3_complete()``).
    * A line whose first non-blank character is a ``.`` followed by a letter is
      a dot command, unless it continues a literal, a comment or a trigger body;
      SQL typed before it and not ended by a ``;`` runs first, as if it had one.
    * At the end of the input, SQL not ended by a ``;`` runs as it is.

    The Go shell runs each line on its own instead (a statement cannot span
    lines, and ``;`` inside a line is SQLite's business); on input written for
    it, one statement or dot command a line, both do the same.
    """

    def __init__(self) -> None:
        self._buffer = ""

    @property
    def pending(self) -> bool:
        """True while an unfinished statement (or literal or comment) is buffered."""
        return has_more_statements(self._buffer) or not self._closed()

    def is_dot_command(self, line: str) -> bool:
        """True if ``line`` would be taken as a dot command (and end a pending statement)."""
        return bool(_DOT_LINE.match(line)) and self._closed()

    def feed(self, line: str) -> list[Command]:
        """Take one line of input (without its line break); return what it completes."""
        if self.is_dot_command(line):
            return [*self.finish(), DotCommand(line.strip())]
        self._buffer += line + "\n"
        # Only a line holding a ";" can complete a statement: no rescans of a long one.
        if ";" not in line:
            return []
        statements = split_statements(self._buffer)
        if not statements:
            return []
        last = statements[-1]
        end = self._buffer.rfind(last)
        if is_complete(last):
            end += len(last)  # all done: keep only what follows (comments, blanks)
        else:
            statements.pop()  # the last one goes on past this line
        self._buffer = self._buffer[end:]
        return [Statement(s) for s in statements]

    def finish(self) -> list[Command]:
        """Everything still buffered, as statements (at the end of the input)."""
        statements: list[Command] = [Statement(s) for s in split_statements(self._buffer)]
        self._buffer = ""
        return statements

    def _closed(self) -> bool:
        # No literal, comment or trigger body left open: a ";" here would end it all.
        return is_complete(self._buffer + ";")


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


def _shell_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The Go shell's TLS: present ``--cert``, trust ``--ca`` or else ``--cert`` itself.

    As go-dqlite's SimpleDialTLSConfig, the server's certificate must chain to
    that trust anchor; host names are not checked (a cluster certificate names
    the cluster, not each node's address).
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


def _shell(args: argparse.Namespace) -> int:
    servers = [s for s in ",".join(args.servers).split(",") if s]
    try:
        tls = _shell_tls(args)
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    shell = Shell(servers, args.database, args.format, sys.stdout, tls, args.cluster_key_file)
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


def _cluster_key(path: str | None) -> bytes | None:
    """The cluster key from a file or ``DQLITEPY_CLUSTER_KEY``; None: no replication."""
    if path:
        with open(path, "rb") as f:
            return f.read().strip()
    value = os.environ.get("DQLITEPY_CLUSTER_KEY", "")
    return value.encode() if value else None


def _server(args: argparse.Namespace) -> int:
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
            max_connections=limits.max_connections,
            max_message_size=limits.max_message_size,
            idle_timeout=limits.idle_timeout,
            request_timeout=limits.request_timeout,
            request_memory=limits.request_memory,
        ).start()
    except StartupRefused as exc:
        # The operator's mistake (a busy directory, a missing or wrong key): nothing changed.
        print(f"Error: cannot start node on {args.address}: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"Error: cannot start node on {args.address}: {exc}", file=sys.stderr)
        return 1
    print(f"dqlitepy node {node.id:x} serving on {node.address}", file=sys.stderr, flush=True)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dqlitepy", description="dqlitepy command line")
    parser.add_argument("--version", action="version", version=dqlitepy.__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    shell = sub.add_parser("shell", help="run SQL against a dqlite cluster (like `dqlite`)")
    shell.add_argument(
        "-s", "--servers", action="append", required=True, help="comma-separated node addresses"
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
        ".assign, .remove and .transfer (default: DQLITEPY_CLUSTER_KEY, if set)",
    )
    shell.add_argument("database")
    shell.add_argument("sql", nargs="?", help="one statement or dot command (default: stdin)")
    shell.set_defaults(func=_shell)
    server = sub.add_parser("server", help="run a dqlitepy node")
    server.add_argument(
        "-a",
        "--address",
        default="127.0.0.1:9001",
        help="address to serve on: host:port or @abstract (default %(default)s)",
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
    server.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    server.set_defaults(func=_server)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dqlitepy`` command."""
    args = _parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)
