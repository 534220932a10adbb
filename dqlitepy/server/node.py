"""A dqlitepy node's server: the listener, one thread per client connection, and node state.

The listener accepts TCP (``host:port``) or abstract Unix (``@name``) connections.
Each connection gets a thread that drives a sans-I/O
:class:`~dqlitepy.wire.ServerConnection` and a :class:`~dqlitepy.server.gateway.Gateway`.
A peer that breaks the framing (unknown protocol version, a 0-word or oversized
message) is disconnected; a request that is framed correctly but cannot be
served is answered with a FAILURE and the connection goes on (``design.md`` §4).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

import cbor2

from ..engine import Engine, Session, StatementInfo
from ..replication.replicator import (
    DEFAULT_SNAPSHOT_ENTRIES,
    PeerHealth,
    ReplicationError,
    Replicator,
)
from ..replication.transport import MIN_KEY_SIZE, FrameMacError, SessionError, check_cluster_key
from ..wire import (
    NEED_DATA,
    NONCE_SIZE,
    AddRequest,
    AssignRequest,
    AuthChallengeRequest,
    AuthProofRequest,
    BadRequest,
    ChallengeResponse,
    ClientConnection,
    ClusterRequest,
    ConnectRequest,
    FailureResponse,
    Handshake,
    LeaderRequest,
    MessageTooLarge,
    NodeInfo,
    NodeRole,
    ProtocolError,
    RemoveRequest,
    Request,
    ServerConnection,
    ServerResponse,
    ServersResponse,
    TransferRequest,
    admin_proof,
    encode_message,
)
from ..wire.framing import DEFAULT_MAX_MESSAGE_SIZE
from .auth import AdminPolicy, Peer, listens_locally
from .datadir import ClusterKeyRejected, DataDirectory
from .gateway import Gateway, GatewayFailure, RowsChunk
from .limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_MEMORY,
    DEFAULT_REQUEST_TIMEOUT,
    SMALL_BODY,
    ConnectionTable,
    Limits,
    MemoryBudget,
    Phase,
    Slot,
)
from .membership import NotCaughtUp, caught_up, promote_to_voter
from .replicated import Replicated
from .tls import PLAINTEXT_REFUSED_CODE, NodeTLS, is_loopback, is_tls_mismatch

__all__ = ["BOOTSTRAP_ID", "NodeServer", "parse_listen_address"]

log = logging.getLogger("dqlitepy.server")

#: The id go-dqlite's app gives the first node of a cluster; we do the same.
BOOTSTRAP_ID = 0x2DC171858C3155BE

_IDENTITY_FILE = "node-identity.cbor"
_IDENTITY_VERSION = 1
_RECV_SIZE = 256 * 1024
_SQLITE_BUSY = 5
_NOT_LEADER = 10250
# The requests that change the cluster: a node serves them only to a trusted connection.
_MEMBERSHIP = (AddRequest, AssignRequest, RemoveRequest, TransferRequest)
# accept() errors that leave the listener usable, and the pause before trying again.
_ACCEPT_RETRY = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EPROTO}
)
_ACCEPT_RETRY_DELAY = 0.1
# Out of descriptors, after shutting a connection down: time for its thread to close it.
_EVICTED_CLOSE_DELAY = 0.005
# Warnings a flood of clients would repeat are logged at most this often (seconds).
_LOG_EVERY = 60.0
_SQLITE_ERROR = 1
# A connection waiting for request memory looks this often whether it should stop waiting.
_RESERVE_SLICE = 0.25


def _nothing() -> None:
    """A single node's statements need no ``begun`` signal."""


def parse_listen_address(address: str) -> tuple[int, str | tuple[str, int]]:
    """Split ``host:port`` / ``[v6]:port`` / ``@name`` into a family and socket address."""
    if address.startswith("@"):
        if len(address) < 2:
            raise ValueError(f"invalid abstract socket address {address!r}")
        return socket.AF_UNIX, "\0" + address[1:]
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        raise ValueError(f"invalid node address {address!r}: expected host:port or @name")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], int(port))
    return socket.AF_INET, (host, int(port))


def _load_identity(data_dir: Path, bootstrap: bool) -> int:
    path = data_dir / _IDENTITY_FILE
    if path.exists():
        with path.open("rb") as f:
            record = cbor2.load(f)
        if not isinstance(record, dict) or record.get("version") != _IDENTITY_VERSION:
            raise ValueError(f"unrecognised node identity file {str(path)!r}")
        node_id = record["id"]
        if not isinstance(node_id, int):
            raise ValueError(f"bad node id in {str(path)!r}")
        return node_id
    node_id = BOOTSTRAP_ID if bootstrap else secrets.randbits(63) | 1
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        cbor2.dump({"version": _IDENTITY_VERSION, "id": node_id}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return node_id


def _initial_configuration(
    data_dir: Path, address: str, join: Sequence[str], tls: NodeTLS | None = None
) -> tuple[list[str], bool]:
    """The voters Raft starts with, and whether this node is one of them.

    Kept, because a restart must start from the same configuration: the first
    node of a cluster starts alone, as a voter; a joining node starts with the
    voters the cluster has when it joins, as none (its role comes from the log).
    """
    path = data_dir / "raft" / "initial-voters.cbor"
    if path.exists():
        with path.open("rb") as f:
            record = cbor2.load(f)
        return [str(a) for a in record["voters"]], bool(record.get("voting", True))
    voters = [a for a in _cluster_voters(join, tls=tls) if a != address] if join else []
    voting = not join
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        cbor2.dump({"version": 1, "voters": voters, "voting": voting}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return voters, voting


def _call(
    address: str,
    request: Request,
    timeout: float = 10.0,
    key: bytes | None = None,
    tls: NodeTLS | None = None,
) -> Any:
    """One request to another node over the client protocol (used to join).

    With ``key``, a membership request is preceded by the proof of the key on the
    same connection (``wire/auth.py``): the leader may not trust this node's address.
    """
    family, sockaddr = parse_listen_address(address)
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        sock.settimeout(timeout)
        sock.connect(sockaddr)
        if tls is not None:  # wrapping detaches the plain socket: close the TLS one
            sock = stack.enter_context(tls.dial(sock, address.rpartition(":")[0].strip("[]")))
        conn = ClientConnection()
        handshake = conn.handshake()

        def ask(request: Request) -> Any:
            nonlocal handshake
            sock.sendall(handshake + conn.send(request))
            handshake = b""
            while (event := conn.next_event()) is NEED_DATA:
                data = sock.recv(_RECV_SIZE)
                if not data:
                    raise OSError(f"{address} closed the connection")
                conn.receive_data(data)
            if isinstance(event, FailureResponse):
                raise GatewayFailure(event.code, event.message)
            return event

        if key is not None and isinstance(request, _MEMBERSHIP):
            challenge = ask(AuthChallengeRequest())
            if not isinstance(challenge, ChallengeResponse):
                raise ProtocolError(f"{address} answered AUTH_CHALLENGE with {challenge!r}")
            nonce = secrets.token_bytes(NONCE_SIZE)
            ask(AuthProofRequest(nonce, admin_proof(key, challenge.nonce, nonce)))
        return ask(request)


def _leader_of(join: Sequence[str], deadline: float, tls: NodeTLS | None = None) -> str:
    last: Exception | None = None
    while True:
        mismatched = 0
        for address in join:
            try:
                leader = _call(address, LeaderRequest(), tls=tls)
            except (OSError, ProtocolError, GatewayFailure) as exc:
                last = exc  # e.g. a TLS certificate the other side refused: worth telling
                if is_tls_mismatch(exc) or (
                    isinstance(exc, GatewayFailure) and exc.code == PLAINTEXT_REFUSED_CODE
                ):
                    mismatched += 1
                continue
            if isinstance(leader, ServerResponse) and leader.address:
                return leader.address
        if join and mismatched == len(join):
            # Asking again changes nothing: the operator must fix the certificates.
            raise RuntimeError(f"TLS does not match the cluster's ({', '.join(join)}): {last}")
        if time.monotonic() > deadline:
            why = f" (last error: {last})" if last is not None else ""
            raise RuntimeError(f"no leader found through {', '.join(join)}{why}")
        time.sleep(0.2)


def _cluster_voters(
    join: Sequence[str], timeout: float = 30.0, tls: NodeTLS | None = None
) -> list[str]:
    leader = _leader_of(join, time.monotonic() + timeout, tls)
    servers = _call(leader, ClusterRequest(1), tls=tls)
    assert isinstance(servers, ServersResponse)
    return [n.address for n in servers.servers if n.role == NodeRole.VOTER]


def _prove_key(
    join: Sequence[str],
    key: bytes,
    node_id: int,
    address: str,
    timeout: float = 30.0,
    tls: NodeTLS | None = None,
) -> None:
    """Check that the cluster holds ``key`` before asking it to add this node.

    A node with another key must never be added: the cluster would count a
    member that can never reach it (a voter that breaks its quorum).
    """
    deadline = time.monotonic() + timeout
    while True:
        leader = _leader_of(join, deadline, tls)
        try:
            check_cluster_key(
                leader,
                key,
                node_id=node_id,
                own_address=address,
                ssl_context=None if tls is None else tls.client,
            )
            return
        except FrameMacError as exc:
            raise ClusterKeyRejected(
                f"the cluster rejected this node's key: its leader {leader} holds another "
                "cluster key; give this node the key of the cluster it joins"
            ) from exc
        except (OSError, SessionError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not check the cluster key with {leader}: {exc}") from exc
            time.sleep(0.5)


def _join(
    join: Sequence[str],
    node_id: int,
    address: str,
    voters: int,
    standbys: int,
    timeout: float = 30.0,
    *,
    key: bytes | None = None,
    tls: NodeTLS | None = None,
) -> None:
    """Ask the leader to add this node and give it a role, as go-dqlite's app does.

    The node joins as a spare (ADD), then becomes a voter while the cluster has
    fewer than ``voters`` of them, else a standby while it has fewer than
    ``standbys``.  Membership requests carry the proof of ``key``.  A leader
    makes a node a voter only once it has caught up (``membership.py``): one
    still catching up when ``timeout`` runs out has joined as a standby, which
    the leader promotes once it has caught up if voters are missing.
    """
    deadline = time.monotonic() + timeout
    while True:
        leader = _leader_of(join, deadline, tls)
        mine: int | None = None
        try:
            try:
                _call(leader, AddRequest(node_id, address), key=key, tls=tls)
            except GatewayFailure as exc:
                if "already in use" not in exc.message:
                    raise
            servers = _call(leader, ClusterRequest(1), tls=tls)
            assert isinstance(servers, ServersResponse)
            roles = [n.role for n in servers.servers if n.address != address]
            mine = next((n.role for n in servers.servers if n.address == address), None)
            if roles.count(NodeRole.VOTER) < voters:
                wanted = NodeRole.VOTER
            elif roles.count(NodeRole.STANDBY) < standbys:
                wanted = NodeRole.STANDBY
            else:
                wanted = NodeRole.SPARE
            if mine is not None and mine <= wanted:
                return  # roles rank voter < standby < spare: never demoted by a rejoin
            _call(leader, AssignRequest(node_id, wanted), timeout=timeout, key=key, tls=tls)
            log.info("joined the cluster through %s as %s", leader, wanted.name.lower())
            return
        except (OSError, ProtocolError, GatewayFailure) as exc:
            if time.monotonic() > deadline:
                if (
                    isinstance(exc, GatewayFailure)
                    and exc.code == _SQLITE_BUSY
                    and mine == NodeRole.STANDBY
                ):
                    log.info("joined the cluster through %s as a standby: %s", leader, exc)
                    return
                raise RuntimeError(f"could not join through {leader}: {exc}") from exc
            time.sleep(0.5)


#: How often a leader checks the roles of the cluster.
ROLES_CHECK_INTERVAL = 1.0
#: A voter the leader has not heard from for this long is replaced by a standby.
OFFLINE_AFTER = 10.0


def next_role_change(
    roles: dict[str, int], health: Mapping[str, PeerHealth], leader: str, voters: int
) -> tuple[str, NodeRole] | None:
    """The next role change a leader makes to keep ``voters`` voters online, if any.

    Like go-dqlite's app, restricted to what Raft tells the leader: a standby
    that has caught up (``membership.caught_up``) is promoted while voters are
    missing or one is offline (silent for :data:`OFFLINE_AFTER`); then the
    offline voter is made a spare. One change at a time, promotion first, so the
    quorum never depends on the offline node.
    """
    current = [a for a, r in roles.items() if r == NodeRole.VOTER]
    offline = sorted(
        a for a in current if a != leader and (a not in health or health[a].silent > OFFLINE_AFTER)
    )
    ready = sorted(
        a for a, r in roles.items() if r == NodeRole.STANDBY and caught_up(health.get(a))
    )
    if offline and len(current) > voters:
        return offline[0], NodeRole.SPARE
    if ready and (len(current) < voters or offline):
        return ready[0], NodeRole.VOTER
    return None


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
            may stall before the client takes it in.
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
    ) -> None:
        parse_listen_address(address)
        self.limits = Limits(
            max_connections=max_connections,
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
        self.tls = tls
        self._requested_address = address
        self._address = address
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Locked and checked before anything reads or changes the directory (datadir.py).
        self._directory = DataDirectory(self.data_dir, address=address, cluster_key=cluster_key)
        self.join = list(join)
        try:
            self._id = _load_identity(self.data_dir, bootstrap=not self.join)
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
        self._table: ConnectionTable[socket.socket] = ConnectionTable(max_connections)
        self._budget = MemoryBudget(request_memory)
        self._limit_warned = -math.inf
        self.weight = 0
        self.failure_domain = 0
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._closing = threading.Event()
        # Replication runs when the node is given a cluster key (the key every
        # member shares); without one it is a single node committing locally.
        self.cluster_key = cluster_key
        self.replicated: Replicated | None = None
        self._trust_loopback_admin = trust_loopback_admin
        # Who may change the cluster; set once the listener is bound (start()).
        self._admin = AdminPolicy(cluster_key, trust_loopback=False)

    # ------------------------------------------------------------ identity

    @property
    def id(self) -> int:
        """This node's Raft id."""
        return self._id

    @property
    def address(self) -> str:
        """The address clients dial (with the real port once started)."""
        return self._address

    # ------------------------------------------------------------- NodeContext

    def leader(self) -> tuple[int, str]:
        """The leader's id and address, or ``(0, "")`` when none is known."""
        if self.replicated is None:
            # A replicated node that has not started Raft yet knows no leader.
            return (self._id, self._address) if self.cluster_key is None else (0, "")
        address = self.replicated.replicator.leader_address()
        if not address:
            return 0, ""
        if address == self._address:
            return self._id, address
        return self.replicated.members.get(address, 0), address

    def is_leader(self) -> bool:
        """True when this node leads (and, replicated, has caught up)."""
        if self.replicated is None:
            return self.cluster_key is None
        return self.replicated.is_ready_leader()

    def cluster(self) -> list[NodeInfo]:
        """The members with their roles."""
        if self.replicated is None:
            return [NodeInfo(self._id, self._address, NodeRole.VOTER)]
        roles = self.replicated.replicator.roles()
        members = dict(self.replicated.members)
        nodes = [
            NodeInfo(node_id, address, NodeRole(roles.get(address, NodeRole.SPARE)))
            for address, node_id in sorted(members.items())
        ]
        # A voter the members' records do not name yet (the first node, briefly).
        nodes.extend(
            NodeInfo(0, a, NodeRole(r)) for a, r in sorted(roles.items()) if a not in members
        )
        return nodes

    def open_session(self, name: str) -> Session:
        """Open a session on database ``name``."""
        if self.replicated is not None:
            return self.replicated.open_session(name)
        if self.cluster_key is not None:
            # Still starting: serving the local files alone would be serving as a standalone node.
            raise GatewayFailure(_NOT_LEADER, "not leader")
        return self.engine.session(name)

    def close_session(self, name: str, session: Session) -> None:
        """Close a session opened by :meth:`open_session`."""
        if self.replicated is not None:
            self.replicated.close_session(name, session)
        else:
            session.close()

    def statement(
        self, owner: object, name: str, session: Session, info: StatementInfo, timeout: float
    ) -> AbstractContextManager[Callable[[], None]]:
        """The write path: replicated commits go through Raft before the reply.

        A single node commits locally: SQLite (``synchronous=FULL``) made the
        commit durable before the statement returns, so there is nothing more.
        """
        if self.replicated is None:
            return contextlib.nullcontext(_nothing)
        return self.replicated.statement(owner, name, session, info, timeout)

    def dump(self, name: str) -> list[tuple[str, bytes]]:
        """Return the files of database ``name``."""
        if self.replicated is not None:
            return self.replicated.dump(name)
        return self.engine.dump(name)

    def storage_failed(self) -> None:
        """SQLite reported a full disk or an I/O error: have the Raft log's storage probed.

        A replicated node whose probe fails steps down until its storage works
        again (``docs/replication.md``, "Disk full and I/O errors").
        """
        if self.replicated is not None:
            self.replicated.replicator.check_storage()

    def require_leader(self) -> None:
        """Refuse leader-only requests on a node that does not lead."""
        if not self.is_leader():
            raise GatewayFailure(_NOT_LEADER, "not leader")

    def change_membership(self, request: Request) -> None:
        """ADD / ASSIGN / REMOVE / TRANSFER through Raft."""
        if self.replicated is None:
            raise GatewayFailure(1, "membership changes need a replicated cluster")
        replicated = self.replicated
        try:
            if isinstance(request, AddRequest):
                members = dict(replicated.members)
                if request.address in members or request.node_id in members.values():
                    raise GatewayFailure(1, "server ID already in use")
                replicated.record_member(request.node_id, request.address)
                return
            address = self._address_of(request)
            roles = replicated.replicator.roles()
            if isinstance(request, AssignRequest):
                role = NodeRole.VOTER if request.role is None else NodeRole(request.role)
                if role == roles.get(address, NodeRole.SPARE):
                    raise GatewayFailure(1, "server role is not valid")
                if address == self._address:
                    raise GatewayFailure(1, "the leader cannot change its own role")
                if role == NodeRole.VOTER:
                    promote_to_voter(replicated.replicator, address)  # once caught up
                else:
                    replicated.replicator.set_role(address, int(role))
            elif isinstance(request, RemoveRequest):
                if address == self._address:
                    raise GatewayFailure(1, "the leader cannot remove itself")
                if address in roles:
                    replicated.replicator.set_role(address, None)
                replicated.forget_member(address)
            elif isinstance(request, TransferRequest):
                if request.node_id != 0 and roles.get(address) != NodeRole.VOTER:
                    raise GatewayFailure(1, "server role is not valid: only voters can lead")
                replicated.replicator.transfer(None if request.node_id == 0 else address)
        except NotCaughtUp as exc:
            raise GatewayFailure(_SQLITE_BUSY, str(exc)) from exc
        except ReplicationError as exc:
            raise GatewayFailure(1, str(exc)) from exc

    def _capture_snapshot(self) -> Callable[[BinaryIO], None]:
        assert self.replicated is not None
        return self.replicated.capture_snapshot()

    def _restore(self, source: BinaryIO) -> None:
        assert self.replicated is not None
        self.replicated.restore(source)

    def _address_of(self, request: Request) -> str:
        node_id = getattr(request, "node_id", 0)
        assert self.replicated is not None
        for address, member_id in dict(self.replicated.members).items():
            if member_id == node_id:
                return address
        if node_id == self._id:
            return self._address
        if isinstance(request, TransferRequest) and node_id == 0:
            return ""
        raise GatewayFailure(1, "server ID is not valid")

    # ----------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Bind the listener and start serving in background threads."""
        if self._listener is not None:
            raise RuntimeError("node already started")
        family, sockaddr = parse_listen_address(self._requested_address)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            # A burst of clients past a short backlog waits a second for SYN retries.
            sock.listen(socket.SOMAXCONN)
        except OSError:
            sock.close()
            raise
        if family != socket.AF_UNIX:
            host = self._requested_address.rpartition(":")[0]
            self._address = f"{host}:{sock.getsockname()[1]}"
        trust_loopback = self._trust_loopback_admin
        if trust_loopback is None:
            trust_loopback = listens_locally(sock)
        self._admin = AdminPolicy(self.cluster_key, trust_loopback=trust_loopback)
        log.info(
            "membership requests need %s",
            "the cluster key or a client on this host" if trust_loopback else "the cluster key",
        )
        if self.tls is not None:
            sock = self.tls.wrap_listener(sock)
        elif not is_loopback(self._address):
            log.warning(
                "node %s serves clients and Raft in plain text on a non-loopback address: "
                "anyone on the network can read the data (the cluster key only authenticates "
                "Raft traffic); use --tls-cert/--tls-key",
                self._address,
            )
        self._listener = sock
        self._directory.record_address(self._address)
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"dqlitepy-accept-{self._address}", daemon=True
        )
        self._accept_thread.start()
        log.info("node %x serving on %s (data in %s)", self._id, self._address, self.data_dir)
        if self.cluster_key is not None:
            self._start_replication()

    def _start_replication(self) -> None:
        assert self.cluster_key is not None
        key = self.cluster_key
        directory = self._directory
        if directory.fresh and self.join:
            _prove_key(self.join, key, self._id, self._address, tls=self.tls)
        if not directory.key_recorded:
            origin = "upgrade" if not directory.fresh else "join" if self.join else "bootstrap"
            directory.record_cluster(origin)
        voters, voting = _initial_configuration(self.data_dir, self._address, self.join, self.tls)

        def factory(
            apply: Callable[[int, bytes], Any], on_leadership: Callable[[bool], None]
        ) -> Replicator:
            return Replicator(
                self._address,
                self.data_dir,
                voters,
                voting=voting,
                node_id=self._id,
                cluster_key=key,
                apply=apply,
                on_leadership=on_leadership,
                snapshot=lambda: self._capture_snapshot(),
                restore=lambda source: self._restore(source),
                snapshot_entries=int(
                    os.environ.get("DQLITEPY_SNAPSHOT_ENTRIES") or DEFAULT_SNAPSHOT_ENTRIES
                ),
                ssl_context=None if self.tls is None else self.tls.client,
            )

        self.replicated = Replicated(self.engine, factory, self._id)
        self.replicated.start()
        if self.join:
            _join(self.join, self._id, self._address, *self._join_roles, key=key, tls=self.tls)
        else:
            threading.Thread(target=self._rejoin, name="dqlitepy-rejoin", daemon=True).start()
        threading.Thread(
            target=self.replicated.register_self,
            args=(self._id, self._address, self._closing),
            name="dqlitepy-register",
            daemon=True,
        ).start()
        threading.Thread(target=self._balance_roles, name="dqlitepy-roles", daemon=True).start()

    def _rejoin(self) -> None:
        """Ask the other members for a role again, as ``--join`` does on every start.

        A restarted member may have been replaced while it was away (made a
        spare): the members its log names take it back as a standby.
        """
        assert self.replicated is not None
        deadline = time.monotonic() + 10
        peers: list[str] = []
        while not peers and not self._closing.wait(0.2):
            # The log's configuration is loaded on Raft's first ticks.
            peers = [a for a in self.replicated.replicator.roles() if a != self._address]
            if time.monotonic() > deadline:
                return  # a cluster of one
        if not peers:
            return
        try:
            _join(
                peers,
                self._id,
                self._address,
                *self._join_roles,
                timeout=60,
                key=self.cluster_key,
                tls=self.tls,
            )
        except Exception as exc:
            log.warning("could not rejoin through %s: %s", ", ".join(peers), exc)

    def _balance_roles(self) -> None:
        """While leading, replace offline voters with standbys (see :func:`next_role_change`)."""
        while not self._closing.wait(ROLES_CHECK_INTERVAL):
            replicated = self.replicated
            if replicated is None or not replicated.is_ready_leader():
                continue
            replicator = replicated.replicator
            try:
                change = next_role_change(
                    replicator.roles(), replicator.peer_health(), self._address, self._join_roles[0]
                )
                if change is not None:
                    address, role = change
                    log.info("making %s a %s", address, role.name.lower())
                    replicator.set_role(address, int(role))
            except ReplicationError as exc:
                log.info("could not adjust the roles: %s", exc)

    def close(self) -> None:
        """Stop serving: hand leadership over, close every connection, then wait."""
        self._closing.set()
        if self.replicated is not None:
            self.replicated.close()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=10)
        with self._lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in connections:
            thread.join(timeout=10)
        self._directory.close()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        failing_since = -math.inf
        while not self._closing.is_set():
            try:
                sock, _ = listener.accept()
            except OSError as exc:
                if self._closing.is_set():
                    return
                if exc.errno not in _ACCEPT_RETRY:
                    log.error("the listener failed: %s", exc)
                    return
                # Out of descriptors or memory, or a peer gone before its connection
                # was taken: the listener is fine, and serves again once clients leave.
                now = time.monotonic()
                if now - failing_since > _LOG_EVERY:
                    log.warning("cannot accept connections: %s", exc)
                failing_since = now
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    # Free a descriptor the way a full table frees a slot.
                    evicted = self._table.evict()
                    if evicted is not None:
                        self._shed(evicted)
                        self._closing.wait(_EVICTED_CLOSE_DELAY)
                        continue
                self._closing.wait(_ACCEPT_RETRY_DELAY)
                continue
            if sock.family != socket.AF_UNIX:
                # Fails on some systems when the peer has already reset.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closing.is_set():
                    sock.close()
                    continue
                slot, evicted = self._table.admit(sock)
                if slot is None:
                    thread = None
                else:
                    thread = threading.Thread(
                        target=self._serve, args=(sock, slot), name="dqlitepy-conn", daemon=True
                    )
                    self._connections[sock] = thread
            if evicted is not None:
                self._warn_limit("closing the connection idle longest to admit a new one")
                self._shed(evicted)
            if thread is None:
                self._warn_limit("refusing a connection: every connection is serving a request")
                _fail_and_close(
                    sock,
                    f"too many connections: all {self.limits.max_connections} are serving "
                    "requests; try again later",
                )
                sock.close()
                continue
            thread.start()

    def _warn_limit(self, what: str) -> None:
        now = time.monotonic()
        if now - self._limit_warned > _LOG_EVERY:
            self._limit_warned = now
            log.warning(
                "%d client connections, the limit (--max-connections): %s (logged once a minute)",
                self.limits.max_connections,
                what,
            )

    @staticmethod
    def _shed(slot: Slot[socket.socket]) -> None:
        """Make an evicted connection's thread stop (it closes the socket itself)."""
        log.debug("closing a %s connection to admit a new one", slot.phase.value)
        with contextlib.suppress(OSError):
            slot.handle.shutdown(socket.SHUT_RDWR)

    def _reserve(
        self, budget: MemoryBudget, size: int, deadline: float, slot: Slot[socket.socket]
    ) -> bool:
        """Reserve request memory by ``deadline``, giving up early if the node closes or
        the connection loses its slot (nothing else would wake the wait)."""
        while True:
            left = deadline - time.monotonic()
            if budget.acquire(size, min(left, _RESERVE_SLICE)):
                return True
            if left <= _RESERVE_SLICE or slot.evicted or self._closing.is_set():
                return False

    def _serve(self, sock: socket.socket, slot: Slot[socket.socket]) -> None:
        limits = self.limits
        table = self._table
        budget = self._budget
        conn = ServerConnection(limits.max_message_size)
        gateway = Gateway(self, self._admin.session(Peer.of(sock)))
        gone = False
        handed_over = False
        read_ahead = 0
        # Request memory reserved for the message being received or served.
        reserved = 0
        in_transaction = False

        def interrupt_requested() -> bool:
            # Runs on this thread while a statement runs: take in whatever the
            # client sent meanwhile and stop if it is an INTERRUPT, or if the
            # client went away (nobody will read the result).  At most
            # _RECV_SIZE bytes are taken in ahead of the requests being served,
            # or a client streaming during a long statement fills our memory.
            nonlocal gone, read_ahead
            if gone:
                return True
            if read_ahead >= _RECV_SIZE:
                # Read no further ahead; a reset connection still shows in SO_ERROR.
                gone = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
                return gone or conn.interrupt_pending()
            try:
                # Not select(): it fails on descriptors past FD_SETSIZE (1024).
                data = sock.recv(_RECV_SIZE - read_ahead, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return conn.interrupt_pending()  # nothing new from the client
            except OSError:
                gone = True
                return True
            if not data:
                gone = True
                return True
            read_ahead += len(data)
            conn.receive_data(data)
            return conn.interrupt_pending()

        gateway.set_interrupt_check(interrupt_requested)
        timeouts = _SocketTimeouts(sock)
        try:
            # Kernel timeouts, not settimeout(): the socket stays blocking, so the
            # MSG_DONTWAIT reads above never wait.  A response may stall this long.
            timeouts.send(limits.request_timeout)
            while not self._closing.is_set():
                event = conn.next_event()
                if event is NEED_DATA:
                    read_ahead = 0  # what was read ahead has been served
                    incoming = conn.incoming()
                    if incoming is None:
                        if not table.enter(slot, Phase.IDLE, in_transaction=in_transaction):
                            return  # lost its slot to a newcomer
                        timeout = limits.idle_timeout
                    else:
                        if not table.enter(slot, Phase.RECEIVING):
                            return  # lost its slot: the request did not run
                        deadline = slot.since + limits.request_timeout
                        size = incoming.body_size
                        if size is not None and size > SMALL_BODY and not reserved:
                            if not self._reserve(budget, size, deadline, slot):
                                if not (slot.evicted or self._closing.is_set()):
                                    _fail_and_close(sock, _no_memory(size, budget), conn.legacy)
                                return
                            reserved = size
                        timeout = deadline - time.monotonic()
                    data = timeouts.recv(_RECV_SIZE, timeout)
                    if data is None:  # timed out
                        if incoming is None:
                            log.debug("closing a connection idle for %s s", timeout)
                            return
                        message = (
                            f"request not received within {limits.request_timeout:g} s "
                            "(--request-timeout)"
                        )
                        _fail_and_close(sock, message, conn.legacy)
                        return
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, Handshake):
                    continue
                elif gone:
                    return
                elif isinstance(event, BadRequest):
                    sock.sendall(conn.send(FailureResponse(event.code, event.message)))
                    budget.release(reserved)
                    reserved = 0
                elif isinstance(event, ConnectRequest):
                    if self.replicated is None:
                        return  # no Raft here: refuse by closing
                    timeouts.clear()  # Raft's transport sets its own
                    self.replicated.replicator.adopt(
                        sock, event.node_id, event.address, conn.trailing_data()
                    )
                    handed_over = True
                    return
                else:
                    assert isinstance(event, Request)
                    if not table.enter(slot, Phase.HANDLING):
                        return  # lost its slot while the request arrived: it did not run
                    for item in gateway.handle(event):
                        if isinstance(item, RowsChunk):
                            sock.sendall(conn.send_encoded_rows(item.data, done=item.done))
                            if not item.done and interrupt_requested():
                                gateway.interrupt()
                        else:
                            sock.sendall(conn.send(item))
                    budget.release(reserved)
                    reserved = 0
                    in_transaction = _in_transaction(gateway)
        except MessageTooLarge as exc:
            _fail_and_close(sock, f"{exc} (--max-message-size)", conn.legacy)
        except ProtocolError as exc:
            log.debug("closing a client connection: %s", exc)
        except BlockingIOError:
            log.debug(
                "closing a client connection that took no response for %g s",
                limits.request_timeout,
            )
        except OSError as exc:
            log.debug("client connection failed: %s", exc)
        finally:
            budget.release(reserved)
            table.remove(slot)
            gateway.close()
            with self._lock:
                self._connections.pop(sock, None)
            if not handed_over:
                sock.close()


def _in_transaction(gateway: Gateway) -> bool:
    """True if the connection's session has a transaction open.

    The gateway keeps its session to itself; this runs on the connection's own
    thread, between requests, where reading it is safe.
    """
    session = getattr(gateway, "_session", None)
    return session is not None and bool(session.in_transaction)


def _no_memory(size: int, budget: MemoryBudget) -> str:
    return (
        f"request of {size} bytes refused: the node's request memory ({budget.capacity} bytes, "
        "--request-memory) stayed in use by other requests; try again later"
    )


def _fail_and_close(sock: socket.socket, message: str, legacy: bool = False) -> None:
    """Send a FAILURE with ``message`` if the socket takes it at once, then shut it down.

    It answers whatever the client sent or is sending.  A client still sending its
    request reads it only if it reads before the shutdown resets the connection:
    the shutdown is what enforces the limit.  The caller closes the socket.
    """
    log.debug("closing a client connection: %s", message)
    failure = encode_message(FailureResponse(_SQLITE_ERROR, message), legacy=legacy)
    with contextlib.suppress(OSError):
        sock.send(failure, socket.MSG_DONTWAIT)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _SocketTimeouts:
    """SO_RCVTIMEO / SO_SNDTIMEO on a blocking socket (0 = none), set only when changed."""

    _TIMEVAL = struct.Struct("@ll")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._receive: float | None = None

    def _set(self, option: int, seconds: float | None) -> None:
        if seconds is None:
            value = self._TIMEVAL.pack(0, 0)
        else:
            micros = max(1, math.ceil(seconds * 1e6))  # 0 would mean "no timeout"
            value = self._TIMEVAL.pack(*divmod(micros, 1_000_000))
        self._sock.setsockopt(socket.SOL_SOCKET, option, value)

    def send(self, seconds: float | None) -> None:
        self._set(socket.SO_SNDTIMEO, seconds)

    def recv(self, size: int, seconds: float | None) -> bytes | None:
        """``recv(size)`` waiting at most ``seconds`` (None: forever); None if it timed out."""
        if seconds is not None and seconds <= 0:
            return None
        if seconds != self._receive:
            self._set(socket.SO_RCVTIMEO, seconds)
            self._receive = seconds
        try:
            return self._sock.recv(size)
        except BlockingIOError:
            return None

    def clear(self) -> None:
        self._set(socket.SO_RCVTIMEO, None)
        self._set(socket.SO_SNDTIMEO, None)
        self._receive = None
