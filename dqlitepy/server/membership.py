"""Who becomes a voter: Raft's learner-first rule (``design.md`` §6).

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

The leader's own role balancing (``next_role_change`` in ``node.py``) picks the standbys it
promotes with the same test.  The check and the change are not atomic: a node can fall behind
between them, as it can at any later time; what the rule rules out is a voter the leader has
never heard from, or one that holds a fraction of the log.
"""

from __future__ import annotations

import logging
import time

from ..replication.replicator import NotLeader, PeerHealth, ReplicationError, Replicator
from ..wire import NodeRole

__all__ = [
    "CATCH_UP_WAIT",
    "MAX_LAG",
    "ONLINE_WITHIN",
    "NotCaughtUp",
    "caught_up",
    "promote_to_voter",
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


class NotCaughtUp(ReplicationError):
    """ASSIGN to voter of a node that has not caught up: it stays (or became) a standby."""


def caught_up(health: PeerHealth | None) -> bool:
    """True if a leader may count this peer in its quorum (see the module docstring)."""
    return (
        health is not None
        and health.acknowledged
        and health.silent < ONLINE_WITHIN
        and health.behind <= MAX_LAG
    )


def promote_to_voter(replicator: Replicator, address: str, *, wait: float = CATCH_UP_WAIT) -> None:
    """Make ``address`` a voter once it has caught up; on the leader.

    Raises:
        NotCaughtUp: it did not catch up within ``wait`` seconds; it is a standby.
        NotLeader: this node stopped leading.
        ReplicationError: a role change failed (another one in progress...).
    """
    if replicator.roles().get(address, NodeRole.SPARE) == NodeRole.SPARE:
        log.info("making %s a standby first: it becomes a voter once it has caught up", address)
        replicator.set_role(address, NodeRole.STANDBY)
    deadline = time.monotonic() + wait
    while not caught_up(replicator.peer_health().get(address)):
        if not replicator.is_elected():
            raise NotLeader("not leader")
        if time.monotonic() >= deadline:
            raise NotCaughtUp(
                f"{address} has not caught up with the log within {wait:g} s: it stays a "
                "standby until it has (assign it again then)"
            )
        time.sleep(_POLL)
    replicator.set_role(address, NodeRole.VOTER)
