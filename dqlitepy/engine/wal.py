"""WAL frames: reading what a transaction committed, and applying pages elsewhere.

The unit of replication is the set of pages one write transaction committed
(``docs/replication.md``, rule 2).  On the leader, SQLite commits into its ``-wal`` file and
the WAL hook reports how many frames the WAL holds; :class:`WalTracker` reads
the frames appended since its last position and splits them into transactions
at the commit markers.  Logical frames travel — page number, page image,
database size after commit — never offsets or salts, so checkpoints and WAL
restarts stay local to each node.

On followers, :func:`apply_pages` writes page images straight into a database
file that no connection has open.  That is not crash-atomic, which is fine
because the Raft log is the truth: a node rebuilds its files from snapshot and
log after a crash (``docs/replication.md``, rule 1).

WAL layout (https://www.sqlite.org/fileformat2.html#walformat): a 32-byte
header (magic, version, page size, checkpoint sequence, salt-1, salt-2, two
checksums), then frames of a 24-byte header (page number, database size in
pages for a commit frame else 0, salt-1, salt-2, two checksums) and one page.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Transaction",
    "WalError",
    "WalTracker",
    "apply_pages",
    "committed_prefix",
    "prefix_length",
]

_WAL_HEADER = struct.Struct(">IIIIIIII")
_FRAME_HEADER = struct.Struct(">IIIIII")
_WAL_MAGICS = (0x377F0682, 0x377F0683)
_WAL_HEADER_SIZE = 32
_FRAME_HEADER_SIZE = 24


class WalError(Exception):
    """The WAL file does not look like SQLite wrote it."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """The pages one committed write transaction changed.

    Attributes:
        pages: ``(page number, page image)`` in commit order; a page written
            twice appears twice, and the last image wins.
        db_size: the database size in pages after the commit.
        page_size: the database's page size in bytes.
    """

    pages: tuple[tuple[int, bytes], ...]
    db_size: int
    page_size: int


@dataclass(slots=True)
class WalTracker:
    """Follows one database's ``-wal`` file from the leader's side.

    ``frames`` is how many frames of the current WAL generation have been read;
    a new generation (SQLite restarted the WAL after a checkpoint, with new
    salts) resets it.

    The file stays open between reads (opening it cost every commit a path
    lookup): SQLite restarts a WAL in place, and every other change of the
    file at ``path`` (a rebuild, a snapshot swapped in) unlinks the old one
    first, which :meth:`read` notices (its open file has no link left) and
    reopens ``path``.  :meth:`close` closes it.
    """

    path: Path
    frames: int = 0
    salts: tuple[int, int] | None = None
    _pending: list[tuple[int, bytes]] = field(default_factory=list)
    _fd: int = -1

    def read(self, total_frames: int) -> list[Transaction]:
        """Read frames up to ``total_frames`` (what the WAL hook reported).

        Returns the transactions whose commit frame was read.  Frames of a
        transaction still open (spilled pages) are kept until their commit.

        Raises:
            WalError: the header or a frame is not valid.
        """
        fd = self._open()
        try:
            header = os.pread(fd, _WAL_HEADER_SIZE, 0)
            if len(header) < _WAL_HEADER_SIZE:
                raise WalError(f"{self.path}: WAL header is truncated")
            magic, _version, page_size, _seq, salt1, salt2, _c1, _c2 = _WAL_HEADER.unpack(header)
            if magic not in _WAL_MAGICS:
                raise WalError(f"{self.path}: bad WAL magic {magic:#x}")
            if (salt1, salt2) != self.salts:
                # A new WAL generation: SQLite rewrote the file from frame 1.
                self.salts = (salt1, salt2)
                self.frames = 0
                self._pending.clear()
            if total_frames < self.frames:
                raise WalError(
                    f"{self.path}: WAL shrank from {self.frames} to {total_frames} frames"
                )
            frame_size = _FRAME_HEADER_SIZE + page_size
            start = _WAL_HEADER_SIZE + self.frames * frame_size
            count = total_frames - self.frames
            data = os.pread(fd, count * frame_size, start)
        except BaseException:
            self.close()  # the next read starts from a fresh open
            raise
        if len(data) < count * frame_size:
            raise WalError(f"{self.path}: WAL ends before frame {total_frames}")
        transactions: list[Transaction] = []
        view = memoryview(data)
        for i in range(count):
            offset = i * frame_size
            pgno, commit_size, fsalt1, fsalt2, _c1, _c2 = _FRAME_HEADER.unpack_from(view, offset)
            if (fsalt1, fsalt2) != self.salts:
                raise WalError(f"{self.path}: frame {self.frames + i + 1} has stale salts")
            page = bytes(view[offset + _FRAME_HEADER_SIZE : offset + frame_size])
            self._pending.append((pgno, page))
            if commit_size:
                transactions.append(Transaction(tuple(self._pending), commit_size, page_size))
                self._pending.clear()
        self.frames = total_frames
        return transactions

    def _open(self) -> int:
        """The WAL's descriptor: the one kept open while the file is still linked."""
        fd = self._fd
        if fd >= 0:
            if os.fstat(fd).st_nlink:
                return fd
            self.close()  # unlinked: SQLite writes to a new file at ``path`` now
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return self._fd

    def close(self) -> None:
        """Close the WAL file kept open (the next :meth:`read` opens it again)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        # A tracker dropped without close() (a database forgotten) must not leak its file.
        with contextlib.suppress(OSError):
            self.close()


def committed_prefix(wal: Path, salts: tuple[int, int] | None, frames: int) -> int:
    """Bytes of ``wal`` that hold the header and the first ``frames`` committed frames.

    0 when the WAL belongs to another generation than ``salts`` (SQLite restarted
    it after a complete checkpoint, so all it holds came later) or is missing.
    """
    try:
        with wal.open("rb") as f:
            header = f.read(_WAL_HEADER_SIZE)
    except FileNotFoundError:
        return 0
    return prefix_length(header, salts, frames)


def prefix_length(header: bytes, salts: tuple[int, int] | None, frames: int) -> int:
    """:func:`committed_prefix` of a WAL whose first bytes are ``header`` (a copy, say).

    0 if ``header`` is shorter than a WAL header or of another generation than ``salts``.
    """
    if salts is None or len(header) < _WAL_HEADER_SIZE:
        return 0
    _magic, _version, page_size, _seq, salt1, salt2, _c1, _c2 = _WAL_HEADER.unpack_from(header)
    if (salt1, salt2) != salts:
        return 0
    return int(_WAL_HEADER_SIZE + frames * (_FRAME_HEADER_SIZE + page_size))


def apply_pages(path: Path, *transactions: Transaction) -> None:
    """Write transactions' pages, in order, into a database file nobody has open.

    The file is created if needed and truncated to the size after the last
    commit (a VACUUM can shrink it).  Not synced: the Raft log is what is durable.
    """
    if not transactions:
        return
    flags = os.O_RDWR | os.O_CREAT
    fd = os.open(path, flags, 0o644)
    try:
        for transaction in transactions:
            size = transaction.page_size
            for pgno, page in transaction.pages:
                if pgno <= transaction.db_size:
                    os.pwrite(fd, page, (pgno - 1) * size)
            # Each commit's own size: a later commit may grow the file again.
            os.ftruncate(fd, transaction.db_size * size)
    finally:
        os.close(fd)
