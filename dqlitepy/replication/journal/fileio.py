"""The few system calls the journal's durability rests on, each done completely.

``fdatasync`` uses ``F_FULLFSYNC`` where it exists (macOS), ``pwrite_all`` writes any
number of buffers and finishes a short write, ``read_all`` reads a whole file through a
descriptor.
"""

from __future__ import annotations

import fcntl
import os

__all__ = ["fdatasync", "fsync_dir", "pwrite_all", "read_all"]


def _iov_max() -> int:
    try:
        limit = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        limit = -1
    # POSIX guarantees at least 16 (_XOPEN_IOV_MAX): assume that when nothing is reported.
    return limit if limit >= 16 else 16


#: How many buffers one pwritev takes (1024 on Linux).
_IOV_MAX = _iov_max()


def fdatasync(fd: int) -> None:
    # Looked up on every call (not bound at import) so that tests can count the calls.
    full_fsync = getattr(fcntl, "F_FULLFSYNC", None)
    if full_fsync is not None:
        # macOS: fsync() only reaches the drive's cache; F_FULLFSYNC is what makes data durable.
        fcntl.fcntl(fd, full_fsync)
        return
    sync = getattr(os, "fdatasync", None)
    (sync if sync is not None else os.fsync)(fd)


def fsync_dir(directory: str) -> None:
    # A rename or a file creation is durable only once the directory itself is synced.
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pwrite_all(fd: int, parts: list[bytes], offset: int) -> None:
    # pwritev writes a record's header and a multi-MiB command without concatenating them,
    # and a batch of records in one call; it refuses more than IOV_MAX buffers (EINVAL, which
    # would look like a failing disk), so a large batch goes in groups.
    for start in range(0, len(parts), _IOV_MAX):
        group = parts[start : start + _IOV_MAX]
        _pwritev_all(fd, group, offset)
        offset += sum(len(p) for p in group)


def _pwritev_all(fd: int, parts: list[bytes], offset: int) -> None:
    # A short write (possible for large buffers, e.g. when a fatal signal arrives) is
    # finished with pwrite.
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


def read_all(fd: int) -> bytes:
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
