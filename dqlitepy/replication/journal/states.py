"""Whether a journal takes writes: its OPEN / FAILED / CLOSED states and their one table.

Write failures (a full disk, an exceeded quota, an I/O error)
-------------------------------------------------------------
A journal is in one of three states (:class:`JournalState`, moves in :data:`_STATE_MOVES`):

========  ===================================================================================
OPEN      writes are taken
FAILED    a write failed: every write is refused (:class:`~.errors.JournalWriteError`) until
          :meth:`~.durable.DurableJournal.probe` succeeds; reads go on (the entries are in
          memory)
CLOSED    :meth:`~.durable.DurableJournal.close` ran; nothing more is taken
========  ===================================================================================

A failed write raises :class:`~.errors.JournalWriteError` (never a bare ``OSError``) and
leaves the journal as it was before the call: what an append wrote (one entry's record, or a
whole batch of ``add_many``) is cut off again at once (``ftruncate`` back to the last intact
record and a sync, which needs no free space), and the error says whether that worked
(``stored=False``: the entries are provably not in the log, on disk or in memory) or not
(``stored=None``: they may come back after a restart, like an entry a crash interrupted).
A failed metadata write leaves the previous term and vote in memory; the slot it was writing
may or may not hold the new state, which is harmless because no message reflecting that
state was sent, and the next metadata write overwrites the same slot.

Only Raft's thread calls :meth:`~.durable.DurableJournal.probe` (the Raft core does, about
once a second while FAILED): it cuts any partial record, rewrites the metadata, then writes,
syncs and deletes ``probe_bytes`` (1 MiB) beside the journal (``PATH.probe``), so that a node
returns only once there is some room, not a few bytes. On success the journal is OPEN again.
This replaces "restart the node after an I/O error": after a failed ``fdatasync`` the kernel
may have dropped the dirty pages, but the probe cuts every byte written since the last
successful sync, and everything before it was synced by a call that succeeded.
"""

from __future__ import annotations

import enum
import logging

from .errors import JournalError, JournalWriteError

__all__ = ["DEFAULT_PROBE_BYTES", "JournalState", "JournalStates"]

log = logging.getLogger("dqlitepy.replication.journal")


class JournalState(enum.Enum):
    """Whether a :class:`DurableJournal` takes writes (see "Write failures" in :mod:`.states`)."""

    OPEN = "open"
    FAILED = "failed"
    CLOSED = "closed"


_STATE_MOVES: dict[JournalState, frozenset[JournalState]] = {
    JournalState.OPEN: frozenset({JournalState.FAILED, JournalState.CLOSED}),
    JournalState.FAILED: frozenset({JournalState.OPEN, JournalState.CLOSED}),
    JournalState.CLOSED: frozenset(),
}

#: What :meth:`DurableJournal.probe` writes and syncs by default before the journal reopens.
DEFAULT_PROBE_BYTES = 1 << 20


class JournalStates:
    """The state-keeping half of :class:`~.durable.DurableJournal` (see "Write failures")."""

    _path: str
    _state: JournalState
    #: Why the journal is FAILED (the latest error seen while it is).
    _failure: OSError | None

    def _init_states(self) -> None:
        self._state = JournalState.OPEN
        self._failure = None

    def _set_state(self, state: JournalState) -> None:
        if state not in _STATE_MOVES[self._state]:
            raise RuntimeError(f"{self._path}: journal {self._state.value} -> {state.value}")
        self._state = state

    def _fail(self, exc: OSError) -> None:
        """A write failed (``_lock`` held): refuse writes until a probe succeeds."""
        if self._state is JournalState.OPEN:
            log.error(
                "%s: write failed (%s); refusing writes until storage works again", self._path, exc
            )
            self._set_state(JournalState.FAILED)
        self._failure = exc

    def _check_writable(self) -> None:
        if self._state is JournalState.CLOSED:
            raise JournalError(f"{self._path}: journal is closed")
        if self._state is JournalState.FAILED:
            assert self._failure is not None
            raise JournalWriteError(
                f"{self._path}: journal refused writes after a write failed ({self._failure}); "
                "it takes writes again once a probe succeeds",
                self._failure,
                stored=False,
            )

    @property
    def closed(self) -> bool:
        return self._state is JournalState.CLOSED

    @property
    def state(self) -> JournalState:
        return self._state

    @property
    def writable(self) -> bool:
        """True while the journal takes writes (OPEN)."""
        return self._state is JournalState.OPEN

    @property
    def failure(self) -> OSError | None:
        """While FAILED: the latest error that kept the storage from being written."""
        return self._failure
