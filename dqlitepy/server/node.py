"""A dqlitepy node's server: the parts of a node, wired together.

:class:`NodeServer` owns the data directory (``datadir.py``), the node's
identity (``identity.py``), its databases (the engine), the listener
(``listener.py``) and one :class:`~dqlitepy.server.cluster.Cluster`, decided by
the cluster key: standalone, or replicated (``cluster.py``).  A replicated node
checks the cluster's key and joins it at start-up (``join.py``); while it leads
it keeps its voters online (``membership.py``).  Each client connection's
:class:`~dqlitepy.server.gateway.Gateway` asks the node what it needs
(:class:`~dqlitepy.server.gateway.NodeContext`), and the node asks its cluster.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from ..client.address import parse_address
from ..engine import Engine, Session, StatementInfo
from ..replication.transport import MIN_KEY_SIZE
from ..wire import NodeInfo, Request
from ..wire.address import parse_node_address
from ..wire.framing import DEFAULT_MAX_MESSAGE_SIZE
from .advertise import check_addresses, is_wildcard
from .auth import AdminPolicy, Peer, listens_locally
from .cluster import Cluster, Replicating, Standalone, Starting
from .datadir import ClusterIdentityError, ClusterIdMismatch, DataDirectory, new_cluster_id
from .gateway import BeginRead, Gateway, GatewayFailure
from .identity import BOOTSTRAP_ID, InitialConfiguration, load_node_id
from .join import Joiner
from .limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_MEMORY,
    DEFAULT_REQUEST_TIMEOUT,
    Limits,
    connections_within_open_files,
)
from .listener import Listener, bind
from .metrics import MetricsServer, parse_metrics_address, require_prometheus_client
from .stats import NodeMetrics, RequestStats
from .tls import NodeTLS, is_loopback

__all__ = ["BOOTSTRAP_ID", "NodeServer", "parse_listen_address"]

log = logging.getLogger("dqlitepy.server")


#: Split ``host:port`` / ``[v6]:port`` / ``@name`` into a socket family and address.
parse_listen_address = parse_address


class NodeServer:
    """One node: its databases, its listener and its client connections.

    Args:
        address: where to listen (``host:port``, port 0 picks a free one, or
            ``@name`` for an abstract Unix socket).
        data_dir: the node's directory (created if missing).
        join: addresses of existing members (used by replication).
        max_message_size: the largest request accepted.
        busy_timeout_ms: how long a writer waits for another writer's lock.
        max_connections: client connections served at once; past it a newcomer
            takes the slot of the connection idle (or receiving) the longest.
        idle_timeout: seconds a client connection may stay idle between
            requests (None: no limit).
        request_timeout: seconds a request may take to arrive, and a response
            may wait for its client per MiB (see :mod:`dqlitepy.server.limits`).
        request_memory: request body bytes the node buffers at once, over all
            connections (see :mod:`dqlitepy.server.limits`).
        cluster_key: the key every member shares; with it the node replicates.
        voters: a joining node becomes a voter while the cluster has fewer...
        standbys: ... else a standby while it has fewer, else it stays a spare.
            While leading, the node also keeps ``voters`` voters online by
            promoting standbys in place of voters gone silent.
        trust_loopback_admin: serve ADD/ASSIGN/REMOVE/TRANSFER to clients on
            this host without a proof of the cluster key; None (the default):
            only when listening on a loopback address or an abstract Unix
            socket (``server/auth.py``).
        tls: serve clients and Raft over TLS, and dial other nodes with it
            (:class:`~dqlitepy.server.tls.NodeTLS`).
        advertise: the ``host:port`` the other nodes and clients dial, when it
            is not ``address`` (a wildcard bind, NAT): the node's name in the
            cluster, in LEADER answers and in its Raft identity
            (``server/advertise.py``).  None: ``address`` itself.
        read_lease: serve reads under the leader's lease (False: confirm each
            with a ReadIndex round); None: ``DQLITEPY_READ_LEASE``, else True.
        snapshot_entries: log entries between snapshots; None:
            ``DQLITEPY_SNAPSHOT_ENTRIES``, else 10,000.
        metrics_address: serve ``/metrics``, ``/healthz`` and ``/readyz`` over
            HTTP on this ``HOST:PORT`` (``server/metrics.py``); needs
            ``prometheus_client`` (``dqlitepy[metrics]``).

    Raises:
        AddressRefused: ``advertise`` cannot be dialled, or a replicated node
            listens on a wildcard address without one.
        MetricsUnavailable: ``metrics_address`` without ``prometheus_client``.
        ValueError: an address is not valid.
    """

    def __init__(
        self,
        address: str,
        data_dir: str | os.PathLike[str],
        *,
        join: Sequence[str] = (),
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        busy_timeout_ms: int = 5000,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        request_memory: int = DEFAULT_REQUEST_MEMORY,
        cluster_key: bytes | None = None,
        voters: int = 3,
        standbys: int = 3,
        trust_loopback_admin: bool | None = None,
        tls: NodeTLS | None = None,
        advertise: str | None = None,
        read_lease: bool | None = None,
        snapshot_entries: int | None = None,
        metrics_address: str | None = None,
    ) -> None:
        parse_listen_address(address)
        if metrics_address is not None:
            parse_metrics_address(metrics_address)
            require_prometheus_client()
        self._metrics_address = metrics_address
        self._metrics_server: MetricsServer | None = None
        self._requests = RequestStats()
        check_addresses(address, advertise, replicated=cluster_key is not None or bool(join))
        self.limits = Limits(
            # Clients must never take the descriptors the node needs for its own files.
            max_connections=connections_within_open_files(max_connections),
            max_message_size=max_message_size,
            idle_timeout=idle_timeout,
            request_timeout=request_timeout,
            request_memory=request_memory,
        )
        if voters < 1 or standbys < 0:
            raise ValueError("a cluster needs at least one voter, and standbys cannot be negative")
        if cluster_key is not None and len(cluster_key) < MIN_KEY_SIZE:
            raise ValueError(f"the cluster key must be at least {MIN_KEY_SIZE} bytes")
        self._join_roles = (voters, standbys)
        self._raft_tuning = (snapshot_entries, read_lease)
        self.tls = tls
        self._requested_address = address
        self._advertise = advertise
        # Where the node listens, and the name everyone else knows it by (the same
        # unless advertised); both get their real port once bound (start()).
        self._listen_address = address
        self._address = advertise or address
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Locked and checked before anything reads or changes the directory (datadir.py).
        self._directory = DataDirectory(self.data_dir, address=address, cluster_key=cluster_key)
        self.join = list(join)
        try:
            if cluster_key is not None:
                self._directory.check_journal()
            self._id = load_node_id(self.data_dir, bootstrap=not self.join)
            # The Raft log is a replicated node's durable copy: SQLite need not sync
            # its WAL then; a single node relies on SQLite alone.
            self.engine = Engine(
                self.data_dir / "databases",
                busy_timeout_ms=busy_timeout_ms,
                synchronous="FULL" if cluster_key is None else "NORMAL",
                checkpoint_on_close=cluster_key is None,
            )
        except BaseException:
            self._directory.close()
            raise
        self.weight = 0
        self.failure_domain = 0
        self._listener: Listener | None = None
        self._closing = threading.Event()
        # Replication runs when the node is given a cluster key (the key every
        # member shares); without one it is a single node committing locally.
        self.cluster_key = cluster_key
        self._cluster: Cluster = self._local_cluster()
        self._trust_loopback_admin = trust_loopback_admin
        # Who may change the cluster; set once the listener is bound (start()).
        self._admin = AdminPolicy(cluster_key, trust_loopback=False)

    def _local_cluster(self) -> Cluster:
        """What the node serves through until (or, standalone, unless) Raft runs."""
        if self.cluster_key is None:
            return Standalone(self.engine, self._id, self._address)
        return Starting(self.engine, self._id, self._address)

    # ------------------------------------------------------------ identity

    @property
    def id(self) -> int:
        """This node's Raft id."""
        return self._id

    @property
    def address(self) -> str:
        """The address clients and peers dial: the advertised one, else the listening one."""
        return self._address

    @property
    def listen_address(self) -> str:
        """The address the node listens on (with the real port once started)."""
        return self._listen_address

    @property
    def metrics_address(self) -> str | None:
        """Where the metrics endpoint serves (the real port once started), if it does."""
        server = self._metrics_server
        return self._metrics_address if server is None else server.address

    def _describe(self) -> str:
        """Where the node serves, for logs and the data directory's lock."""
        if self._address == self._listen_address:
            return self._address
        return f"{self._listen_address}, advertised as {self._address}"

    # ------------------------------------------------------------- NodeContext

    def leader(self) -> tuple[int, str]:
        """The leader's id and address, or ``(0, "")`` when none is known."""
        return self._cluster.leader()

    def is_leader(self) -> bool:
        """True when this node leads (and, replicated, has caught up)."""
        return self._cluster.is_leader()

    def cluster(self) -> list[NodeInfo]:
        """The members with their roles."""
        return self._cluster.members()

    def open_session(self, name: str) -> Session:
        """Open a session on database ``name``."""
        return self._cluster.open_session(name)

    def close_session(self, name: str, session: Session) -> None:
        """Close a session opened by :meth:`open_session`."""
        self._cluster.close_session(name, session)

    def execution(
        self, owner: object, name: str, session: Session, info: StatementInfo, timeout: float
    ) -> AbstractContextManager[Callable[[], None]]:
        """The write path: replicated commits go through Raft before the reply.

        A single node commits locally: SQLite (``synchronous=FULL``) made the
        commit durable before the statement returns, so there is nothing more.
        """
        return self._cluster.execution(owner, name, session, info, timeout)

    def read_starter(self, name: str) -> BeginRead:
        """The read fast path's admission on database ``name`` (see ``gateway.NodeContext``)."""
        return self._cluster.read_starter(name)

    def dump(self, name: str) -> list[tuple[str, bytes]]:
        """Return the files of database ``name``."""
        return self._cluster.dump(name)

    def storage_failed(self) -> None:
        """SQLite reported a full disk or an I/O error: have the Raft log's storage probed.

        A replicated node whose probe fails steps down until its storage works
        again (``docs/replication.md``, "Disk full and I/O errors").
        """
        self._cluster.storage_failed()

    # ---------------------------------------------------------- monitoring

    def metrics(self) -> NodeMetrics:
        """The node's figures as plain data (``server/stats.py``, ``docs/metrics.md``)."""
        requests, latency = self._requests.figures()
        listener = self._listener
        raft = self._cluster.raft_stats()
        mode = "standalone" if self.cluster_key is None else "starting"
        if raft is not None:
            mode = "replicated"
        return {
            "node": {"id": self._id, "address": self._address, "mode": mode},
            "requests": requests,
            "request_seconds": latency,
            "connections": 0 if listener is None else len(listener.table),
            "commits": self._cluster.commits(),
            "databases": {
                name: {"file": size, "wal": wal}
                for name, (size, wal) in self.engine.sizes().items()
            },
            "raft": raft,
        }

    def ready(self, timeout: float) -> str | None:
        """None if this node is ready to serve, else why not (``/readyz``).

        Ready: it serves, a leader is known, and it has applied every entry the
        leader had committed when asked (a follower asks the leader).  Takes
        about ``timeout`` at most.
        """
        if not self.healthy():
            return "not serving"
        return self._cluster.ready(timeout)

    def healthy(self) -> bool:
        """True while the node serves (started and not closing)."""
        return self._listener is not None and not self._closing.is_set()

    def require_leader(self) -> None:
        """Refuse leader-only requests on a node that does not lead."""
        if not self.is_leader():
            raise GatewayFailure.not_leader()

    def change_membership(self, request: Request) -> None:
        """ADD / ASSIGN / REMOVE / TRANSFER through Raft."""
        self._cluster.change_membership(request)

    # ---------------------------------------------------- ConnectionHandler

    def _admin_policy(self, listener: socket.socket) -> AdminPolicy:
        """Who may change the cluster through ``listener``; logged for the operator."""
        trust_loopback = self._trust_loopback_admin
        if trust_loopback is None:
            trust_loopback = listens_locally(listener)
        needed = ["the cluster key"]
        if self.tls is not None and self.tls.admin_cas:
            needed.append("a client certificate of the admin CA")
        if trust_loopback:
            needed.append("a client on this host")
        log.info("membership requests need %s", " or ".join(needed))
        return AdminPolicy(self.cluster_key, trust_loopback=trust_loopback)

    def gateway(self, sock: socket.socket) -> Gateway:
        """A gateway for a new client connection, trusted as the admin policy says."""
        peer = Peer.of(sock)
        if self.tls is not None:  # its certificate is known once the handshake has run
            peer = dataclasses.replace(
                peer, certificate=functools.partial(self.tls.client_certificate, sock)
            )
        return Gateway(self, self._admin.session(peer))

    def adopt(self, sock: socket.socket, node_id: int, address: str, data: bytes) -> bool:
        """Hand a connection that sent CONNECT to Raft; False when there is none here."""
        return self._cluster.adopt(sock, node_id, address, data)

    # ----------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Bind the listener and start serving in background threads."""
        if self._listener is not None:
            raise RuntimeError("node already started")
        if self._metrics_address is not None and self._metrics_server is None:
            # First: a busy metrics port stops the node before anything started.
            self._metrics_server = MetricsServer(
                self._metrics_address, self.metrics, self.ready, self.healthy
            )
        family, sockaddr = parse_listen_address(self._requested_address)
        sock = bind(family, sockaddr)
        if family != socket.AF_UNIX:
            host = self._requested_address.rpartition(":")[0]
            self._listen_address = f"{host}:{sock.getsockname()[1]}"
            if self._advertise is None:
                self._address = self._listen_address
        try:
            self._check_raft_identity()
            self._check_join_seeds()
        except BaseException:
            sock.close()
            raise
        self._cluster = self._local_cluster()  # at the bound (or advertised) address
        self._admin = self._admin_policy(sock)
        if self.tls is not None:
            sock = self.tls.wrap_listener(sock)
        elif not is_loopback(self._listen_address):  # who can reach it: the bind decides
            log.warning(
                "node %s serves clients and Raft in plain text on a non-loopback address: "
                "anyone on the network can read the data (the cluster key only authenticates "
                "Raft traffic); use --tls-cert/--tls-key",
                self._describe(),
            )
        if self._advertise is None and is_wildcard(parse_node_address(self._listen_address)):
            # A replicated node was refused this (advertise.py); a standalone one keeps
            # working for clients that dial it, but LEADER names an address they cannot.
            log.warning(
                "node %s answers LEADER with a wildcard address, which clients on other "
                "machines cannot dial (Go clients follow it); give --advertise HOST:PORT",
                self._address,
            )
        self._listener = Listener(
            sock,
            self.limits,
            self,
            self._closing,
            name=self._listen_address,
            requests=self._requests,
        )
        self._directory.record_address(self._describe())
        self._listener.start()
        log.info("node %x serving on %s (data in %s)", self._id, self._describe(), self.data_dir)
        if self._metrics_server is not None:
            self._metrics_server.start()  # /healthz and /readyz answer during a join too
        if self.cluster_key is not None:
            self._start_replication(self.cluster_key)

    def _start_replication(self, key: bytes) -> None:
        directory = self._directory
        joiner = self._joiner(key)
        learned: str | None = None
        if directory.fresh and self.join:
            learned = joiner.prove_key(self.join)
        if not directory.key_recorded:
            origin = "upgrade" if not directory.fresh else "join" if self.join else "bootstrap"
            if origin == "bootstrap":
                learned = new_cluster_id()
            directory.record_cluster(origin, learned)
        if directory.cluster_id is None:
            log.info(
                "this node's data directory records no cluster id yet (made by an older "
                "version): it takes the one its cluster's log names"
            )
        else:
            log.info("member of cluster %s", directory.cluster_id)
        configuration = InitialConfiguration.load(self.data_dir)
        if configuration is None:
            # The first node of a cluster starts alone, as a voter; a joining node
            # with the cluster's voters, as none (its role comes from the log).
            found = joiner.voters_of(self.join) if self.join else []
            voters = [a for a in found if a != self._address]
            configuration = InitialConfiguration(
                tuple(voters), voting=not self.join, address=self._address
            )
            configuration.save(self.data_dir)
        cluster = Replicating.launch(
            self.engine,
            node_id=self._id,
            address=self._address,
            data_dir=self.data_dir,
            configuration=configuration,
            key=key,
            tls=self.tls,
            snapshot_entries=self._raft_tuning[0],
            read_lease=self._raft_tuning[1],
            cluster_id=lambda: directory.cluster_id,
            on_cluster_id=self._adopt_cluster_id,
        )
        self._cluster = cluster
        if self.join:
            joiner.join(self.join)
        else:
            self._background("rejoin", joiner.rejoin, cluster.peers, self._closing)
        self._background("register", cluster.register_self, self._closing)
        candidate = directory.cluster_id or new_cluster_id()
        self._background("cluster-id", cluster.register_cluster_id, candidate, self._closing)
        self._background("roles", cluster.keep_voters, self._join_roles[0], self._closing)

    def _joiner(self, key: bytes) -> Joiner:
        directory = self._directory
        return Joiner(
            self._id,
            self._address,
            key,
            self.tls,
            *self._join_roles,
            cluster_id=lambda: directory.cluster_id,
        )

    def _check_join_seeds(self) -> None:
        """Refuse a member of one cluster started with ``--join`` to another (join.py).

        Before the node writes anything: its directory stays as it was.
        """
        key, directory = self.cluster_key, self._directory
        if key is None or not self.join or directory.fresh or directory.cluster_id is None:
            return
        self._joiner(key).check_seeds(self.join)

    def _adopt_cluster_id(self, cluster_id: str) -> None:
        """The log (or a snapshot) names the cluster's id: record it (Raft's thread)."""
        try:
            if self._directory.adopt_cluster_id(cluster_id):
                log.info("member of cluster %s (recorded from the Raft log)", cluster_id)
        except ClusterIdMismatch as exc:
            # The transport keeps the two clusters apart; only an edited cluster.json or a
            # directory copied between clusters gets here.
            log.error(
                "the Raft log names cluster %s but %s; stop this node and find out which "
                "cluster its directory belongs to",
                cluster_id,
                exc,
            )

    @property
    def cluster_id(self) -> str | None:
        """The id of this node's cluster (None: standalone, or not known yet)."""
        return self._directory.cluster_id

    def _check_raft_identity(self) -> None:
        """Refuse to restart a member under another address than its cluster knows.

        The address (advertised, else listened on) is the member's identity in
        the Raft configuration: peers dial it and the Raft handshake
        authenticates it.  A member restarted under another one is a stranger
        its cluster keeps waiting for the old one in its place.  The listening
        address alone may change (say, to bind every interface) as long as the
        advertised one stays.
        """
        if self.cluster_key is None:
            return
        configuration = InitialConfiguration.load(self.data_dir)
        recorded = None if configuration is None else configuration.address
        if recorded is not None and recorded != self._address:
            raise ClusterIdentityError(
                f"data directory {str(self.data_dir.absolute())!r} belongs to the member its "
                f"cluster knows as {recorded}, not {self._address}: a member's address is its "
                f"identity in the Raft configuration and cannot change; start it with -a "
                f"{recorded} or --advertise {recorded}, or remove the member from the cluster "
                "and join with a new data directory"
            )

    @staticmethod
    def _background(name: str, target: Callable[..., None], *args: object) -> None:
        threading.Thread(target=target, args=args, name=f"dqlitepy-{name}", daemon=True).start()

    def close(self) -> None:
        """Stop serving: hand leadership over, close every connection, then wait."""
        self._closing.set()  # from now on /healthz and /readyz answer 503
        self._cluster.close()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        metrics, self._metrics_server = self._metrics_server, None
        if metrics is not None:
            metrics.close()  # last: probes see "shutting down" during the hand-over
        self._directory.close()
