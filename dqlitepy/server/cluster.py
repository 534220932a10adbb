"""What a node serves through: alone, or as a member of a replicated cluster.

A node decides once, from its cluster key, which kind it is, and holds one
:class:`Cluster` that answers every question the gateway and the listener ask
(who leads, who the members are, where sessions and statements go, what to do
with a CONNECT):

- :class:`Standalone` (no key): it leads itself and commits locally; SQLite
  (``synchronous=FULL``) made a commit durable before the statement returns.
- :class:`Starting` (a key, Raft not started yet: the node is checking the
  cluster's key or asking it for its voters): it knows no leader and serves no
  SQL, since serving the local files alone would be serving as a standalone node.
- :class:`Replicating`: the write path of ``replicated.py`` and Raft's view of
  the members; membership requests are ``membership.py``'s.

A replicated node moves from :class:`Starting` to :class:`Replicating` once, by
one assignment, when its Raft has started.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol

from ..engine import Engine, Session, StatementInfo
from ..replication.replicator import (
    DEFAULT_SNAPSHOT_ENTRIES,
    ApplyHandler,
    ReplicationError,
    Replicator,
)
from ..replication.stats import RaftStats
from ..wire import NodeInfo, NodeRole, Request
from .gateway import BeginRead, GatewayFailure
from .identity import InitialConfiguration
from .membership import MembershipChanges, keep_voters
from .replicated import Replicated
from .tls import NodeTLS

__all__ = [
    "DEFAULT_SNAPSHOT_ENTRIES",
    "Cluster",
    "Replicating",
    "Standalone",
    "Starting",
    "raft_tuning",
]


def _nothing() -> None:
    """A statement that needs no ``begun`` signal."""


def _plain_read(
    owner: object, session: Session, info: StatementInfo, timeout: float
) -> Callable[[], None]:
    """A node without Raft admits every read at once (``gateway.BeginRead``)."""
    return _nothing


class Cluster(Protocol):
    """How a node serves: what :class:`~dqlitepy.server.node.NodeServer` delegates to."""

    def leader(self) -> tuple[int, str]:
        """The leader's id and address, or ``(0, "")`` when none is known."""

    def is_leader(self) -> bool:
        """True when this node leads (and, replicated, has caught up)."""

    def members(self) -> list[NodeInfo]:
        """The members with their roles."""

    def open_session(self, name: str) -> Session:
        """Open a session on database ``name``."""

    def close_session(self, name: str, session: Session) -> None:
        """Close a session opened by :meth:`open_session`."""

    def execution(
        self, owner: object, name: str, session: Session, info: StatementInfo, timeout: float
    ) -> AbstractContextManager[Callable[[], None]]:
        """Run one statement under the write path (see ``gateway.NodeContext``)."""

    def read_starter(self, name: str) -> BeginRead:
        """The read fast path's admission on database ``name`` (see ``gateway.NodeContext``)."""

    def dump(self, name: str) -> list[tuple[str, bytes]]:
        """The files of database ``name``."""

    def storage_failed(self) -> None:
        """SQLite reported a full disk or an I/O error (never raises, never waits)."""

    def change_membership(self, request: Request) -> None:
        """Serve ADD / ASSIGN / REMOVE / TRANSFER, raising ``GatewayFailure`` on error."""

    def adopt(self, sock: socket.socket, node_id: int, address: str, data: bytes) -> bool:
        """Take a connection that sent CONNECT over to Raft; False: none here, close it."""

    def close(self) -> None:
        """Stop (a replicated node hands leadership over first)."""

    def ready(self, timeout: float) -> str | None:
        """None if a leader is known and this node applied what it had committed at the
        call; else why not (within about ``timeout``)."""

    def raft_stats(self) -> RaftStats | None:
        """Raft's figures, or None without Raft."""

    def commits(self) -> int:
        """Transactions applied from the Raft log."""


class _Local:
    """What a node without a running Raft does: its own files, no membership, no Raft."""

    def __init__(self, engine: Engine, node_id: int, address: str) -> None:
        self._engine = engine
        self._id = node_id
        self._address = address

    def members(self) -> list[NodeInfo]:
        return [NodeInfo(self._id, self._address, NodeRole.VOTER)]

    def close_session(self, name: str, session: Session) -> None:
        session.close()

    def execution(
        self, owner: object, name: str, session: Session, info: StatementInfo, timeout: float
    ) -> AbstractContextManager[Callable[[], None]]:
        return contextlib.nullcontext(_nothing)

    def read_starter(self, name: str) -> BeginRead:
        return _plain_read  # no Raft: every read is plain

    def dump(self, name: str) -> list[tuple[str, bytes]]:
        return self._engine.dump(name)

    def storage_failed(self) -> None:
        """SQLite alone holds the data: nothing more to check."""

    def change_membership(self, request: Request) -> None:
        raise GatewayFailure.error("membership changes need a replicated cluster")

    def adopt(self, sock: socket.socket, node_id: int, address: str, data: bytes) -> bool:
        return False  # no Raft here: refuse by closing

    def close(self) -> None:
        """Nothing runs but the listener."""

    def raft_stats(self) -> RaftStats | None:
        return None

    def commits(self) -> int:
        return 0


class Standalone(_Local):
    """A node without a cluster key: it leads itself and commits locally.

    Args:
        engine: the node's databases.
        node_id: this node's id.
        address: this node's address.
    """

    def leader(self) -> tuple[int, str]:
        return self._id, self._address

    def is_leader(self) -> bool:
        return True

    def open_session(self, name: str) -> Session:
        return self._engine.session(name)

    def ready(self, timeout: float) -> str | None:
        return None  # it leads itself, and SQLite holds every commit


class Starting(_Local):
    """A replicated node whose Raft has not started yet: no leader known, no SQL served."""

    def leader(self) -> tuple[int, str]:
        return 0, ""

    def is_leader(self) -> bool:
        return False

    def open_session(self, name: str) -> Session:
        raise GatewayFailure.not_leader()

    def ready(self, timeout: float) -> str | None:
        return "replication has not started yet"


def raft_tuning(snapshot_entries: int | None, read_lease: bool | None) -> tuple[int, bool]:
    """The snapshot interval and the read lease: as given, else from the environment.

    ``dqlitepy server`` passes both (its options read the same variables); a node
    embedded without them reads ``DQLITEPY_SNAPSHOT_ENTRIES`` (default 10,000) and
    ``DQLITEPY_READ_LEASE`` (``0``/``false``/``no``/``off``: confirm every read with a
    ReadIndex round, trusting no clock), so the variables mean the same to both.
    """
    if snapshot_entries is None:
        snapshot_entries = int(
            os.environ.get("DQLITEPY_SNAPSHOT_ENTRIES", "").strip() or DEFAULT_SNAPSHOT_ENTRIES
        )
    if read_lease is None:
        word = os.environ.get("DQLITEPY_READ_LEASE", "").strip().lower()
        read_lease = word not in ("0", "false", "no", "off")
    return snapshot_entries, read_lease


class Replicating:
    """A member of a replicated cluster, its Raft running.

    Build it with :meth:`launch`.

    Args:
        replicated: the node's replication state (started).
        node_id: this node's id.
        address: this node's address.
    """

    def __init__(self, replicated: Replicated, node_id: int, address: str) -> None:
        self._replicated = replicated
        # The one place this module reaches into the write path for Raft itself.
        self._raft = replicated.replicator
        self._id = node_id
        self._address = address
        self._membership = MembershipChanges(replicated, self._raft, node_id, address)

    @classmethod
    def launch(
        cls,
        engine: Engine,
        *,
        node_id: int,
        address: str,
        data_dir: Path,
        configuration: InitialConfiguration,
        key: bytes,
        tls: NodeTLS | None,
        snapshot_entries: int | None = None,
        read_lease: bool | None = None,
        cluster_id: Callable[[], str | None] | None = None,
        on_cluster_id: Callable[[str], None] | None = None,
    ) -> Replicating:
        """Start Raft on ``engine``'s databases, from ``configuration`` (or the log).

        ``snapshot_entries`` and ``read_lease`` default to ``DQLITEPY_SNAPSHOT_ENTRIES``
        and ``DQLITEPY_READ_LEASE`` (see :func:`raft_tuning`).  ``cluster_id`` returns
        the id this node's directory records (the transport refuses peers naming
        another); ``on_cluster_id`` is told the id the log names.
        """
        entries, lease = raft_tuning(snapshot_entries, read_lease)
        replicated: Replicated | None = None

        def snapshot() -> Callable[[BinaryIO], None]:
            assert replicated is not None
            return replicated.capture_snapshot()

        def restore(source: BinaryIO) -> None:
            assert replicated is not None
            replicated.install_snapshot(source)

        def factory(apply: ApplyHandler, on_leadership: Callable[[bool], None]) -> Replicator:
            return Replicator(
                address,
                data_dir,
                list(configuration.voters),
                voting=configuration.voting,
                node_id=node_id,
                cluster_key=key,
                apply=apply,
                on_leadership=on_leadership,
                snapshot=snapshot,
                restore=restore,
                snapshot_entries=entries,
                ssl_context=None if tls is None else tls.client,
                read_lease=lease,
                cluster_id=cluster_id,
            )

        replicated = Replicated(engine, factory, node_id, on_cluster_id)
        replicated.start()
        return cls(replicated, node_id, address)

    # -------------------------------------------------------------- Cluster

    def leader(self) -> tuple[int, str]:
        address = self._raft.leader_address()
        if not address:
            return 0, ""
        if address == self._address:
            return self._id, address
        return self._replicated.members.get(address, 0), address

    def is_leader(self) -> bool:
        return self._replicated.is_caught_up_leader()

    def members(self) -> list[NodeInfo]:
        roles = self._raft.roles()
        members = dict(self._replicated.members)
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
        return self._replicated.open_session(name)

    def close_session(self, name: str, session: Session) -> None:
        self._replicated.close_session(name, session)

    def execution(
        self, owner: object, name: str, session: Session, info: StatementInfo, timeout: float
    ) -> AbstractContextManager[Callable[[], None]]:
        return self._replicated.execution(owner, name, session, info, timeout)

    def read_starter(self, name: str) -> BeginRead:
        return self._replicated.read_starter(name)

    def dump(self, name: str) -> list[tuple[str, bytes]]:
        return self._replicated.dump(name)

    def storage_failed(self) -> None:
        # A node whose log storage fails the probe steps down until it works again
        # (``docs/replication.md``, "Disk full and I/O errors").
        self._raft.check_storage()

    def change_membership(self, request: Request) -> None:
        self._membership.apply(request)

    def adopt(self, sock: socket.socket, node_id: int, address: str, data: bytes) -> bool:
        self._raft.adopt(sock, node_id, address, data)
        return True

    def close(self) -> None:
        self._replicated.close()

    def ready(self, timeout: float) -> str | None:
        # The leader's commit index at the time of the call, which only the leader
        # knows: a follower asks it (replication/raft/remote.py).
        deadline = time.monotonic() + timeout
        if not self._raft.leader_address():
            return "no leader known"
        try:
            index = self._raft.leader_read_index(timeout)
        except ReplicationError as exc:
            return str(exc)
        while (applied := self._raft.applied_index()) < index:
            if time.monotonic() >= deadline:
                return f"applied up to entry {applied}; the leader had committed up to {index}"
            time.sleep(0.01)
        return None

    def raft_stats(self) -> RaftStats | None:
        return self._raft.stats()

    def commits(self) -> int:
        return self._replicated.fsm.commits

    # ------------------------------------------------------ background work

    def peers(self) -> Sequence[str]:
        """The other members Raft's configuration names (none before its first ticks)."""
        return [a for a in self._raft.roles() if a != self._address]

    def register_self(self, closing: threading.Event) -> None:
        """Once this node leads, record its id if the cluster does not know it yet."""
        self._replicated.register_self(self._id, self._address, closing)

    def register_cluster_id(self, candidate: str, closing: threading.Event) -> None:
        """Once this node leads, put ``candidate`` in the log if it names no cluster id yet."""
        self._replicated.register_cluster_id(candidate, closing)

    def keep_voters(self, voters: int, closing: threading.Event) -> None:
        """While leading, keep ``voters`` voters online (``membership.keep_voters``)."""
        keep_voters(self._raft, self.is_leader, self._address, voters, closing)
