"""Cluster administration: one method per wire request (``docs/architecture.md``, "What users see").

Requests that only the leader serves (ADD, ASSIGN, REMOVE, TRANSFER) go to the
leader, found as the driver finds it.  The others are answered by whichever node
they are sent to: CLUSTER and LEADER by any node, DESCRIBE, WEIGHT and DUMP by
the node named (the first known server by default), as the Go shell does.

A dqlitepy node serves the membership requests only to a connection it trusts
(``docs/server.md``, "Who may change the cluster"), and answers others FAILURE 23
"not authorized" before doing anything.  A client given the cluster key then
proves it on that connection (``wire/auth.py``) and sends the request once more:
safe, since the refusal came before anything ran.  So a node that trusts the
client anyway (loopback) costs no extra round trip, and C dqlite servers, which
never answer "not authorized", never see dqlitepy's authentication requests.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from ..wire import (
    NONCE_SIZE,
    NOT_AUTHORIZED,
    AddRequest,
    AssignRequest,
    AuthChallengeRequest,
    AuthProofRequest,
    ChallengeResponse,
    ClusterRequest,
    DescribeRequest,
    DumpRequest,
    EmptyResponse,
    FilesResponse,
    LeaderRequest,
    MetadataResponse,
    NodeInfo,
    NodeRole,
    RemoveRequest,
    Request,
    Response,
    ServerResponse,
    ServersResponse,
    TransferRequest,
    WeightRequest,
    admin_proof,
)
from ..wire.record import record
from .discovery import find_leader
from .errors import (
    ConnectionLostError,
    DatabaseError,
    InterfaceError,
    NotLeaderError,
    OperationalError,
)
from .needs import Gen
from .protocol import Protocol
from .waiting import wait

if TYPE_CHECKING:
    import ssl as _ssl


__all__ = ["Client", "ClientBase", "NodeMetadata"]

R = TypeVar("R", bound=Response)

_ROLE_NAMES = {
    "voter": NodeRole.VOTER,
    "standby": NodeRole.STANDBY,
    "stand-by": NodeRole.STANDBY,
    "spare": NodeRole.SPARE,
}


@record
class NodeMetadata:
    """What DESCRIBE reports about a node."""

    failure_domain: int
    weight: int


def _cluster_key(key: bytes | str | os.PathLike[str] | None) -> bytes | None:
    """The key itself, read from a file, or from ``DQLITEPY_CLUSTER_KEY``; None: no key."""
    if isinstance(key, bytes):
        value = key
    elif key is not None:
        try:
            with open(key, "rb") as f:
                value = f.read().strip()
        except OSError as exc:
            raise InterfaceError(f"cannot read the cluster key file {str(key)!r}: {exc}") from exc
    else:
        return os.environ.get("DQLITEPY_CLUSTER_KEY", "").encode() or None
    if not value:
        raise InterfaceError("the cluster key is empty")
    return value


def _role(role: NodeRole | int | str) -> NodeRole:
    if isinstance(role, str):
        try:
            return _ROLE_NAMES[role.lower()]
        except KeyError:
            raise ValueError(f"unknown role {role!r}: expected voter, standby or spare") from None
    return NodeRole(role)


class ClientBase:
    """The admin client's state, and its requests as generators (see :mod:`dqlitepy.client.needs`).

    :class:`Client` drives them with the blocking waiter, ``dqlitepy.aio.Client``
    with asyncio: both follow the same rules for finding the leader, proving
    the key and retrying.

    Args:
        servers: addresses of known nodes, as a list or a comma-separated string.
        timeout: the budget of each call (leader discovery included).
        attempt_timeout: the budget of one attempt through one node.
        cluster_key: the cluster key (bytes), or the path of a file holding it;
            by default the value of ``DQLITEPY_CLUSTER_KEY``, if set.  Proved
            to a node that asks for it before it serves add, assign, remove or
            transfer (see the module docstring).
        ssl: connect with TLS using this context (see :mod:`dqlitepy.client.tls`).

    Raises:
        InterfaceError: no servers, or the key file cannot be read or is empty.
    """

    def __init__(
        self,
        servers: Sequence[str] | str,
        *,
        timeout: float = 10.0,
        attempt_timeout: float = 2.0,
        cluster_key: bytes | str | os.PathLike[str] | None = None,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        if isinstance(servers, str):
            servers = [s for s in servers.split(",") if s]
        if not servers:
            raise InterfaceError("Client needs at least one server address")
        self.servers = list(servers)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self._key = _cluster_key(cluster_key)
        self.ssl = ssl
        self._leader: Protocol | None = None
        self._proven = False  # the key was proved on self._leader

    def _drop(self) -> None:
        """Close the connection to the leader, if any."""
        proto, self._leader = self._leader, None
        self._proven = False
        if proto is not None:
            proto.close()

    def _on_node(self, address: str | None, request: Request, expect: type[R]) -> Gen[R]:
        target = address or self.servers[0]
        proto = yield from Protocol.open(target, self.attempt_timeout, ssl_context=self.ssl)
        try:
            return (yield from proto.call(request, expect, self.timeout))
        finally:
            proto.close()

    def _on_leader(self, request: Request, expect: type[R]) -> Gen[R]:
        deadline = time.monotonic() + self.timeout
        while True:
            proto = self._leader
            if proto is None or not proto.is_alive():
                self._drop()
                proto = self._leader = yield from find_leader(
                    self.servers,
                    attempt_timeout=self.attempt_timeout,
                    total_timeout=max(0.0, deadline - time.monotonic()),
                    ssl_context=self.ssl,
                )
            try:
                return (yield from self._authorized_call(proto, request, expect))
            except NotLeaderError:
                # Refused before anything happened (e.g. leadership moved since
                # the last call): safe to send again to the new leader.
                self._drop()
                if time.monotonic() >= deadline:
                    raise
            except ConnectionLostError as exc:
                self._drop()
                if exc.request_sent:
                    # The change's fate is unknown: never re-sent; rediscover next time.
                    raise ConnectionLostError(
                        f"{exc}; the outcome of the {request.TYPE.name} request is unknown",
                        request_sent=True,
                    ) from exc
                if time.monotonic() >= deadline:
                    raise

    def _authorized_call(self, proto: Protocol, request: Request, expect: type[R]) -> Gen[R]:
        """Send ``request``; if the node asks for the key, prove it and send it once more."""
        try:
            return (yield from proto.call(request, expect, self.timeout))
        except DatabaseError as exc:
            if exc.sqlite_errorcode != NOT_AUTHORIZED or self._key is None or self._proven:
                raise
        yield from self._prove_key(proto, self._key)
        self._proven = True
        return (yield from proto.call(request, expect, self.timeout))

    def _prove_key(self, proto: Protocol, key: bytes) -> Gen[None]:
        challenge = yield from proto.call(AuthChallengeRequest(), ChallengeResponse, self.timeout)
        nonce = secrets.token_bytes(NONCE_SIZE)
        proof = AuthProofRequest(nonce, admin_proof(key, challenge.nonce, nonce))
        yield from proto.call(proof, EmptyResponse, self.timeout)

    def _leader_gen(self) -> Gen[NodeInfo | None]:
        last: OperationalError | None = None
        for address in self.servers:
            try:
                info = yield from self._on_node(address, LeaderRequest(), ServerResponse)
            except OperationalError as exc:
                last = exc
                continue
            if info.address:
                return NodeInfo(info.id, info.address, NodeRole.VOTER)
        if last is not None and len(self.servers) == 1:
            raise last
        return None

    def _cluster_gen(self) -> Gen[list[NodeInfo]]:
        servers = yield from self._on_leader(ClusterRequest(1), ServersResponse)
        return list(servers.servers)

    def _add_gen(self, node_id: int, address: str) -> Gen[None]:
        yield from self._on_leader(AddRequest(node_id, address), EmptyResponse)

    def _assign_gen(self, node_id: int, role: NodeRole | int | str) -> Gen[None]:
        yield from self._on_leader(AssignRequest(node_id, _role(role)), EmptyResponse)

    def _remove_gen(self, node_id: int) -> Gen[None]:
        yield from self._on_leader(RemoveRequest(node_id), EmptyResponse)

    def _transfer_gen(self, node_id: int) -> Gen[None]:
        yield from self._on_leader(TransferRequest(node_id), EmptyResponse)

    def _describe_gen(self, address: str | None) -> Gen[NodeMetadata]:
        meta = yield from self._on_node(address, DescribeRequest(0), MetadataResponse)
        return NodeMetadata(meta.failure_domain, meta.weight)

    def _weight_gen(self, weight: int, address: str | None) -> Gen[None]:
        yield from self._on_node(address, WeightRequest(weight), EmptyResponse)

    def _dump_gen(self, database: str, address: str | None) -> Gen[dict[str, bytes]]:
        files = yield from self._on_node(address, DumpRequest(database), FilesResponse)
        return dict(files.files)


class Client(ClientBase):
    """Administers a dqlite cluster.

    Args:
        servers: addresses of known nodes, as a list or a comma-separated string.
        timeout: the budget of each call (leader discovery included).
        attempt_timeout: the budget of one attempt through one node.
        cluster_key: the cluster key (bytes), or the path of a file holding it;
            by default the value of ``DQLITEPY_CLUSTER_KEY``, if set.  Proved
            to a node that asks for it before it serves add, assign, remove or
            transfer (see the module docstring).
        ssl: connect with TLS using this context (see :mod:`dqlitepy.client.tls`).

    Raises:
        InterfaceError: no servers, or the key file cannot be read or is empty.
    """

    def close(self) -> None:
        """Close the connection to the leader, if any."""
        self._drop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def leader(self) -> NodeInfo | None:
        """Return the current leader (id and address), or None if none is known."""
        return wait(self._leader_gen())

    def cluster(self) -> list[NodeInfo]:
        """Return every member with its id, address and role (from the leader)."""
        return wait(self._cluster_gen())

    def add(self, node_id: int, address: str) -> None:
        """Add a node; it joins as a spare."""
        wait(self._add_gen(node_id, address))

    def assign(self, node_id: int, role: NodeRole | int | str) -> None:
        """Give a node a role: voter, standby or spare."""
        wait(self._assign_gen(node_id, role))

    def remove(self, node_id: int) -> None:
        """Remove a node from the cluster."""
        wait(self._remove_gen(node_id))

    def transfer(self, node_id: int) -> None:
        """Hand leadership to a node (0: let Raft choose a voter)."""
        wait(self._transfer_gen(node_id))

    def describe(self, address: str | None = None) -> NodeMetadata:
        """Return a node's failure domain and weight (default: the first server)."""
        return wait(self._describe_gen(address))

    def weight(self, weight: int, address: str | None = None) -> None:
        """Set a node's weight, in memory on that node (default: the first server)."""
        wait(self._weight_gen(weight, address))

    def dump(self, database: str, address: str | None = None) -> dict[str, bytes]:
        """Return a database's files by name (the database and its WAL)."""
        return wait(self._dump_gen(database, address))
