"""The journal's exceptions: it cannot be opened, cannot be written, or its files are damaged."""

from __future__ import annotations

import errno

__all__ = ["JournalCorruptError", "JournalError", "JournalWriteError"]


class JournalError(Exception):
    """The journal cannot be opened, or can no longer be written."""


class JournalWriteError(JournalError):
    """A write to the journal failed, or was refused because an earlier one failed.

    Attributes:
        cause: the ``OSError`` of the failure (for a refused write: of the earlier failure).
        stored: ``False`` if the change is provably not in the journal (nothing was written,
            or what was written has been cut off again and that is on disk); ``None`` if it
            may be on disk (it would come back after a restart).
    """

    def __init__(self, message: str, cause: OSError, *, stored: bool | None) -> None:
        super().__init__(message)
        self.cause = cause
        self.stored = stored

    @property
    def full(self) -> bool:
        """True if the storage is full (no space left, or the quota is exhausted)."""
        return self.cause.errno in _FULL_ERRNOS


#: ``OSError.errno`` values meaning "no room", as opposed to "the device failed".
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class JournalCorruptError(JournalError):
    """The journal's files are damaged somewhere other than a torn last write.

    Nothing is repaired automatically: dropping records from the middle of a Raft log could
    drop entries this node has acknowledged. Restore the node from its peers instead.
    """
