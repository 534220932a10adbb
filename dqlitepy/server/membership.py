"""Who becomes a voter: Raft's learner-first rule (``docs/architecture.md``, "Operating safely").

A voter counts toward the quorum from the moment the entry naming it is appended (Raft thesis
§4.1).  A voter that cannot be reached, or that lacks most of the log, counts without being
able to help: three unreachable voters added to a cluster of three make six, of which the three
live ones are no majority.  There is no leader any more, and since the change is in every log,
restarting every node changes nothing.  Raft's remedy (thesis §4.2.1; C raft's catch-up rounds
behind dqlite's ASSIGN) is that a server first catches up without a vote.

So a leader makes a node a voter only once it has *caught up* (:func:`caught_up`): it
acknowledged entries in this leader's term (so the leader knows its log and knows it is
reachable), it answered within :data:`ONLINE_WITHIN` seconds, and it lacks at most
:data:`MAX_LAG` entries.  ASSIGN to voter (:func:`promote_to_voter`), whoever asks:

1. a spare, which receives nothing and so cannot catch up, is first made a standby: it then
   receives the log but neither votes nor counts toward the quorum;
2. the leader waits up to :data:`CATCH_UP_WAIT` seconds for it to catch up;
3. then appends the change that makes it a voter and answers EMPTY; if it has not caught up,
   the answer is FAILURE 5 (``SQLITE_BUSY``, "try again": the node stays a standby and goes
   on catching up) and the quorum never depended on it.

The leader's own role balancing (:func:`next_role_change`, run by :func:`keep_voters`) picks
the standbys it promotes with the same test.  The check and the change are not atomic: a node
can fall behind between them, as it can at any later time; what the rule rules out is a voter
the leader has never heard from, or one that holds a fraction of the log.

This module holds every rule about roles: which role a joining node asks for
(:func:`role_for_joiner`), how the leader keeps its voters online, and how it serves the
membership requests (:class:`MembershipChanges`: ADD, ASSIGN, REMOVE, TRANSFER).  The joining
node's side of the conversation is ``join.py``'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from ..replication.replicator import NotLeader, PeerHealth, ReplicationError
from ..wire import (
    AddRequest,
    AssignRequest,
    NodeInfo,
    NodeRole,
    RemoveRequest,
    Request,
    TransferRequest,
)
from .gateway import GatewayFailure

__all__ = [
    "CATCH_UP_WAIT",
    "MAX_LAG",
    "OFFLINE_AFTER",
    "ONLINE_WITHIN",
    "ROLES_CHECK_INTERVAL",
    "MemberRecords",
    "MembershipChanges",
    "NotCaughtUp",
    "RaftRoles",
    "caught_up",
    "keep_voters",
    "next_role_change",
    "promote_to_voter",
    "role_for_joiner",
]

log = logging.getLogger("dqlitepy.server")

#: A node is caught up only if it answered this recently (seconds)...
ONLINE_WITHIN = 2.0
#: ... and lacks at most this many entries.
MAX_LAG = 100
#: How long ASSIGN to voter waits for the node to catch up before it refuses (seconds).  Below
#: the admin client's default timeout (10 s), so that the answer arrives.
CATCH_UP_WAIT = 5.0
_POLL = 0.05
#: How often a leader checks the roles of the cluster.
ROLES_CHECK_INTERVAL = 1.0
#: A voter the leader has not heard from for this long is replaced by a standby.
OFFLINE_AFTER = 10.0


class RaftRoles(Protocol):
    """What the role rules need of Raft (a :class:`~dqlitepy.replication.replicator.Replicator`)."""

    def roles(self) -> dict[str, int]:
        """Every member's address and role, as Raft has them."""

    def set_role(self, address: str, role: int | None, timeout: float = ...) -> None:
        """Change a member's role (None: remove it); returns once committed."""

    def peer_health(self, timeout: float = ...) -> dict[str, PeerHealth]:
        """On the leader: what it knows of each voter and standby."""

    def is_elected(self) -> bool:
        """True while Raft has made this node leader."""

    def transfer(self, address: str | None, timeout: float = ...) -> None:
        """Hand leadership to ``address`` (None: Raft's choice)."""


class MemberRecords(Protocol):
    """The replicated record of members' ids (``replicated.py``'s :class:`Replicated`)."""

    @property
    def members(self) -> dict[str, int]:
        """Member address -> node id (copy it before iterating)."""

    def record_member(self, node_id: int, address: str) -> None:
        """Replicate a member's id."""

    def forget_member(self, address: str) -> None:
        """Replicate a member's removal."""


class NotCaughtUp(ReplicationError):
    """ASSIGN to voter of a node that has not caught up: it stays (or became) a standby."""


# ------------------------------------------------------------------------------- the rules


def caught_up(health: PeerHealth | None) -> bool:
    """True if a leader may count this peer in its quorum (see the module docstring)."""
    return (
        health is not None
        and health.acknowledged
        and health.silent < ONLINE_WITHIN
        and health.behind <= MAX_LAG
    )


def role_for_joiner(others: Sequence[NodeInfo], voters: int, standbys: int) -> NodeRole:
    """The role a node joining a cluster whose other members are ``others`` asks for.

    As go-dqlite's app: a voter while the cluster has fewer than ``voters``
    of them, else a standby while it has fewer than ``standbys``, else a spare.
    """
    roles = [n.role for n in others]
    if roles.count(NodeRole.VOTER) < voters:
        return NodeRole.VOTER
    if roles.count(NodeRole.STANDBY) < standbys:
        return NodeRole.STANDBY
    return NodeRole.SPARE


def next_role_change(
    roles: dict[str, int], health: Mapping[str, PeerHealth], leader: str, voters: int
) -> tuple[str, NodeRole] | None:
    """The next role change a leader makes to keep ``voters`` voters online, if any.

    Like go-dqlite's app, restricted to what Raft tells the leader: a standby
    that has caught up (:func:`caught_up`) is promoted while voters are
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


# --------------------------------------------------------------------- the leader's actions


def promote_to_voter(raft: RaftRoles, address: str, *, wait: float = CATCH_UP_WAIT) -> None:
    """Make ``address`` a voter once it has caught up; on the leader.

    Raises:
        NotCaughtUp: it did not catch up within ``wait`` seconds; it is a standby.
        NotLeader: this node stopped leading.
        ReplicationError: a role change failed (another one in progress...).
    """
    if raft.roles().get(address, NodeRole.SPARE) == NodeRole.SPARE:
        log.info("making %s a standby first: it becomes a voter once it has caught up", address)
        raft.set_role(address, NodeRole.STANDBY)
    deadline = time.monotonic() + wait
    while not caught_up(raft.peer_health().get(address)):
        if not raft.is_elected():
            raise NotLeader("not leader")
        if time.monotonic() >= deadline:
            raise NotCaughtUp(
                f"{address} has not caught up with the log within {wait:g} s: it stays a "
                "standby until it has (assign it again then)"
            )
        time.sleep(_POLL)
    raft.set_role(address, NodeRole.VOTER)


def keep_voters(
    raft: RaftRoles,
    ready: Callable[[], bool],
    address: str,
    voters: int,
    closing: threading.Event,
) -> None:
    """While this node leads (``ready``), replace offline voters with standbys, until ``closing``.

    See :func:`next_role_change`; ``address`` is this node's.
    """
    while not closing.wait(ROLES_CHECK_INTERVAL):
        if not ready():
            continue
        try:
            change = next_role_change(raft.roles(), raft.peer_health(), address, voters)
            if change is not None:
                member, role = change
                log.info("making %s a %s", member, role.name.lower())
                raft.set_role(member, int(role))
        except ReplicationError as exc:
            log.info("could not adjust the roles: %s", exc)


class MembershipChanges:
    """Serves ADD, ASSIGN, REMOVE and TRANSFER on the leader, as dqlite does.

    The caller has checked that the connection may change the cluster and that
    this node leads.  Refusals use dqlite's codes and messages: 1 (``SQLITE_ERROR``)
    for a request that cannot be served, 5 (``SQLITE_BUSY``) for a node that has
    not caught up yet.

    Args:
        records: the replicated record of members' ids.
        raft: this node's Raft.
        node_id: this node's id.
        address: this node's address.
    """

    def __init__(self, records: MemberRecords, raft: RaftRoles, node_id: int, address: str) -> None:
        self._records = records
        self._raft = raft
        self._id = node_id
        self._address = address

    def apply(self, request: Request) -> None:
        """Apply one membership request.

        Raises:
            GatewayFailure: it was refused or failed.
        """
        try:
            if isinstance(request, AddRequest):
                self._add(request)
            elif isinstance(request, AssignRequest):
                self._assign(request)
            elif isinstance(request, RemoveRequest):
                self._remove(request)
            elif isinstance(request, TransferRequest):
                self._transfer(request)
            else:
                raise GatewayFailure.parse(f"not a membership request: {request.TYPE.name}")
        except NotCaughtUp as exc:
            raise GatewayFailure.busy(str(exc)) from exc
        except ReplicationError as exc:
            raise GatewayFailure.error(str(exc)) from exc

    def _add(self, request: AddRequest) -> None:
        members = dict(self._records.members)
        if request.address in members or request.node_id in members.values():
            raise GatewayFailure.error("server ID already in use")
        self._records.record_member(request.node_id, request.address)

    def _assign(self, request: AssignRequest) -> None:
        address = self._address_of(request.node_id)
        role = NodeRole.VOTER if request.role is None else NodeRole(request.role)
        if role == self._raft.roles().get(address, NodeRole.SPARE):
            raise GatewayFailure.error("server role is not valid")
        if address == self._address:
            raise GatewayFailure.error("the leader cannot change its own role")
        if role == NodeRole.VOTER:
            promote_to_voter(self._raft, address)  # once caught up
        else:
            self._raft.set_role(address, int(role))

    def _remove(self, request: RemoveRequest) -> None:
        address = self._address_of(request.node_id)
        if address == self._address:
            raise GatewayFailure.error("the leader cannot remove itself")
        if address in self._raft.roles():
            self._raft.set_role(address, None)
        self._records.forget_member(address)

    def _transfer(self, request: TransferRequest) -> None:
        if request.node_id == 0:
            self._raft.transfer(None)  # Raft picks the most caught-up voter
            return
        address = self._address_of(request.node_id)
        if self._raft.roles().get(address) != NodeRole.VOTER:
            raise GatewayFailure.error("server role is not valid: only voters can lead")
        self._raft.transfer(address)

    def _address_of(self, node_id: int) -> str:
        for address, member_id in dict(self._records.members).items():
            if member_id == node_id:
                return address
        if node_id == self._id:
            return self._address
        raise GatewayFailure.error("server ID is not valid")
