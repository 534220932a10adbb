"""DurableJournal: the Raft log PySyncObj calls, every change on disk before the call returns.

Guarantees (with ``sync=True``, the default):

* ``add`` returns after its record was written and ``fdatasync``-ed; ``add_many`` writes the
  records of several entries and syncs them once (one sync per call, not per entry: the
  commands a leader appends in one tick, or the entries of one AppendEntries, share it), and
  is all or nothing;
* ``append_unsynced`` (the leader's appends) makes its entries visible before they are durable,
  and ``flush`` makes them durable; until then ``durable_index`` stays behind the log's last
  index (:mod:`.appends`);
* ``deleteEntriesFrom`` (truncation after a Raft conflict) is durable on return;
* ``clear`` (before a snapshot's entries are added) takes effect with the next ``add`` (or
  ``add_many``), which replaces the file atomically by one holding only its entries (or at
  ``close``): if that call fails, the old log is still there, on disk and in memory, instead
  of an empty log PySyncObj cannot work with (every tick reads ``journal[-1]``);
* ``deleteEntriesTo`` (compaction after a snapshot) is atomic: the kept records are copied to a
  new file that is synced and renamed over the journal, then the directory is synced;
* ``setCurrentTerm`` (term and vote) is durable on return;
* the commit index is written lazily (``onOneSecondTimer``, ``setCurrentTerm``, ``close``): it
  can be recomputed. What is stored is never beyond the last entry of the log — a truncation
  below it first lowers the stored value — and a reopened journal never reports more;
* the file is synced when the journal is opened (what a dead process wrote without syncing is
  durable before it is acknowledged or voted on), and a torn tail (a crash in the middle of an
  append) is cut off;
  damage anywhere else raises :class:`~.errors.JournalCorruptError` instead of silently
  dropping entries.

``sync=False`` skips every fsync (tests, benchmarks): records are written in the same format
and order, so a killed *process* loses nothing, but a power failure may.

Besides ``PATH`` (:mod:`.records`) and ``PATH.meta`` (:mod:`.meta`), a journal at ``PATH`` uses:

``PATH.lock``
    holds an exclusive ``flock`` while the journal is open, so that two journals (in one process
    or two) can never write the same files.
``PATH.probe``
    exists only while :meth:`DurableJournal.probe` runs (removed when a journal is opened).

What a failed write does, and how the journal takes writes again, is in :mod:`.states`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import operator
import os
import threading
import time
from collections.abc import Iterator
from typing import SupportsIndex, overload

from pysyncobj.journal import Journal

from ..stats import Histogram
from .appends import JournalAppends
from .errors import JournalCorruptError, JournalError, JournalWriteError
from .fileio import fdatasync, fsync_dir, pwrite_all, read_all
from .meta import SLOT_SIZE, Meta, encode_slot, read_meta_file
from .records import FILE_HEADER, HEADER_SIZE, Entry, check_header, scan_records
from .states import DEFAULT_PROBE_BYTES, JournalState

__all__ = ["DurableJournal", "check_journal"]

log = logging.getLogger("dqlitepy.replication.journal")

_COPY_CHUNK = 1 << 20  # compaction copies the kept records in pieces of this size


def _missing_log(path: str, meta_path: str) -> bool:
    """True if the journal file is gone or empty while its metadata file exists.

    The journal is created (with its header, by an atomic rename) before its metadata file,
    and never rewritten without a header: an empty or missing journal beside a metadata file
    is a log that was truncated or deleted, which must not be taken for a new, empty one.
    """
    if not os.path.lexists(meta_path):
        return False
    return not os.path.lexists(path) or (os.path.isfile(path) and os.path.getsize(path) == 0)


def check_journal(path: str | os.PathLike[str]) -> None:
    """Check, reading only, that the journal at ``path`` can be opened; change nothing.

    What :class:`DurableJournal` would refuse at open (a bad header, damage inside the log,
    unreadable metadata, a directory where a file belongs) is raised here, before anything
    else on the node touches its files.  A torn last record passes: opening cuts it off.
    No journal at all passes too (a new node).

    Raises:
        JournalError: the journal cannot be used, with the file and the reason.
    """
    path = os.path.abspath(os.fspath(path))
    meta_path = path + ".meta"
    if _missing_log(path, meta_path):
        raise JournalCorruptError(
            f"{path} is missing or empty but {meta_path} exists: the log was truncated or deleted"
        )
    try:
        for name in (path + ".lock", path, meta_path):
            if os.path.lexists(name) and not os.path.isfile(name):
                raise JournalError(f"{name} is not a regular file")
        if os.path.exists(path):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = read_all(fd)
            finally:
                os.close(fd)
            check_header(data, path)
            scan_records(data, path)
        if os.path.exists(meta_path):
            read_meta_file(meta_path)
    except OSError as exc:
        raise JournalError(f"{exc.filename or path} cannot be read: {exc.strerror}") from exc


class DurableJournal(JournalAppends, Journal):  # type: ignore[misc]  # pysyncobj is untyped
    """PySyncObj journal whose every Raft-relevant change is on disk before the call returns.

    Entries are also kept in memory (a list) because PySyncObj reads the log by list position
    (``journal[0]``, ``journal[-1]``, ``journal[a:b]``) on every tick. Positions, not Raft
    indexes, are also what ``deleteEntriesFrom``/``deleteEntriesTo`` take; their semantics are
    exactly ``del entries[i:]`` and ``entries = entries[i:]``, like ``MemoryJournal``. The
    camelCase method names are PySyncObj's interface.

    All methods are meant to be called from PySyncObj's tick thread; a lock still serialises
    writers so that ``close()`` from another thread cannot race an append onto a closed fd.
    After a failed write the journal refuses writes until :meth:`probe` succeeds (see "Write
    failures" in :mod:`.states`).

    Args:
        path: the journal file.
        sync: sync every change (False: tests and benchmarks only).
        probe_bytes: how much room :meth:`probe` must find before the journal takes writes
            again after a failure.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: bool = True,
        probe_bytes: int = DEFAULT_PROBE_BYTES,
    ) -> None:
        super().__init__()
        self._path = os.path.abspath(os.fspath(path))
        self._dir = os.path.dirname(self._path)
        self._meta_path = self._path + ".meta"
        self._probe_path = self._path + ".probe"
        self._sync = sync
        #: How long each fdatasync took (written under ``_lock``, or before any thread
        #: sees the journal; read by the replicator's figures).
        self.fsync_seconds = Histogram()
        self._probe_bytes = max(0, probe_bytes)
        # Guards everything below against close() from another thread.
        self._lock = threading.Lock()
        self._init_states()
        #: clear() was called and no add() has replaced the file yet: the log it dropped.
        self._cleared: tuple[list[Entry], list[int], int, int] | None = None
        self._entries: list[Entry] = []
        self._offsets: list[int] = []
        self._end = HEADER_SIZE
        self._unsynced = 0
        self._stored = Meta()  # what the metadata file holds
        self._sequence = 0  # of the newest metadata slot
        self._commit = 1  # PySyncObj's value; persisted lazily, clamped to the log
        self._commit_dirty = False
        self._fd = self._meta_fd = -1
        self._lock_fd = self._acquire_file_lock()
        try:
            self._open()
        except BaseException:
            for fd in (self._fd, self._meta_fd, self._lock_fd):
                if fd >= 0:
                    os.close(fd)
            raise

    # -- opening --

    def _acquire_file_lock(self) -> int:
        fd = os.open(self._path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalError(
                f"{self._path} is already open (in this or another process)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open(self) -> None:
        # Leftovers of an interrupted creation or rewrite: never the current state.
        for leftover in (self._path + ".tmp", self._meta_path + ".tmp", self._probe_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        if _missing_log(self._path, self._meta_path):
            raise JournalCorruptError(
                f"{self._path} is missing or empty but {self._meta_path} exists: "
                "the log was truncated or deleted"
            )
        if not os.path.exists(self._path) or os.path.getsize(self._path) == 0:
            # Files are created atomically, so an empty one was made by someone else (touch):
            # there is nothing to lose by giving it a header.
            self._create_file(self._path, FILE_HEADER)
        self._fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
        data = read_all(self._fd)
        check_header(data, self._path)
        scan = scan_records(data, self._path)
        del data
        self._entries, self._offsets, self._end = scan.entries, scan.offsets, scan.end
        if scan.dropped is not None:
            log.warning(
                "%s: %s; truncating the journal to %d bytes (%d entries kept)",
                self._path,
                scan.dropped,
                scan.end,
                len(scan.entries),
            )
            os.ftruncate(self._fd, scan.end)
        # Records a process wrote (append_unsynced) just before it died may be in the page
        # cache only: they must be durable before this node acknowledges or votes on them.
        self._datasync(self._fd)
        self._open_meta()

    def _open_meta(self) -> None:
        if not os.path.exists(self._meta_path):
            if self._entries:
                # The metadata file is created before the first entry can be added: without it
                # this node's vote is unknown, and guessing could make it vote twice in a term.
                raise JournalCorruptError(
                    f"{self._meta_path} is missing but the journal holds entries"
                )
            self._create_file(self._meta_path, encode_slot(0, Meta()) + bytes(SLOT_SIZE))
        self._sequence, self._stored = read_meta_file(self._meta_path)
        self._meta_fd = os.open(self._meta_path, os.O_RDWR | os.O_CLOEXEC)
        last = self._last_index()
        self._commit = max(1, min(self._stored.commit, last)) if last is not None else 1

    def _create_file(self, path: str, content: bytes) -> None:
        # Written aside and renamed so that a crash never leaves a half-initialised file.
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            pwrite_all(fd, [content], 0)
            self._datasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._dirsync()

    # -- helpers --

    def _datasync(self, fd: int) -> None:
        if self._sync:
            started = time.perf_counter()
            fdatasync(fd)
            self.fsync_seconds.observe(time.perf_counter() - started)

    def _dirsync(self) -> None:
        if self._sync:
            fsync_dir(self._dir)

    def _last_index(self) -> int | None:
        return self._entries[-1][1] if self._entries else None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Serialise a mutation; a failed one makes the journal FAILED.

        The mutations under it change the in-memory state only after their I/O succeeded, or,
        for a truncation, as soon as the file was cut: after a failure, memory holds what the
        file holds or less, never entries the file may have lost.
        """
        with self._lock:
            self._check_writable()
            self._sync_unsynced()
            self._materialise_clear()
            try:
                yield
            except OSError as exc:
                self._fail(exc)
                raise JournalWriteError(
                    f"{self._path}: write failed: {exc}", exc, stored=None
                ) from exc

    def _materialise_clear(self) -> None:
        """Carry out a pending clear() on disk now (``_lock`` held; before other mutations)."""
        cleared, self._cleared = self._cleared, None
        if cleared is None:
            return
        entries, offsets, end, commit = cleared
        self._entries, self._offsets, self._end, self._commit = entries, offsets, end, commit
        try:
            self._truncate_at(0)
        except OSError as exc:
            self._fail(exc)
            raise JournalWriteError(f"{self._path}: write failed: {exc}", exc, stored=None) from exc

    def _store_meta(self, term: int, voted_for: str | None, last_index: int | None) -> None:
        """Durably store term, vote and the commit index clamped to ``last_index``."""
        commit = min(self._commit, last_index) if last_index is not None else 0
        meta = Meta(term=term, voted_for=voted_for, commit=max(commit, 0))
        sequence = self._sequence + 1
        slot = encode_slot(sequence, meta)
        # Overwrite the older slot only: until this write is synced, the newest state stays
        # readable in the other one.
        pwrite_all(self._meta_fd, [slot], (sequence % 2) * SLOT_SIZE)
        self._datasync(self._meta_fd)
        self._sequence, self._stored = sequence, meta
        self._commit_dirty = False

    # -- PySyncObj's Journal interface --

    def clear(self) -> None:
        """Drop every entry; on disk with the next :meth:`add_many` (atomically) or at close."""
        with self._lock:
            self._check_writable()
            self._sync_unsynced()  # they are dropped now, but must not come back unsynced
            if self._cleared is None:
                self._cleared = (self._entries, self._offsets, self._end, self._commit)
            self._entries, self._offsets = [], []
            self._commit = min(self._commit, 1)  # as _truncate_at(0) does

    def deleteEntriesFrom(self, entryFrom: SupportsIndex) -> None:
        """``del entries[entryFrom:]`` (a list position, not a Raft index); durable on return."""
        with self._writing():
            start = slice(entryFrom, None).indices(len(self._entries))[0]
            if start < len(self._entries):
                self._truncate_at(start)

    def _truncate_at(self, start: int) -> None:
        new_last = self._entries[start - 1][1] if start > 0 else None
        limit = new_last if new_last is not None else 0
        # The remembered commit index must not outlive the entries it covered: if the log
        # grew back, it would vouch for whatever entries now sit at those indexes.
        self._commit = min(self._commit, max(1, limit))
        if self._stored.commit > limit:
            # Lower the stored commit index before cutting the log: in the other order a crash
            # in between would leave it pointing past the log's end.
            self._store_meta(self._stored.term, self._stored.voted_for, new_last)
        end = self._offsets[start] if start < len(self._entries) else self._end
        os.ftruncate(self._fd, end)
        # The entries are gone from the file now: if the sync below fails, whether the cut
        # is durable is unknown, but memory must not hold what the file no longer does (a
        # probe would otherwise grow the file back with zeros under entries PySyncObj reads).
        del self._entries[start:]
        del self._offsets[start:]
        self._end = end
        # fdatasync covers the new size: the truncation is durable once it returns.
        self._datasync(self._fd)

    def deleteEntriesTo(self, entryTo: SupportsIndex) -> None:
        """``entries = entries[entryTo:]`` (a list position); the file is rewritten atomically."""
        with self._writing():
            start = slice(entryTo, None).indices(len(self._entries))[0]
            if start == 0:
                return
            if start >= len(self._entries):
                # PySyncObj compacts up to a snapshot taken a while ago; if the log was replaced
                # or truncated meanwhile (snapshot install, conflict truncation) this empties it
                # and every later tick fails on journal[-1] (defect 3 in libraries.md). The
                # semantics stay MemoryJournal's; the log line is there to name the cause.
                log.error(
                    "%s: compaction up to position %d empties the log (%d entries, last index "
                    "%s): PySyncObj will fail on every tick (stale log compaction)",
                    self._path,
                    operator.index(entryTo),
                    len(self._entries),
                    self._last_index(),
                )
                self._truncate_at(0)  # nothing is kept: an ftruncate is atomic and cheaper
            else:
                self._rewrite_from(start)

    def _rewrite_from(self, start: int) -> None:
        cut = self._offsets[start]
        tmp = self._path + ".tmp"
        new_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            pwrite_all(new_fd, [FILE_HEADER], 0)
            # Copy the kept records byte for byte: no re-encoding, and their checksums stay.
            src, dst = cut, HEADER_SIZE
            while src < self._end:
                chunk = os.pread(self._fd, min(_COPY_CHUNK, self._end - src), src)
                if not chunk:
                    raise OSError(f"journal shrank while compacting (at offset {src})")
                pwrite_all(new_fd, [chunk], dst)
                src += len(chunk)
                dst += len(chunk)
            self._datasync(new_fd)
            os.replace(tmp, self._path)
        except BaseException:
            os.close(new_fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        old_fd, self._fd = self._fd, new_fd
        os.close(old_fd)
        shift = cut - HEADER_SIZE
        del self._entries[:start]
        self._offsets = [offset - shift for offset in self._offsets[start:]]
        self._end -= shift
        # Until the directory is synced, a crash could bring back the old file, and with it
        # lose every entry appended (and fdatasync-ed) to the new one from now on.
        self._dirsync()

    @overload
    def __getitem__(self, item: SupportsIndex) -> Entry: ...

    @overload
    def __getitem__(self, item: slice) -> list[Entry]: ...

    def __getitem__(self, item: SupportsIndex | slice) -> Entry | list[Entry]:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        """PySyncObj's name for :meth:`close` (called when a SyncObj is destroyed)."""
        self.close()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        """Remember the commit index; written lazily, because it can be recomputed."""
        self._commit = operator.index(raftCommitIndex)
        self._commit_dirty = True

    def getRaftCommitIndex(self) -> int:
        return self._commit

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        """Record term and vote; durable on return (Raft: before any message reflecting them)."""
        term = operator.index(term)
        if term < 0:
            raise ValueError(f"negative raft term: {term}")
        if votedForNodeId is not None and not isinstance(votedForNodeId, str):
            raise TypeError(f"node id must be a str or None, not {type(votedForNodeId).__name__}")
        with self._writing():
            self._store_meta(term, votedForNodeId, self._last_index())

    def getCurrentTerm(self) -> int:
        return self._stored.term

    def getVotedForNodeId(self) -> str | None:
        return self._stored.voted_for

    def onOneSecondTimer(self) -> None:
        """Persist a changed commit index (PySyncObj calls this about once a second)."""
        if not self._commit_dirty or self._state is not JournalState.OPEN:
            return
        if self._cleared is not None:
            return  # the entries it covers are about to be replaced
        with self._writing():
            self._store_meta(self._stored.term, self._stored.voted_for, self._last_index())

    def probe(self) -> bool:
        """Find out whether the storage takes writes (Raft's thread); True if it does.

        FAILED: cut whatever a failed append left after the last intact record, rewrite the
        metadata, then write, sync and delete ``probe_bytes`` beside the journal; if all of
        it works, the journal is OPEN again.  OPEN: only the last step, and a failure makes
        the journal FAILED (the server asks for this when SQLite reported a full disk).
        """
        with self._lock:
            if self._state is JournalState.CLOSED or self._cleared is not None:
                return False
            try:
                if self._state is JournalState.FAILED:
                    os.ftruncate(self._fd, self._end)
                    self._datasync(self._fd)
                    self._store_meta(self._stored.term, self._stored.voted_for, self._last_index())
                self._probe_space()
            except OSError as exc:
                self._fail(exc)
                return False
            if self._state is JournalState.FAILED:
                log.warning("%s: storage takes writes again; journal open", self._path)
                self._set_state(JournalState.OPEN)
                self._failure = None
            return True

    def _probe_space(self) -> None:
        fd = os.open(self._probe_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            chunk = bytes(min(self._probe_bytes, 1 << 16))
            offset = 0
            while offset < self._probe_bytes:
                piece = chunk[: self._probe_bytes - offset]
                pwrite_all(fd, [piece], offset)
                offset += len(piece)
            self._datasync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self._probe_path)

    # -- extras --

    @property
    def path(self) -> str:
        return self._path

    @property
    def sync(self) -> bool:
        return self._sync

    def close(self) -> None:
        """Persist the commit index and release the files. Entries stay readable; idempotent."""
        with self._lock:
            if self._state is JournalState.CLOSED:
                return
            try:
                if self._state is JournalState.OPEN:
                    self._sync_unsynced()
                    self._materialise_clear()
                    if self._commit_dirty:
                        last = self._last_index()
                        self._store_meta(self._stored.term, self._stored.voted_for, last)
            except OSError as exc:
                raise JournalWriteError(
                    f"{self._path}: write failed while closing: {exc}", exc, stored=None
                ) from exc
            finally:
                self._state = JournalState.CLOSED
                for fd in (self._fd, self._meta_fd, self._lock_fd):
                    os.close(fd)

    def __enter__(self) -> DurableJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._state.value
        return f"<DurableJournal {self._path!r} {state}, {len(self._entries)} entries>"

