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
import ssl as _ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

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
from .discovery import find_leader
from .errors import (
    ConnectionLostError,
    DatabaseError,
    InterfaceError,
    NotLeaderError,
    OperationalError,
)
from .protocol import Protocol

__all__ = ["Client", "NodeMetadata"]

R = TypeVar("R", bound=Response)

_ROLE_NAMES = {
    "voter": NodeRole.VOTER,
    "standby": NodeRole.STANDBY,
    "stand-by": NodeRole.STANDBY,
    "spare": NodeRole.SPARE,
}


@dataclass(frozen=True, slots=True)
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


class Client:
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

    def close(self) -> None:
        """Close the connection to the leader, if any."""
        proto, self._leader = self._leader, None
        self._proven = False
        if proto is not None:
            proto.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _on_node(self, address: str | None, request: Request, expect: type[R]) -> R:
        target = address or self.servers[0]
        proto = Protocol.open(target, self.attempt_timeout, ssl_context=self.ssl)
        try:
            return proto.call(request, expect, self.timeout)
        finally:
            proto.close()

    def _on_leader(self, request: Request, expect: type[R]) -> R:
        deadline = time.monotonic() + self.timeout
        while True:
            proto = self._leader
            if proto is None or not proto.is_alive():
                self.close()
                proto = self._leader = find_leader(
                    self.servers,
                    attempt_timeout=self.attempt_timeout,
                    total_timeout=max(0.0, deadline - time.monotonic()),
                    ssl_context=self.ssl,
                )
            try:
                return self._authorized_call(proto, request, expect)
            except NotLeaderError:
                # Refused before anything happened (e.g. leadership moved since
                # the last call): safe to send again to the new leader.
                self.close()
                if time.monotonic() >= deadline:
                    raise
            except ConnectionLostError as exc:
                self.close()
                if exc.request_sent:
                    # The change's fate is unknown: never re-sent; rediscover next time.
                    raise ConnectionLostError(
                        f"{exc}; the outcome of the {request.TYPE.name} request is unknown",
                        request_sent=True,
                    ) from exc
                if time.monotonic() >= deadline:
                    raise

    def _authorized_call(self, proto: Protocol, request: Request, expect: type[R]) -> R:
        """Send ``request``; if the node asks for the key, prove it and send it once more."""
        try:
            return proto.call(request, expect, self.timeout)
        except DatabaseError as exc:
            if exc.sqlite_errorcode != NOT_AUTHORIZED or self._key is None or self._proven:
                raise
        self._prove_key(proto, self._key)
        self._proven = True
        return proto.call(request, expect, self.timeout)

    def _prove_key(self, proto: Protocol, key: bytes) -> None:
        challenge = proto.call(AuthChallengeRequest(), ChallengeResponse, self.timeout)
        nonce = secrets.token_bytes(NONCE_SIZE)
        proof = AuthProofRequest(nonce, admin_proof(key, challenge.nonce, nonce))
        proto.call(proof, EmptyResponse, self.timeout)

    def leader(self) -> NodeInfo | None:
        """Return the current leader (id and address), or None if none is known."""
        last: OperationalError | None = None
        for address in self.servers:
            try:
                info = self._on_node(address, LeaderRequest(), ServerResponse)
            except OperationalError as exc:
                last = exc
                continue
            if info.address:
                return NodeInfo(info.id, info.address, NodeRole.VOTER)
        if last is not None and len(self.servers) == 1:
            raise last
        return None

    def cluster(self) -> list[NodeInfo]:
        """Return every member with its id, address and role (from the leader)."""
        return list(self._on_leader(ClusterRequest(1), ServersResponse).servers)

    def add(self, node_id: int, address: str) -> None:
        """Add a node; it joins as a spare."""
        self._on_leader(AddRequest(node_id, address), EmptyResponse)

    def assign(self, node_id: int, role: NodeRole | int | str) -> None:
        """Give a node a role: voter, standby or spare."""
        self._on_leader(AssignRequest(node_id, _role(role)), EmptyResponse)

    def remove(self, node_id: int) -> None:
        """Remove a node from the cluster."""
        self._on_leader(RemoveRequest(node_id), EmptyResponse)

    def transfer(self, node_id: int) -> None:
        """Hand leadership to a node (0: let Raft choose a voter)."""
        self._on_leader(TransferRequest(node_id), EmptyResponse)

    def describe(self, address: str | None = None) -> NodeMetadata:
        """Return a node's failure domain and weight (default: the first server)."""
        meta = self._on_node(address, DescribeRequest(0), MetadataResponse)
        return NodeMetadata(meta.failure_domain, meta.weight)

    def weight(self, weight: int, address: str | None = None) -> None:
        """Set a node's weight, in memory on that node (default: the first server)."""
        self._on_node(address, WeightRequest(weight), EmptyResponse)

    def dump(self, database: str, address: str | None = None) -> dict[str, bytes]:
        """Return a database's files by name (the database and its WAL)."""
        files = self._on_node(address, DumpRequest(database), FilesResponse)
        return dict(files.files)
