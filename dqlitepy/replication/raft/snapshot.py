"""A restart between a snapshot and the compaction after it loses no entry.

PySyncObj writes a snapshot, and once it is complete (a later tick) compacts
the log up to it, so that the log starts with the snapshot's last two entries.
When a node stops in between (a crash, a kill), its log still holds the
entries before the snapshot.  On the next start PySyncObj loads the snapshot
and, finding that the log does not start with those two entries, replaces the
whole log by them: every entry after the snapshot is dropped, including
entries this node acknowledged and the cluster committed (a node alone loses
committed writes outright; in a cluster, Raft's durability then rests on the
other voters alone).

Here, before the snapshot is loaded at start, a log that holds the snapshot's
two entries further on is compacted at them, as PySyncObj would have done had
the node not stopped: everything after them stays.  A log that does not hold
them (older than the snapshot, or diverging from it) is left to PySyncObj,
which replaces it as before.  A snapshot installed from the leader replaces
the log anyway (Raft's InstallSnapshot), so nothing changes there.

If the compaction cannot be written, the tick ends there (the journal's
failure is handled as any other, see :mod:`.storage`) and the load is tried
again at the next tick, rather than letting PySyncObj clear the log or run
without its snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pysyncobj import SyncObj

from .base import RaftBase

__all__ = ["SnapshotHead", "SnapshotMixin"]

log = logging.getLogger("dqlitepy.replication")

Entry = tuple[bytes, int, int]
#: A snapshot's last two entries, ``(previous, last)``, or None without a snapshot.
SnapshotHead = Callable[[], "tuple[Entry, Entry] | None"]


class SnapshotMixin(RaftBase):
    """Compacts, rather than replaces, a log a stop left uncompacted after its snapshot."""

    _snapshot_head: SnapshotHead | None

    def _init_snapshot(self, snapshot_head: SnapshotHead | None) -> None:
        self._snapshot_head = snapshot_head

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:  # PySyncObj's name
        if not clearJournal:  # the start's load; an installed snapshot replaces the log
            self._compact_at_snapshot()
        SyncObj._SyncObj__loadDumpFile(self, clearJournal)

    def _compact_at_snapshot(self) -> None:
        """Drop the entries before the snapshot's two, if the log holds them further on."""
        if self._snapshot_head is None:
            return
        try:
            head = self._snapshot_head()
        except Exception:
            # PySyncObj's load reads the snapshot next and reports it.
            log.exception("%s: cannot read the snapshot's entries", self._self_address())
            return
        if head is None:
            return
        previous, last = head
        journal = self._SyncObj__raftLog
        if len(journal) < 2:
            return
        position = previous[1] - journal[0][1]
        if position <= 0 or position >= len(journal) - 1:
            return  # compacted already, or the log is older than the snapshot
        if [_entry(e) for e in journal[position : position + 2]] != [previous, last]:
            return  # another history at those indexes: PySyncObj replaces the log
        if not getattr(journal, "writable", True):
            # The load is retried each tick until this works; the probe that
            # lets the journal write again must run meanwhile (:mod:`.storage`).
            self._watch_storage()
        # Raises JournalWriteError while the journal cannot write: the tick ends
        # there (StorageMixin), the snapshot is not loaded, and the next tick tries again.
        journal.deleteEntriesTo(position)
        log.warning(
            "%s: the log was not compacted after its snapshot (entry %d): "
            "compacted now, %d entries after the snapshot kept",
            self._self_address(),
            last[1],
            len(journal) - 2,
        )


def _entry(value: Any) -> Entry:
    command, index, term = value
    return bytes(command), int(index), int(term)
