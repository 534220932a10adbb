"""What can go wrong with a replicated command, as the server is told (``replicator.py``)."""

from __future__ import annotations

__all__ = [
    "LeadershipLost",
    "LeadershipUnconfirmed",
    "NotLeader",
    "ReplicationError",
    "StorageError",
]


class ReplicationError(Exception):
    """A command could not be replicated."""


class NotLeader(ReplicationError):
    """This node does not lead: the command was not appended anywhere."""


class LeadershipLost(ReplicationError):
    """The command's fate is unknown (leadership changed or time ran out)."""


class StorageError(NotLeader):
    """This node's Raft log cannot be written: the command was not appended anywhere.

    The node has stepped down (see ``raft/storage.py``, "Storage failures").

    Attributes:
        full: the storage is full (no space left, quota exhausted), rather
            than failing (an I/O error).
    """

    def __init__(self, message: str, *, full: bool) -> None:
        super().__init__(message)
        self.full = full


class LeadershipUnconfirmed(ReplicationError):
    """A read barrier timed out: this node may still lead, but no quorum confirmed it.

    Nothing was read.  The node may be cut off from its followers (or they
    are slow); a new leader may already exist elsewhere.
    """
