"""A crash-safe Raft log for PySyncObj: the fix for PySyncObj defect 1, "no fsync anywhere".

PySyncObj's ``FileJournal`` keeps the log in an mmap that is never synced before a follower
acknowledges an entry or the leader counts its own copy, and writes term and vote without fsync.
Raft's safety argument assumes the opposite: an entry a node has acknowledged, and the vote it
has granted, survive a crash. :class:`DurableJournal` implements the whole journal interface
PySyncObj calls, and returns from every call that Raft relies on only once the change is on disk.

Guarantees (with ``sync=True``, the default):

* ``add`` returns after its record was written and ``fdatasync``-ed (one sync per entry);
* ``deleteEntriesFrom`` (truncation after a Raft conflict) is durable on return;
* ``clear`` (before a snapshot's entries are added) takes effect with the next ``add``, which
  replaces the file atomically by one holding only that entry (or at ``close``): if that
  ``add`` fails, the old log is still there, on disk and in memory, instead of an empty log
  PySyncObj cannot work with (every tick reads ``journal[-1]``);
* ``deleteEntriesTo`` (compaction after a snapshot) is atomic: the kept records are copied to a
  new file that is synced and renamed over the journal, then the directory is synced;
* ``setCurrentTerm`` (term and vote) is durable on return;
* the commit index is written lazily (``onOneSecondTimer``, ``setCurrentTerm``, ``close``): it
  can be recomputed. What is stored is never beyond the last entry of the log — a truncation
  below it first lowers the stored value — and a reopened journal never reports more;
* a torn tail (a crash in the middle of an append) is cut off when the journal is opened;
  damage anywhere else raises :class:`JournalCorruptError` instead of silently dropping entries.

``sync=False`` skips every fsync (tests, benchmarks): records are written in the same format
and order, so a killed *process* loses nothing, but a power failure may.

Write failures (a full disk, an exceeded quota, an I/O error)
-------------------------------------------------------------
A journal is in one of three states (:class:`JournalState`, moves in :data:`_STATE_MOVES`):

========  ===================================================================================
OPEN      writes are taken
FAILED    a write failed: every write is refused (:class:`JournalWriteError`) until
          :meth:`DurableJournal.probe` succeeds; reads go on (the entries are in memory)
CLOSED    :meth:`DurableJournal.close` ran; nothing more is taken
========  ===================================================================================

A failed write raises :class:`JournalWriteError` (never a bare ``OSError``) and leaves the
journal as it was before the call: an append's partial record is cut off again at once
(``ftruncate`` back to the last intact record and a sync, which needs no free space), and the
error says whether that worked (``stored=False``: the entry is provably not in the log, on disk
or in memory) or not (``stored=None``: it may come back after a restart, like an entry a crash
interrupted). A failed metadata write leaves the previous term and vote in memory; the slot it
was writing may or may not hold the new state, which is harmless because no message reflecting
that state was sent, and the next metadata write overwrites the same slot.

Only Raft's thread calls :meth:`DurableJournal.probe` (the Raft core does, about once a
second while FAILED): it cuts any partial record, rewrites the metadata, then writes, syncs and
deletes ``probe_bytes`` (1 MiB) beside the journal (``PATH.probe``), so that a node returns only
once there is some room, not a few bytes. On success the journal is OPEN again. This replaces
"restart the node after an I/O error": after a failed ``fdatasync`` the kernel may have dropped
the dirty pages, but the probe cuts every byte written since the last successful sync, and
everything before it was synced by a call that succeeded.

Files, for a journal at ``PATH`` (all integers little-endian unless said otherwise):

``PATH``
    16-byte header ``magic "DQPYRLOG" | u32 format version (1) | u32 flags (0)``, then records
    ``u32 length | u32 crc32(payload) | payload``; payload is the CBOR encoding of
    ``[idx, term, command]`` (two unsigned integers below 2**64 and a byte string), exactly
    what ``cbor2.dumps`` produces.
``PATH.meta``
    two 4096-byte slots, each ``magic "DQPYMETA" | u32 version (1) | u32 crc32(rest) |
    u64 sequence | u32 length | payload | zero padding``, payload the CBOR map
    ``{"term": int, "voted_for": str | None, "commit": int}``. An update overwrites the slot not
    holding the newest state and syncs it; the valid slot with the highest sequence wins. A
    crash in the middle of an update therefore leaves the previous state readable, and an
    update costs one ``fdatasync`` of an in-place block (no rename, no directory sync).
``PATH.lock``
    holds an exclusive ``flock`` while the journal is open, so that two journals (in one process
    or two) can never write the same files.
``PATH.probe``
    exists only while :meth:`DurableJournal.probe` runs (removed when a journal is opened).

Plugging it into PySyncObj: ``SyncObj.__init__`` creates its log with
``pysyncobj.syncobj.createJournal(conf.journalFile)``; construct the ``SyncObj`` inside
:func:`durable_journal_for_syncobj` (or install :func:`make_syncobj_journal_factory` yourself).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import logging
import operator
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, SupportsIndex, overload

import cbor2
import pysyncobj.syncobj
from pysyncobj.journal import Journal, MemoryJournal

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "DEFAULT_PROBE_BYTES",
    "DurableJournal",
    "Entry",
    "JournalCorruptError",
    "JournalError",
    "JournalState",
    "JournalWriteError",
    "durable_journal_for_syncobj",
    "make_syncobj_journal_factory",
]

log = logging.getLogger("dqlitepy.replication.journal")

#: One log entry as PySyncObj sees it: ``(command, raft index, raft term)``.
Entry = tuple[bytes, int, int]

FORMAT_VERSION = 1
_MAGIC = b"DQPYRLOG"
_HEADER = struct.Struct("<8sII")  # magic, format version, flags
HEADER_SIZE = _HEADER.size
_RECORD = struct.Struct("<II")  # payload length, crc32(payload)
_MAX_PAYLOAD = 0xFFFF_FFFF  # the length field is a u32
_PAYLOAD_START = b"\x83"  # CBOR head of a 3-element array: how every record payload begins
_COPY_CHUNK = 1 << 20
# PySyncObj's FileJournal starts with this name; recognising it gives a useful error message.
_PYSYNCOBJ_MAGIC = b"PYSYNCOBJ"

_META_MAGIC = b"DQPYMETA"
_META_VERSION = 1
_SLOT_SIZE = 4096  # one file-system block: a torn slot write cannot touch the other slot
_SLOT_HEAD = struct.Struct("<8sII")  # magic, version, crc32 of everything after it
_SLOT_BODY = struct.Struct("<QI")  # sequence, payload length


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


class JournalState(enum.Enum):
    """Whether a :class:`DurableJournal` takes writes (see "Write failures" above)."""

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


class JournalCorruptError(JournalError):
    """The journal's files are damaged somewhere other than a torn last write.

    Nothing is repaired automatically: dropping records from the middle of a Raft log could
    drop entries this node has acknowledged. Restore the node from its peers instead.
    """


# -- low-level I/O ----------------------------------------------------------------------------


def _fdatasync(fd: int) -> None:
    # Looked up on every call (not bound at import) so that tests can count the calls.
    full_fsync = getattr(fcntl, "F_FULLFSYNC", None)
    if full_fsync is not None:
        # macOS: fsync() only reaches the drive's cache; F_FULLFSYNC is what makes data durable.
        fcntl.fcntl(fd, full_fsync)
        return
    sync = getattr(os, "fdatasync", None)
    (sync if sync is not None else os.fsync)(fd)


def _fsync_dir(directory: str) -> None:
    # A rename or a file creation is durable only once the directory itself is synced.
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, parts: list[bytes], offset: int) -> None:
    # pwritev writes a record's header and a multi-MiB command without concatenating them; a
    # short write (possible for large buffers, e.g. when a fatal signal arrives) is finished
    # with pwrite.
    total = sum(len(p) for p in parts)
    written = os.pwritev(fd, parts, offset)
    if written == total:
        return
    rest = memoryview(b"".join(parts))[written:]
    offset += written
    while rest:
        n = os.pwrite(fd, rest, offset)
        rest = rest[n:]
        offset += n


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 64 << 20), offset)
        if not chunk:
            break  # the file shrank under us; parse what was there
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


# -- record format ----------------------------------------------------------------------------


def _cbor_head(major: int, value: int) -> bytes:
    """CBOR initial byte(s) for an unsigned integer or a length, shortest form (RFC 8949 §3)."""
    if value < 24:
        return bytes((major << 5 | value,))
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes((major << 5 | extra,)) + value.to_bytes(size, "big")
    raise ValueError(f"{value} does not fit in 64 bits")


def _encode_record(command: bytes, idx: int, term: int) -> list[bytes]:
    """The record for one entry, as buffers to write in order.

    The payload is ``cbor2.dumps([idx, term, command])``, byte for byte, but built from its
    small head and the command itself so that a large command is neither copied nor encoded
    (cbor2 needs ~24 µs for 64 KiB, which is most of an unsynced append).
    """
    head = b"\x83" + _cbor_head(0, idx) + _cbor_head(0, term) + _cbor_head(2, len(command))
    length = len(head) + len(command)
    if length > _MAX_PAYLOAD:
        raise ValueError(f"journal entry of {length} bytes exceeds the 4 GiB record limit")
    crc = zlib.crc32(command, zlib.crc32(head))
    return [_RECORD.pack(length, crc), head, command]


def _decode_payload(payload: bytes | memoryview) -> Entry | None:
    try:
        value = cbor2.loads(payload)
    except Exception:  # any decoding failure means "not one of our entries"
        return None
    if (
        isinstance(value, list)
        and len(value) == 3
        and type(value[0]) is int
        and type(value[1]) is int
        and value[0] >= 0
        and value[1] >= 0
        and isinstance(value[2], bytes)
    ):
        return (value[2], value[0], value[1])
    return None


def _intact_record_after(buf: bytes, pos: int) -> int | None:
    """Offset of the first intact record that starts after ``pos``, or None.

    A torn append damages only the last record, so nothing intact can follow it; an intact
    record after a damaged one means the damage is inside the log. Record boundaries after a
    damaged length field are unknown, so every candidate offset is tried. Each of our payloads
    starts with 0x83 (CBOR "array of 3"), which keeps the search fast even over a torn
    multi-MiB record.
    """
    view = memoryview(buf)
    q = buf.find(_PAYLOAD_START, pos + 1 + _RECORD.size)
    while q != -1:
        p = q - _RECORD.size
        length, crc = _RECORD.unpack_from(buf, p)
        stop = q + length
        if (
            length
            and stop <= len(buf)
            and zlib.crc32(view[q:stop]) == crc
            and _decode_payload(view[q:stop]) is not None
        ):
            return p
        q = buf.find(_PAYLOAD_START, q + 1)
    return None


@dataclass
class _Scan:
    entries: list[Entry]
    offsets: list[int]  # file offset of each entry's record
    end: int  # end of the last intact record
    dropped: str | None  # why the bytes after ``end`` are not part of the log


def _scan_records(buf: bytes, path: str) -> _Scan:
    entries: list[Entry] = []
    offsets: list[int] = []
    view = memoryview(buf)
    size = len(buf)
    pos = HEADER_SIZE
    while pos < size:
        if size - pos >= _RECORD.size:
            length, crc = _RECORD.unpack_from(buf, pos)
            start = pos + _RECORD.size
            stop = start + length
            if length and stop <= size and zlib.crc32(view[start:stop]) == crc:
                entry = _decode_payload(view[start:stop])
                if entry is None:
                    # The checksum matches, so these are the bytes that were written: not a
                    # crash artefact but another writer or format. Refuse rather than guess.
                    raise JournalCorruptError(
                        f"{path}: record at offset {pos} has a valid checksum but is not an "
                        "[idx, term, command] entry (written by another program or version?)"
                    )
                entries.append(entry)
                offsets.append(pos)
                pos = stop
                continue
        return _Scan(entries, offsets, pos, _damaged_tail(buf, pos, path))
    return _Scan(entries, offsets, pos, None)


def _damaged_tail(buf: bytes, pos: int, path: str) -> str:
    """Decide whether the bad record at ``pos`` is a torn tail (return why) or damage (raise)."""
    tail = len(buf) - pos
    if buf.count(0, pos) == tail:
        # File systems may extend a file before its data blocks reach the disk: a crash then
        # leaves zeros where the last record should be.
        return f"zero-filled tail of {tail} bytes at offset {pos}"
    later = _intact_record_after(buf, pos)
    if later is not None:
        raise JournalCorruptError(
            f"{path}: the record at offset {pos} is damaged but an intact record follows at "
            f"offset {later}: this is corruption inside the journal, not a torn last record; "
            "refusing to open it (restore this node from its peers)"
        )
    return f"torn or damaged last record at offset {pos} ({tail} bytes)"


# -- metadata: term, vote, commit index -------------------------------------------------------


@dataclass(frozen=True)
class _Meta:
    term: int = 0
    voted_for: str | None = None
    commit: int = 0  # as stored: never beyond the last entry; 0 = nothing known


def _encode_slot(sequence: int, meta: _Meta) -> bytes:
    payload = cbor2.dumps({"term": meta.term, "voted_for": meta.voted_for, "commit": meta.commit})
    body = _SLOT_BODY.pack(sequence, len(payload)) + payload
    if _SLOT_HEAD.size + len(body) > _SLOT_SIZE:
        raise ValueError(f"metadata of {len(payload)} bytes does not fit in a slot (node id?)")
    slot = _SLOT_HEAD.pack(_META_MAGIC, _META_VERSION, zlib.crc32(body)) + body
    return slot.ljust(_SLOT_SIZE, b"\0")


def _decode_slot(slot: bytes, path: str) -> tuple[int, _Meta] | None:
    """``(sequence, meta)`` of a valid slot; None if the slot is empty or torn."""
    magic, version, crc = _SLOT_HEAD.unpack_from(slot)
    body = slot[_SLOT_HEAD.size :]
    sequence, length = _SLOT_BODY.unpack_from(body)
    if magic != _META_MAGIC or _SLOT_BODY.size + length > len(body):
        return None
    if zlib.crc32(body[: _SLOT_BODY.size + length]) != crc:
        return None
    if version != _META_VERSION:
        raise JournalError(f"{path}: metadata version {version} is not supported")
    value = cbor2.loads(body[_SLOT_BODY.size : _SLOT_BODY.size + length])
    term, voted_for, commit = (
        (value.get("term"), value.get("voted_for"), value.get("commit"))
        if isinstance(value, dict)
        else (None, None, None)
    )
    if (
        type(term) is not int
        or type(commit) is not int
        or not (voted_for is None or isinstance(voted_for, str))
    ):
        raise JournalCorruptError(f"{path}: metadata slot has a valid checksum but bad fields")
    return sequence, _Meta(term=term, voted_for=voted_for, commit=commit)


def _read_meta_file(path: str) -> tuple[int, _Meta]:
    """The newest valid state in a metadata file, with its sequence number."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) != 2 * _SLOT_SIZE:
        # Created at full size by an atomic rename and only ever overwritten in place.
        raise JournalCorruptError(f"{path}: metadata file has {len(data)} bytes, not 8192")
    slots = [_decode_slot(data[i * _SLOT_SIZE : (i + 1) * _SLOT_SIZE], path) for i in (0, 1)]
    valid = [slot for slot in slots if slot is not None]
    if not valid:
        # Falling back to "term 0, no vote" could let this node vote twice in one term.
        raise JournalCorruptError(f"{path}: both metadata slots are damaged")
    for i, slot in enumerate(slots):
        if slot is None and data[i * _SLOT_SIZE : (i + 1) * _SLOT_SIZE].count(0) != _SLOT_SIZE:
            # Expected after a crash in the middle of an update, which had not returned yet.
            log.warning("%s: metadata slot %d is damaged (interrupted update?)", path, i)
    return max(valid, key=lambda slot: slot[0])


# -- the journal ------------------------------------------------------------------------------


class DurableJournal(Journal):  # type: ignore[misc]  # pysyncobj is untyped
    """PySyncObj journal whose every Raft-relevant change is on disk before the call returns.

    Entries are also kept in memory (a list) because PySyncObj reads the log by list position
    (``journal[0]``, ``journal[-1]``, ``journal[a:b]``) on every tick. Positions, not Raft
    indexes, are also what ``deleteEntriesFrom``/``deleteEntriesTo`` take; their semantics are
    exactly ``del entries[i:]`` and ``entries = entries[i:]``, like ``MemoryJournal``. The
    camelCase method names are PySyncObj's interface.

    All methods are meant to be called from PySyncObj's tick thread; a lock still serialises
    writers so that ``close()`` from another thread cannot race an append onto a closed fd.
    After a failed write the journal refuses writes until :meth:`probe` succeeds (see "Write
    failures" in the module docstring).

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
        self._probe_bytes = max(0, probe_bytes)
        # Guards everything below against close() from another thread.
        self._lock = threading.Lock()
        self._state = JournalState.OPEN
        #: Why the journal is FAILED (the latest error seen while it is).
        self._failure: OSError | None = None
        #: clear() was called and no add() has replaced the file yet: the log it dropped.
        self._cleared: tuple[list[Entry], list[int], int, int] | None = None
        self._entries: list[Entry] = []
        self._offsets: list[int] = []
        self._end = HEADER_SIZE
        self._stored = _Meta()  # what the metadata file holds
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
        if not os.path.exists(self._path) or os.path.getsize(self._path) == 0:
            # Files are created atomically, so an empty one was made by someone else (touch):
            # there is nothing to lose by giving it a header.
            self._create_file(self._path, _HEADER.pack(_MAGIC, FORMAT_VERSION, 0))
        self._fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
        data = _read_all(self._fd)
        self._check_header(data)
        scan = _scan_records(data, self._path)
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
            self._create_file(self._meta_path, _encode_slot(0, _Meta()) + bytes(_SLOT_SIZE))
        self._sequence, self._stored = _read_meta_file(self._meta_path)
        self._meta_fd = os.open(self._meta_path, os.O_RDWR | os.O_CLOEXEC)
        last = self._last_index()
        self._commit = max(1, min(self._stored.commit, last)) if last is not None else 1

    def _create_file(self, path: str, content: bytes) -> None:
        # Written aside and renamed so that a crash never leaves a half-initialised file.
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _pwrite_all(fd, [content], 0)
            self._datasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._dirsync()

    def _check_header(self, data: bytes) -> None:
        if data.startswith(_PYSYNCOBJ_MAGIC):
            raise JournalError(
                f"{self._path} is a PySyncObj FileJournal, not a dqlitepy journal; it cannot be "
                "converted (it was never fsynced): start this node from an empty journal"
            )
        if len(data) < HEADER_SIZE or data[: len(_MAGIC)] != _MAGIC:
            raise JournalError(f"{self._path} is not a dqlitepy Raft journal (bad magic)")
        _, version, flags = _HEADER.unpack_from(data)
        if version != FORMAT_VERSION:
            raise JournalError(
                f"{self._path}: journal format version {version} is not supported "
                f"(this dqlitepy reads version {FORMAT_VERSION})"
            )
        if flags != 0:
            raise JournalError(f"{self._path}: unknown journal flags {flags:#x}")

    # -- helpers --

    def _datasync(self, fd: int) -> None:
        if self._sync:
            _fdatasync(fd)

    def _dirsync(self) -> None:
        if self._sync:
            _fsync_dir(self._dir)

    def _last_index(self) -> int | None:
        return self._entries[-1][1] if self._entries else None

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

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Serialise a mutation; a failed one makes the journal FAILED.

        The mutations under it change the in-memory state only after their I/O succeeded, or,
        for a truncation, as soon as the file was cut: after a failure, memory holds what the
        file holds or less, never entries the file may have lost.
        """
        with self._lock:
            self._check_writable()
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
        meta = _Meta(term=term, voted_for=voted_for, commit=max(commit, 0))
        sequence = self._sequence + 1
        slot = _encode_slot(sequence, meta)
        # Overwrite the older slot only: until this write is synced, the newest state stays
        # readable in the other one.
        _pwrite_all(self._meta_fd, [slot], (sequence % 2) * _SLOT_SIZE)
        self._datasync(self._meta_fd)
        self._sequence, self._stored = sequence, meta
        self._commit_dirty = False

    # -- PySyncObj's Journal interface --

    def add(self, command: bytes, idx: int, term: int) -> None:
        """Append one entry; durable on return.

        Raises:
            JournalWriteError: the entry could not be stored (``stored`` says whether it is
                provably absent from the file); the in-memory log does not hold it.
        """
        if not isinstance(command, bytes | bytearray | memoryview):
            raise TypeError(f"journal command must be bytes, not {type(command).__name__}")
        command = bytes(command)
        idx, term = operator.index(idx), operator.index(term)
        if idx < 0 or term < 0:
            raise ValueError(f"negative raft index or term: {idx}, {term}")
        parts = _encode_record(command, idx, term)
        size = sum(len(part) for part in parts)
        with self._lock:
            self._check_writable()
            if self._cleared is not None:
                self._add_replacing(parts, (command, idx, term))
                return
            try:
                _pwrite_all(self._fd, parts, self._end)
                self._datasync(self._fd)
            except OSError as exc:
                stored = self._cut_tail()
                self._fail(exc)
                raise JournalWriteError(
                    f"{self._path}: could not append entry {idx}: {exc}", exc, stored=stored
                ) from exc
            # Visible to PySyncObj only once durable: it may acknowledge what it can read.
            self._offsets.append(self._end)
            self._entries.append((command, idx, term))
            self._end += size

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

    def _add_replacing(self, parts: list[bytes], entry: Entry) -> None:
        """The first add() after clear(): replace the file by one holding only ``entry``."""
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
                _pwrite_all(new_fd, [_HEADER.pack(_MAGIC, FORMAT_VERSION, 0), *parts], 0)
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
            self._entries, self._offsets = [entry], [HEADER_SIZE]
            self._end = HEADER_SIZE + sum(len(part) for part in parts)
            self._dirsync()
        except OSError as exc:
            if not replaced:
                # The old file is untouched: the log PySyncObj sees is the old one again.
                self._cleared = None
                self._entries, self._offsets, self._end = entries, offsets, end
                self._commit = saved_commit
            self._fail(exc)
            raise JournalWriteError(
                f"{self._path}: could not replace the log by entry {entry[1]}: {exc}",
                exc,
                stored=False if not replaced else None,
            ) from exc

    def clear(self) -> None:
        """Drop every entry; on disk with the next :meth:`add` (atomically) or at close."""
        with self._lock:
            self._check_writable()
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
            _pwrite_all(new_fd, [_HEADER.pack(_MAGIC, FORMAT_VERSION, 0)], 0)
            # Copy the kept records byte for byte: no re-encoding, and their checksums stay.
            src, dst = cut, HEADER_SIZE
            while src < self._end:
                chunk = os.pread(self._fd, min(_COPY_CHUNK, self._end - src), src)
                if not chunk:
                    raise OSError(f"journal shrank while compacting (at offset {src})")
                _pwrite_all(new_fd, [chunk], dst)
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
                _pwrite_all(fd, [piece], offset)
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

    def close(self) -> None:
        """Persist the commit index and release the files. Entries stay readable; idempotent."""
        with self._lock:
            if self._state is JournalState.CLOSED:
                return
            try:
                if self._state is JournalState.OPEN:
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


# -- plugging into PySyncObj ------------------------------------------------------------------


def make_syncobj_journal_factory(*, sync: bool = True) -> Callable[[str | None], Any]:
    """Return a replacement for ``pysyncobj.syncobj.createJournal``.

    ``SyncObj.__init__`` creates its log with ``createJournal(conf.journalFile)``, looking the
    name up in ``pysyncobj.syncobj``'s module globals at that moment. The returned factory gives
    a :class:`DurableJournal` for a journal file, and PySyncObj's ``MemoryJournal`` when
    ``journalFile`` is None (a node that asked for no persistence). Install it only while a
    ``SyncObj`` is being constructed, e.g. with :func:`durable_journal_for_syncobj`.
    """

    def create_journal(journal_file: str | None) -> Any:
        if journal_file is None:
            return MemoryJournal()
        return DurableJournal(journal_file, sync=sync)

    return create_journal


_factory_lock = threading.RLock()


@contextlib.contextmanager
def durable_journal_for_syncobj(*, sync: bool = True) -> Iterator[None]:
    """Make ``SyncObj`` instances constructed inside this block use a :class:`DurableJournal`.

    The replacement is process-wide while the block runs (PySyncObj offers no per-instance
    hook), so keep the block around the constructor only. A lock serialises such blocks
    across threads; nesting in one thread is allowed.

    Example::

        with durable_journal_for_syncobj():
            node = MySyncObj(self_addr, partners, SyncObjConf(journalFile="/var/lib/x/raft.log"))
    """
    with _factory_lock:
        saved = pysyncobj.syncobj.createJournal
        pysyncobj.syncobj.createJournal = make_syncobj_journal_factory(sync=sync)
        try:
            yield
        finally:
            pysyncobj.syncobj.createJournal = saved
