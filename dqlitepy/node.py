"""The embedding API: :class:`Node`, and the embedded default behind ``connect("app.db")``.

A :class:`Node` runs a dqlitepy server in background threads of the host
process ("the server thread" of dqlite).  :func:`connect` is the package's
``connect``: with no servers configured (no ``servers=``, no ``dqlite://`` URL,
no ``DQLITEPY_SERVERS``) it starts one node per process on an abstract Unix
socket, keeping its data in ``DQLITEPY_DATA_DIR`` (default ``./.dqlitepy``), so
``import dqlitepy as sqlite3`` works with nothing to set up.  ``:memory:`` gives
a private database on a second node whose directory is temporary; the database
is deleted when its connection closes.

The server (and with it APSW, PySyncObj and the Raft transport) is imported
when a node is constructed, not with this module: ``import dqlitepy`` and
connections to servers elsewhere never load it.  The startup errors
(:class:`StartupRefused` and its subclasses) are the server's, resolved on first
use through the module's ``__getattr__``.
"""

from __future__ import annotations

import atexit
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from .client import dbapi as _dbapi
from .client.admin import Client
from .client.errors import OperationalError
from .wire import NodeInfo

if TYPE_CHECKING:
    import ssl


if TYPE_CHECKING:
    from .server import NodeServer
    from .server.datadir import (
        ClusterIdentityError,
        ClusterKeyRejected,
        DataDirectoryInUse,
        StartupRefused,
    )
    from .server.stats import NodeMetrics

__all__ = [
    "ClusterIdentityError",
    "ClusterKeyRejected",
    "Connection",
    "DataDirectoryInUse",
    "Node",
    "StartupRefused",
    "connect",
    "default_target",
    "embedded_node",
]

_DEFAULT_DATA_DIR = "./.dqlitepy"

#: Names this module offers from the server, imported only when first asked for.
_SERVER_NAMES = frozenset(
    {"ClusterIdentityError", "ClusterKeyRejected", "DataDirectoryInUse", "StartupRefused"}
)


def __getattr__(name: str) -> object:
    if name in _SERVER_NAMES:
        from .server import datadir

        value: object = getattr(datadir, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SERVER_NAMES})


class Node:
    """A dqlitepy node running inside this process.

    The node holds its data directory from construction to :meth:`close`: no
    other node, in this process or another, can use it meanwhile.

    Args:
        address: where to serve clients: ``host:port`` (port 0 picks a free
            port) or ``@name`` for an abstract Unix socket.
        data_dir: the node's data directory.
        join: addresses of existing cluster members to join.
        **options: passed to the server (``max_message_size``,
            ``busy_timeout_ms``, ``max_connections``, ``cluster_key``,
            ``voters``, ``standbys``, ``tls``: a
            :class:`~dqlitepy.server.tls.NodeTLS` to serve clients and Raft
            over TLS; ``advertise``: the ``host:port`` others dial when it is
            not ``address``, such as a node binding ``0.0.0.0``;
            ``metrics_address``: serve ``/metrics``, ``/healthz`` and
            ``/readyz`` over HTTP on this ``host:port``, which needs
            ``dqlitepy[metrics]``, see ``docs/metrics.md``).

    Raises:
        DataDirectoryInUse: another node holds ``data_dir``.
        ClusterIdentityError: ``data_dir`` belongs to a replicated cluster and
            the cluster key is missing or another one, or it holds a standalone
            node's databases and a cluster key was given.
        ValueError: an address is invalid; a :class:`StartupRefused` too when
            ``advertise`` cannot be dialled or a replicated node listens on
            ``0.0.0.0`` without it.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:9001",
        data_dir: str | os.PathLike[str] = "./dqlitepy-data",
        *,
        join: Sequence[str] = (),
        **options: Any,
    ) -> None:
        # Here, not at the top: only a process that runs a node pays for the server.
        from .server import NodeServer

        self._server: NodeServer = NodeServer(address, data_dir, join=join, **options)
        self._started = False

    @property
    def id(self) -> int:
        """This node's id."""
        return self._server.id

    @property
    def address(self) -> str:
        """The address clients dial: the advertised one, else where it listens (real port)."""
        return self._server.address

    @property
    def listen_address(self) -> str:
        """The address the node listens on (the real port once started)."""
        return self._server.listen_address

    @property
    def data_dir(self) -> Path:
        """The node's data directory."""
        return self._server.data_dir

    @property
    def cluster_id(self) -> str | None:
        """The id of the node's cluster, as its data directory records it.

        None for a standalone node, and for a member whose directory was made by a
        version before cluster ids until its log names the id (see ``docs/server.md``).
        """
        return self._server.cluster_id

    @property
    def metrics_address(self) -> str | None:
        """Where ``/metrics`` is served (the real port once started), or None."""
        return self._server.metrics_address

    def metrics(self) -> NodeMetrics:
        """The node's figures as plain data: what ``/metrics`` exports.

        A dict of ``node`` (``id``, ``address``, ``mode``), ``requests`` (type ->
        outcome -> count), ``request_seconds`` (type -> histogram),
        ``connections``, ``commits``, ``databases`` (name -> ``file``, ``wal``
        bytes) and ``raft`` (None without replication).  A histogram is a dict
        of ``buckets`` (cumulative ``(upper bound, count)`` pairs, the last
        bound ``math.inf``), ``count`` and ``sum``.  Every key is described in
        ``docs/metrics.md``; ``dqlitepy.server.stats.NodeMetrics`` types it.
        """
        return self._server.metrics()

    @property
    def is_leader(self) -> bool:
        """True while this node is the cluster's leader."""
        return self._server.is_leader()

    def start(self) -> Node:
        """Start serving; returns the node for chaining.

        A node that fails to start is closed (its data directory released).

        Raises:
            ClusterKeyRejected: the cluster to join holds another key.
            OSError: the address cannot be served.
        """
        try:
            self._server.start()
        except BaseException:
            self._server.close()
            raise
        self._started = True
        return self

    def close(self) -> None:
        """Stop serving and wait for the server threads."""
        if self._started:
            self._started = False
            self._server.close()

    def __enter__(self) -> Node:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def leader(self) -> NodeInfo | None:
        """The current leader, or None if none is known."""
        node_id, address = self._server.leader()
        return NodeInfo(node_id, address) if address else None

    def cluster(self) -> list[NodeInfo]:
        """The cluster's members as this node knows them."""
        return list(self._server.cluster())

    def client(self) -> Client:
        """An admin :class:`~dqlitepy.Client` pointed at this node (its key and TLS, if any)."""
        return Client([self.address], cluster_key=self._server.cluster_key, ssl=self._client_tls())

    def connect(self, database: str, **kwargs: Any) -> Connection:
        """Open a DB-API connection to ``database`` through this node.

        A TLS node is dialled with its own client context (its certificate) unless
        ``ssl=`` says otherwise.
        """
        kwargs.setdefault("ssl", self._client_tls())
        return Connection(database, servers=[self.address], **kwargs)

    def _client_tls(self) -> ssl.SSLContext | None:
        tls = self._server.tls
        return None if tls is None else tls.client


class _Embedded:
    """The per-process nodes behind ``connect()`` without servers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._default: Node | None = None
        self._memory: Node | None = None
        self._memory_dir: str | None = None
        self._registered = False

    def _register(self) -> None:
        if not self._registered:
            atexit.register(self.close)
            self._registered = True

    def _address(self, kind: str) -> str:
        return f"@dqlitepy-{kind}-{os.getpid()}-{secrets.token_hex(6)}"

    def default(self) -> Node:
        from .server.datadir import StartupRefused

        with self._lock:
            if self._default is None:
                data_dir = Path(os.environ.get("DQLITEPY_DATA_DIR") or _DEFAULT_DATA_DIR).resolve()
                self._register()
                try:
                    self._default = Node(self._address("node"), data_dir).start()
                except StartupRefused as exc:
                    # What sqlite3.connect raises for a database it cannot open.
                    raise OperationalError(f"cannot start the embedded node: {exc}") from exc
            return self._default

    def memory(self) -> Node:
        import tempfile  # with shutil and its compressors: only for ":memory:"

        with self._lock:
            if self._memory is None:
                self._register()
                self._memory_dir = tempfile.mkdtemp(prefix="dqlitepy-memory-")
                self._memory = Node(self._address("memory"), self._memory_dir).start()
            return self._memory

    def close(self) -> None:
        import shutil

        with self._lock:
            for node in (self._default, self._memory):
                if node is not None:
                    node.close()
            self._default = self._memory = None
            if self._memory_dir is not None:
                shutil.rmtree(self._memory_dir, ignore_errors=True)
                self._memory_dir = None


_embedded = _Embedded()


def embedded_node() -> Node:
    """The process's embedded node, started on first use."""
    return _embedded.default()


def _delete_database(node: Node, name: str) -> None:
    node._server.engine.remove(name)


class Connection(_dbapi.Connection):
    """``dqlitepy.Connection``: the driver's connection, plus the embedded default.

    With no servers configured (``servers=``, a ``dqlite://`` URL or
    ``DQLITEPY_SERVERS``), ``Connection("app.db")`` opens ``app.db`` on the
    process's embedded node and ``Connection(":memory:")`` a fresh private
    database, deleted when the connection closes.  Subclass it for
    ``connect(..., factory=...)``, as with ``sqlite3.Connection``.
    """

    def _default_servers(self, name: str) -> tuple[list[str], str]:
        servers, name, on_close = default_target(name)
        if on_close is not None:
            self._close_callbacks.append(on_close)
        return servers, name


def default_target(name: str) -> tuple[list[str], str, Callable[[], None] | None]:
    """Where database ``name`` lives when no servers are configured: the embedded nodes.

    Starts the node on first use (this blocks while it starts).  ``:memory:``
    (or ``""``) is a fresh private database on the second node.

    Returns:
        The servers, the database name to open there, and what to call once
        the connection is closed (None: nothing), for ``dqlitepy.connect`` and
        ``dqlitepy.aio.connect`` alike.
    """
    if name == ":memory:" or name == "":
        node = _embedded.memory()
        private = f"memory-{secrets.token_hex(16)}"
        return [node.address], private, lambda: _delete_database(node, private)
    return [embedded_node().address], name, None


def connect(database: str | bytes | os.PathLike[str], *args: Any, **kwargs: Any) -> Connection:
    """Open a connection, like ``sqlite3.connect``; see :func:`dqlitepy.client.dbapi.connect`.

    Where no servers are configured (``servers=``, a ``dqlite://`` URL or
    ``DQLITEPY_SERVERS``) the embedded node serves the database, and
    ``":memory:"`` is a fresh private database that disappears at close.

    As ``sqlite3.connect`` does, this calls ``factory`` (default
    :class:`Connection`) with exactly the arguments it was given.
    """
    factory = kwargs.get("factory", args[4] if len(args) > 4 else None)
    cls = Connection if factory is None else factory
    # A factory is meant to be a subclass of Connection (sqlite3 does not check either).
    return cast(Connection, cls(database, *args, **kwargs))
