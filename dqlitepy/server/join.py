"""A node asking a cluster to take it in: the joining side of membership.

A node started with ``--join`` (and a restarted member, through the members its
log names) talks to the cluster as any administrator does, through the admin
:class:`~dqlitepy.client.admin.Client`: it finds the leader, proves the cluster
key if the leader asks for it (FAILURE 23, then AUTH_CHALLENGE / AUTH_PROOF, see
``wire/auth.py``), and sends ADD, then ASSIGN with the role
:func:`~dqlitepy.server.membership.role_for_joiner` picks.

Before a fresh node asks to be added it checks, on the leader's Raft port, that
the cluster holds the same key
(:func:`~dqlitepy.replication.transport.check_cluster_key`): a node with another
key must never be added, since the cluster would count a member that can never
reach it (a voter that breaks its quorum).

The same check tells the cluster's id (``datadir.py``): a fresh node records
its leader's; a node whose directory records an id is refused by a cluster
naming another one (:class:`~dqlitepy.server.datadir.ClusterIdMismatch`), before
Raft starts when a seed answers (:meth:`Joiner.check_seeds`), and in any case
before ADD, which is only ever sent to a leader of the node's own cluster.

Every step is retried until its deadline, except what asking again cannot cure:
a cluster holding another key (:class:`~dqlitepy.server.datadir.ClusterKeyRejected`),
another cluster (:class:`~dqlitepy.server.datadir.ClusterIdMismatch`) and TLS
set-ups that do not match (every node refused ours, or we theirs).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..client.admin import Client
from ..client.errors import DatabaseError, Error, NoLeaderError
from ..replication.transport import (
    ClusterMismatch,
    FrameMacError,
    SessionError,
    check_cluster_key,
)
from ..wire import ErrorCode, NodeInfo, NodeRole, ProtocolError
from .datadir import ClusterIdMismatch, ClusterKeyRejected
from .membership import role_for_joiner
from .tls import PLAINTEXT_REFUSED_CODE, NodeTLS, is_tls_mismatch

__all__ = ["Joiner"]

log = logging.getLogger("dqlitepy.server")

#: How long a fresh node looks for the cluster's leader, checks its key, joins (seconds).
JOIN_TIMEOUT = 30.0
#: How long a restarted member tries to get its role back.
REJOIN_TIMEOUT = 60.0
#: How long a restarted member waits for its log to name the other members.
_REJOIN_PEERS_WAIT = 10.0
_REJOIN_PEERS_POLL = 0.2
# The pause between two attempts.
_RETRY_DELAY = 0.5
# The shortest budget of one attempt's calls, however close the deadline.
_MIN_CALL_TIMEOUT = 5.0
# What a failed attempt raises: the client's errors, and the wire's for a peer out of step.
_ATTEMPT_ERRORS = (Error, ProtocolError, OSError)
# How long the check of one seed's cluster id may take before Raft starts.
_SEED_CHECK_TIMEOUT = 3.0


def _no_cluster_id() -> str | None:
    return None


def _tls_mismatch(exc: BaseException) -> bool:
    """True if ``exc`` comes from a TLS set-up that does not match the cluster's.

    The admin client raises it with the cause: a TLS failure that retrying cannot
    cure, or a TLS node's refusal of a plain-text client.
    """
    cause = exc.__cause__
    while cause is not None:
        if is_tls_mismatch(cause) or (
            isinstance(cause, DatabaseError) and cause.sqlite_errorcode == PLAINTEXT_REFUSED_CODE
        ):
            return True
        cause = cause.__cause__
    return False


class _Attempt:
    """What one attempt to join learned before it failed."""

    role: NodeRole | None = None


@dataclass(frozen=True)
class Joiner:
    """This node, as it asks a cluster to take it in.

    Args:
        node_id: this node's id.
        address: this node's address, as the cluster reaches it.
        key: the cluster key.
        tls: dial the other nodes with TLS.
        voters: join as a voter while the cluster has fewer...
        standbys: ... else as a standby while it has fewer, else stay a spare.
        cluster_id: returns the id of this node's cluster, None while it knows none.
    """

    node_id: int
    address: str
    key: bytes
    tls: NodeTLS | None = None
    voters: int = 3
    standbys: int = 3
    cluster_id: Callable[[], str | None] = field(default=_no_cluster_id)

    def _client(self, seeds: Sequence[str], deadline: float) -> Client:
        timeout = max(deadline - time.monotonic(), _MIN_CALL_TIMEOUT)
        ssl = None if self.tls is None else self.tls.client
        return Client(list(seeds), timeout=timeout, cluster_key=self.key, ssl=ssl)

    def _give_up(self, seeds: Sequence[str], exc: Exception, deadline: float) -> None:
        """Raise if ``exc`` ends the attempts; return if another attempt is worth it."""
        where = ", ".join(seeds)
        if _tls_mismatch(exc):
            # Asking again changes nothing: the operator must fix the certificates.
            raise RuntimeError(f"TLS does not match the cluster's ({where}): {exc}") from exc
        if time.monotonic() > deadline:
            if isinstance(exc, NoLeaderError):
                raise RuntimeError(f"no leader found through {where}: {exc}") from exc
            raise RuntimeError(f"could not join through {where}: {exc}") from exc

    def _leader(self, client: Client) -> str:
        # CLUSTER runs the client's leader discovery, which gives up at once when
        # no node accepts our TLS; LEADER then names the leader.
        client.cluster()
        leader = client.leader()
        if leader is None:
            raise NoLeaderError("no node knows a leader")
        return leader.address

    def prove_key(self, seeds: Sequence[str], timeout: float = JOIN_TIMEOUT) -> str | None:
        """Check that the cluster holds this node's key before asking it to add this node.

        Returns:
            The id of the cluster, as its leader names it (None: it names none yet).

        Raises:
            ClusterKeyRejected: the cluster's leader holds another key.
            ClusterIdMismatch: this node knows its cluster's id and the leader names another.
            RuntimeError: no leader found, TLS does not match, or the check kept failing.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._client(seeds, deadline) as client:
                    leader = self._leader(client)
                return self._check_key(leader)
            except _ATTEMPT_ERRORS as exc:
                self._give_up(seeds, exc, deadline)
            time.sleep(_RETRY_DELAY)

    def check_seeds(self, seeds: Sequence[str]) -> None:
        """Refuse to go on if a seed belongs to another cluster than this node's.

        For a member restarted with ``--join``, before its Raft starts: each seed's Raft
        port is asked once, briefly.  A seed that cannot tell (unreachable, not
        running Raft yet, named otherwise than it names itself) is passed over: the
        leader is checked again before ADD.

        Raises:
            ClusterKeyRejected: a seed holds another key.
            ClusterIdMismatch: a seed names another cluster id than this node's.
        """
        for seed in seeds:
            if seed == self.address:
                continue  # one join list for every node names this one too
            with contextlib.suppress(OSError):
                self._check_key(seed, timeout=_SEED_CHECK_TIMEOUT)

    def _check_key(self, member: str, timeout: float = _MIN_CALL_TIMEOUT) -> str | None:
        ours = self.cluster_id()
        try:
            theirs = check_cluster_key(
                member,
                self.key,
                node_id=self.node_id,
                own_address=self.address,
                timeout=timeout,
                ssl_context=None if self.tls is None else self.tls.client,
                cluster_id=ours,
            )
        except FrameMacError as exc:
            raise ClusterKeyRejected(
                f"the cluster rejected this node's key: its leader {member} holds another "
                "cluster key; give this node the key of the cluster it joins"
            ) from exc
        except ClusterMismatch as exc:
            raise ClusterIdMismatch(
                f"this node belongs to cluster {exc.ours}, but {member} belongs to cluster "
                f"{exc.theirs} (the two clusters share a key): a member of one cluster "
                "cannot join another; nothing was changed. To move this machine to the "
                "other cluster, remove it from its own and join with an empty data directory"
            ) from exc
        except (OSError, SessionError) as exc:
            raise OSError(f"could not check the cluster key with {member}: {exc}") from exc
        return theirs

    def voters_of(self, seeds: Sequence[str], timeout: float = JOIN_TIMEOUT) -> list[str]:
        """The addresses of the cluster's voters, from its leader.

        Raises:
            RuntimeError: no leader found, or TLS does not match.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._client(seeds, deadline) as client:
                    members = client.cluster()
                return [n.address for n in members if n.role == NodeRole.VOTER]
            except _ATTEMPT_ERRORS as exc:
                self._give_up(seeds, exc, deadline)
            time.sleep(_RETRY_DELAY)

    def join(self, seeds: Sequence[str], timeout: float = JOIN_TIMEOUT) -> None:
        """Ask the leader to add this node and give it a role, as go-dqlite's app does.

        The node joins as a spare (ADD), then asks for the role
        :func:`~dqlitepy.server.membership.role_for_joiner` picks (ASSIGN); a
        rejoining member is never demoted.  A leader makes a node a voter only
        once it has caught up (``membership.py``): one still catching up when
        ``timeout`` runs out has joined as a standby, which the leader promotes
        once it has caught up if voters are missing.

        Raises:
            RuntimeError: the cluster did not take this node in by ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            attempt = _Attempt()
            try:
                self._join_once(seeds, deadline, timeout, attempt)
                return
            except _ATTEMPT_ERRORS as exc:
                if self._joined_as_standby(seeds, exc, deadline, attempt):
                    return
            time.sleep(_RETRY_DELAY)

    def _join_once(
        self, seeds: Sequence[str], deadline: float, timeout: float, attempt: _Attempt
    ) -> None:
        with self._client(seeds, deadline) as client:
            if self.cluster_id() is not None:
                # ADD goes to a leader of this node's own cluster only.
                self._check_key(self._leader(client))
            try:
                client.add(self.node_id, self.address)
            except DatabaseError as exc:
                if "already in use" not in str(exc):  # dqlite's only word for it
                    raise
            members = client.cluster()
            others = [n for n in members if n.address != self.address]
            attempt.role = _role_of(members, self.address)
            wanted = role_for_joiner(others, self.voters, self.standbys)
            if attempt.role is not None and attempt.role <= wanted:
                return  # roles rank voter < standby < spare: never demoted by a rejoin
            client.timeout = timeout  # ASSIGN to voter waits for this node to catch up
            client.assign(self.node_id, wanted)
        log.info("joined the cluster through %s as %s", ", ".join(seeds), wanted.name.lower())

    def _joined_as_standby(
        self, seeds: Sequence[str], exc: Exception, deadline: float, attempt: _Attempt
    ) -> bool:
        """After a failed attempt: True if the node is in as a standby, still catching up."""
        if (
            time.monotonic() > deadline
            and isinstance(exc, DatabaseError)
            and exc.sqlite_errorcode == ErrorCode.SQLITE_BUSY
            and attempt.role == NodeRole.STANDBY
        ):
            log.info("joined the cluster through %s as a standby: %s", ", ".join(seeds), exc)
            return True
        self._give_up(seeds, exc, deadline)
        return False

    def rejoin(self, peers: Callable[[], Sequence[str]], closing: threading.Event) -> None:
        """Ask the other members for a role again, as ``--join`` does on every start.

        A restarted member may have been replaced while it was away (made a
        spare): the members its log names (``peers``, once Raft has loaded the
        configuration) take it back as a standby.  Failures are logged.
        """
        deadline = time.monotonic() + _REJOIN_PEERS_WAIT
        found: Sequence[str] = []
        while not found and not closing.wait(_REJOIN_PEERS_POLL):
            found = peers()
            if time.monotonic() > deadline:
                return  # a cluster of one
        if not found:
            return
        try:
            self.join(found, timeout=REJOIN_TIMEOUT)
        except Exception as exc:
            log.warning("could not rejoin through %s: %s", ", ".join(found), exc)


def _role_of(members: Sequence[NodeInfo], address: str) -> NodeRole | None:
    return next((NodeRole(n.role) for n in members if n.address == address), None)
