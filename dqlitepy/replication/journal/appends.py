"""Appending entries to a DurableJournal: synced before returning, or written now and synced later.

Two ways to append, both all or nothing:

``add`` / ``add_many``
    write the records, ``fdatasync`` once, and only then make the entries visible (in memory).
    Every caller that acknowledges what it reads back (a follower answering AppendEntries, a
    new leader's no-op, a membership change) uses these.
``append_unsynced`` then ``flush``
    the leader's path (Raft thesis §10.2.1: the leader writes to its disk in parallel with
    replicating).  ``append_unsynced`` writes the records and makes the entries visible at
    once, *without* syncing, so that they can be sent to the followers; ``flush`` then makes
    them durable.  Between the two, :attr:`durable_index` stays at the last entry that was
    synced: the Raft core counts its own copy toward a majority only up to it.

Unsynced entries never outlive the next mutation unsynced: every other write
(``add_many``, truncation, compaction, ``clear``, term and vote, ``close``) syncs them
first, so they are only ever the tail of the log, and a write failure never leaves the
journal FAILED with entries in memory that no successful sync covered (the probe relies
on that, see :mod:`.states`).  If the sync fails, the unsynced entries are cut off again,
in memory and in the file: the log is what was last synced.

A process that dies between ``append_unsynced`` and ``flush`` leaves the records in the page
cache, where they survive the process but not a power failure.  The journal therefore syncs
its file when it is opened (:mod:`.durable`), before anything it holds can be acknowledged
or voted on.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .errors import JournalWriteError
from .fileio import pwrite_all
from .meta import Meta
from .records import FILE_HEADER, HEADER_SIZE, Entry, checked_entry, encode_record
from .states import JournalStates

__all__ = ["JournalAppends"]


class JournalAppends(JournalStates):
    """The appending half of :class:`~.durable.DurableJournal` (see the module docstring)."""

    _lock: threading.Lock
    _fd: int
    _entries: list[Entry]
    _offsets: list[int]
    _end: int
    _cleared: tuple[list[Entry], list[int], int, int] | None
    _commit: int
    _stored: Meta
    #: How many entries at the end of the log were written by append_unsynced and not synced.
    _unsynced: int

    if TYPE_CHECKING:

        def _datasync(self, fd: int) -> None: ...
        def _dirsync(self) -> None: ...
        def _store_meta(self, term: int, voted_for: str | None, last_index: int | None) -> None: ...

    def add(self, command: bytes, idx: int, term: int) -> None:
        """Append one entry; durable on return (:meth:`add_many` of one entry).

        Raises:
            JournalWriteError: the entry could not be stored (``stored`` says whether it is
                provably absent from the file); the in-memory log does not hold it.
        """
        self.add_many(((command, idx, term),))

    def add_many(self, entries: Iterable[tuple[bytes, int, int]]) -> None:
        """Append ``(command, idx, term)`` entries in order; all durable on return, one sync.

        All or nothing: the records are written together and synced once, and the entries
        become visible (in memory) only then.  Not part of PySyncObj's interface: the Raft
        core calls it when the journal has it (:mod:`dqlitepy.replication.raft`).

        Raises:
            JournalWriteError: the entries could not be stored; the in-memory log holds none
                of them.  ``stored`` is False when none of them is in the file (what was
                written has been cut off again, durably), None when some may be there.
            TypeError, ValueError: an entry is malformed; nothing was written.
        """
        self._append(entries, sync=True)

    def append_unsynced(self, entries: Iterable[tuple[bytes, int, int]]) -> None:
        """Write entries and make them visible at once; durable only after :meth:`flush`.

        For a leader, which may send entries before its own copy is durable but must not
        count that copy before :meth:`flush` returned (:attr:`durable_index` does not move
        here).  Entries left unsynced by an earlier call are synced first.

        Raises:
            JournalWriteError: the entries could not be written; the in-memory log holds none
                of them, and ``stored`` is as for :meth:`add_many`.
            TypeError, ValueError: an entry is malformed; nothing was written.
        """
        self._append(entries, sync=False)

    def flush(self) -> None:
        """Make what :meth:`append_unsynced` wrote durable; :attr:`durable_index` follows.

        Nothing to do (no unsynced entries) is not an error, even on a closed journal.

        Raises:
            JournalWriteError: the sync failed.  The unsynced entries are dropped from the
                in-memory log and cut from the file; ``stored`` is False if that cut is
                durable, None if they may still be on disk.  The journal is FAILED.
        """
        with self._lock:
            self._sync_unsynced()

    @property
    def durable_index(self) -> int | None:
        """Index of the last entry that is durable (None: no entry is); see :meth:`flush`."""
        position = len(self._entries) - self._unsynced
        return self._entries[position - 1][1] if position > 0 else None

    def _append(self, entries: Iterable[tuple[bytes, int, int]], *, sync: bool) -> None:
        batch = [checked_entry(entry) for entry in entries]
        if not batch:
            return
        records = [encode_record(*entry) for entry in batch]
        sizes = [sum(len(part) for part in record) for record in records]
        parts = [part for record in records for part in record]
        with self._lock:
            self._check_writable()
            self._sync_unsynced()
            if self._cleared is not None:
                self._add_replacing(parts, batch, sizes)  # synced either way
                return
            try:
                pwrite_all(self._fd, parts, self._end)
                if sync:
                    self._datasync(self._fd)
            except OSError as exc:
                stored = self._cut_tail()
                self._fail(exc)
                raise JournalWriteError(
                    f"{self._path}: could not append {_describe(batch)}: {exc}",
                    exc,
                    stored=stored,
                ) from exc
            # With sync, visible to PySyncObj only once durable: it may acknowledge what it
            # can read.  Without, durable_index keeps the leader from counting them.
            self._extend(batch, sizes, self._end)
            if not sync:
                self._unsynced = len(batch)

    def _sync_unsynced(self) -> None:
        """Sync the entries append_unsynced left (``_lock`` held); on failure, drop them."""
        if not self._unsynced:
            return
        try:
            self._datasync(self._fd)
        except OSError as exc:
            start = len(self._entries) - self._unsynced
            dropped = self._entries[start:]
            self._end = self._offsets[start]
            del self._entries[start:]
            del self._offsets[start:]
            self._unsynced = 0
            stored = self._cut_tail()
            self._fail(exc)
            raise JournalWriteError(
                f"{self._path}: could not sync {_describe(dropped)}: {exc}", exc, stored=stored
            ) from exc
        self._unsynced = 0

    def _extend(self, batch: list[Entry], sizes: list[int], start: int) -> None:
        """Add written records to the in-memory log, the first at file offset ``start``."""
        offset = start
        for size in sizes:
            self._offsets.append(offset)
            offset += size
        self._entries.extend(batch)
        self._end = offset

    def _cut_tail(self) -> bool | None:
        """Cut what a failed append wrote (``_lock`` held): False once that is durable.

        Shrinking a file needs no free space, so this works on a full disk; after an I/O
        error it may fail too (None: the record may be on disk).
        """
        try:
            os.ftruncate(self._fd, self._end)
            self._datasync(self._fd)
        except OSError:
            return None
        return False

    def _add_replacing(self, parts: list[bytes], batch: list[Entry], sizes: list[int]) -> None:
        """The first add() after clear(): replace the file by one holding only ``batch``."""
        assert self._cleared is not None
        entries, offsets, end, saved_commit = self._cleared
        tmp = self._path + ".tmp"
        replaced = False
        try:
            # As in _truncate_at: the stored commit index must not vouch for entries that
            # are about to disappear; lowering it first is safe whatever happens next.
            self._commit = 1
            if self._stored.commit > 0:
                self._store_meta(self._stored.term, self._stored.voted_for, None)
            new_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                pwrite_all(new_fd, [FILE_HEADER, *parts], 0)
                self._datasync(new_fd)
                os.replace(tmp, self._path)
            except BaseException:
                os.close(new_fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            replaced = True
            old_fd, self._fd = self._fd, new_fd
            os.close(old_fd)
            self._cleared = None
            self._entries, self._offsets = [], []
            self._extend(batch, sizes, HEADER_SIZE)
            self._dirsync()
        except OSError as exc:
            if not replaced:
                # The old file is untouched: the log PySyncObj sees is the old one again.
                self._cleared = None
                self._entries, self._offsets, self._end = entries, offsets, end
                self._commit = saved_commit
            self._fail(exc)
            raise JournalWriteError(
                f"{self._path}: could not replace the log by {_describe(batch)}: {exc}",
                exc,
                stored=False if not replaced else None,
            ) from exc


def _describe(batch: list[Entry]) -> str:
    if len(batch) == 1:
        return f"entry {batch[0][1]}"
    return f"entries {batch[0][1]}..{batch[-1][1]}"
