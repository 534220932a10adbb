"""The configuration: each member's dqlite role, kept in the Raft log.

**Roles.**  PySyncObj knows only voters (and anonymous read-only nodes that
its transports announce).  Membership entries here carry dqlite's roles:
``["role", address, old, new]`` (cbor2, :func:`~.entries.role_change`).
Voters are PySyncObj's ``otherNodes``; standbys go into its read-only set,
which the leader replicates to without counting them; spares take no part.  A
node that does not vote never starts an election.  As Raft requires, a
configuration takes effect when its entry is appended (and is undone if the
entry is truncated, see :mod:`.messages`); a restarted node rebuilds it from
its snapshot and its log.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pysyncobj import SyncObj

from ...wire import NodeRole
from .base import RaftBase
from .config import FOLLOWER, LEADER, MEMBERSHIP, PeerNode
from .entries import role_change, role_change_of

__all__ = ["RolesMixin"]

log = logging.getLogger("dqlitepy.replication")


class RolesMixin(RaftBase):
    """Keeps PySyncObj's voters and read-only nodes in step with the members' roles."""

    _snapshot_roles: Callable[[], Mapping[str, int] | None] | None

    def _init_roles(
        self,
        self_address: str | None,
        peers: Sequence[str],
        voting: bool,
        snapshot_roles: Callable[[], Mapping[str, int] | None] | None,
    ) -> None:
        # Read and written on the tick thread only (other threads read copies).
        self._roles = {str(p): NodeRole.VOTER for p in peers if p != self_address}
        if voting and self_address is not None:
            self._roles[self_address] = NodeRole.VOTER
        self._voting = voting and self_address is not None
        self._snapshot_roles = snapshot_roles

    @property
    def voting(self) -> bool:
        """Whether this node is a voter (only voters stand for election)."""
        return self._voting

    @property
    def voters(self) -> list[str]:
        """Addresses of the voters (this node included if it votes)."""
        return sorted(a for a, role in dict(self._roles).items() if role == NodeRole.VOTER)

    @property
    def roles(self) -> dict[str, int]:
        """The configuration: each member's address and role."""
        return dict(self._roles)

    def change_role(
        self, address: str, role: int | None, callback: Callable[[Any, int], None]
    ) -> None:
        """Append the entry giving ``address`` ``role`` (None removes it); leader only.

        PySyncObj takes one change at a time: a second one before the first is
        applied fails with REQUEST_DENIED.
        """

        def append() -> None:  # on the tick thread, where the current role is known
            entry = role_change(address, self._roles.get(address), role)
            self._applyCommand(entry[1:], callback, MEMBERSHIP)

        self.on_tick(append)

    def _set_role(self, address: str, role: int | None) -> bool:
        """Make ``address``'s role ``role`` here (tick thread); False if it already was."""
        if self._roles.get(address, None) == role:
            return False
        if role is None:
            self._roles.pop(address, None)
        else:
            self._roles[address] = role
        if self.selfNode is not None and address == str(self.selfNode.id):
            self._set_voting(role == NodeRole.VOTER)
            return True
        node = PeerNode(address)
        voters = self._SyncObj__otherNodes
        standbys = self._SyncObj__readonlyNodes
        replicated_before = node in voters or node in standbys
        voters.discard(node)
        standbys.discard(node)
        if role == NodeRole.VOTER:
            voters.add(node)
        elif role == NodeRole.STANDBY:
            standbys.add(node)
        next_index = self._SyncObj__raftNextIndex
        match_index = self._SyncObj__raftMatchIndex
        if role in (NodeRole.VOTER, NodeRole.STANDBY):
            if not replicated_before:
                next_index[node] = self._SyncObj__getCurrentLogIndex() + 1
                match_index[node] = 0
                self._acknowledged.pop(node, None)
                self._SyncObj__transport.addNode(node)
            # A voter the leader never heard from would count as silent at once.
            self._SyncObj__lastResponseTime.setdefault(node, time.monotonic())
        elif replicated_before:
            next_index.pop(node, None)
            match_index.pop(node, None)
            self._acknowledged.pop(node, None)
            self._SyncObj__lastResponseTime.pop(node, None)
            self._SyncObj__transport.dropNode(node)
        return True

    def _set_voting(self, voting: bool) -> None:
        if voting == self._voting:
            return
        self._voting = voting
        self.postpone_election()  # a fresh timeout, or none at all for a non-voter
        if not voting and self.raft_state == LEADER:
            log.warning("this leader is no longer a voter: stepping down")
            self._SyncObj__setState(FOLLOWER)
            self._SyncObj__raftLeader = None
        self._admit_strangers()

    def _admit_strangers(self) -> None:
        # A node that does not vote cannot disrupt elections, and must hear from
        # leaders its stale configuration does not know yet.
        transport = self._SyncObj__transport
        if hasattr(transport, "accept_strangers"):
            transport.accept_strangers = not self._voting

    def _replay_configuration(self) -> None:
        """Apply the membership entries of the log (after the snapshot), as Raft does at append."""
        first = self._SyncObj__raftLog[0][1]
        for command, _, _ in self._SyncObj__getEntries(first):
            request = self._SyncObj__parseChangeClusterRequest(bytes(command))
            if request is not None:
                self._SyncObj__doChangeCluster(request)

    def _SyncObj__updateClusterConfiguration(self, voters: list[Any]) -> None:
        # PySyncObj's hook for the configuration of a snapshot being loaded.
        roles = self._snapshot_roles() if self._snapshot_roles is not None else None
        if roles is None:
            roles = {str(n.id): NodeRole.VOTER for n in voters}
            if self._voting and self.selfNode is not None:
                roles[str(self.selfNode.id)] = NodeRole.VOTER
        for address in set(self._roles) - set(roles):
            self._set_role(address, None)
        for address, role in roles.items():
            self._set_role(str(address), int(role))

    def _SyncObj__generateRaftTimeout(self) -> float:
        # Neither a non-voter nor a node that cannot persist a new term (see
        # "Storage failures") ever stands for election.
        if not self._voting or not self.storage_writable:
            return math.inf
        return float(SyncObj._SyncObj__generateRaftTimeout(self))

    def _SyncObj__doChangeCluster(self, request: Any, reverse: bool = False) -> bool:
        change = role_change_of(request, reverse=reverse)
        return change is not None and self._set_role(*change)
