"""The journal file's format: a header, then one checksummed record per entry.

``PATH`` (all integers little-endian unless said otherwise)
    16-byte header ``magic "DQPYRLOG" | u32 format version (1) | u32 flags (0)``, then records
    ``u32 length | u32 crc32(payload) | payload``; payload is the CBOR encoding of
    ``[idx, term, command]`` (two unsigned integers below 2**64 and a byte string), exactly
    what ``cbor2.dumps`` produces.

Reading (:func:`scan_records`) tells a torn tail (a crash in the middle of an append: cut it
off) from damage anywhere else (:class:`~.errors.JournalCorruptError`: nothing is dropped).
"""

from __future__ import annotations

import operator
import struct
import zlib
from dataclasses import dataclass

import cbor2

from .errors import JournalCorruptError, JournalError

__all__ = [
    "FILE_HEADER",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "Entry",
    "Scan",
    "check_header",
    "checked_entry",
    "encode_record",
    "scan_records",
]

#: One log entry as PySyncObj sees it: ``(command, raft index, raft term)``.
Entry = tuple[bytes, int, int]

FORMAT_VERSION = 1
_MAGIC = b"DQPYRLOG"
_HEADER = struct.Struct("<8sII")  # magic, format version, flags
HEADER_SIZE = _HEADER.size
#: The header every journal file starts with.
FILE_HEADER = _HEADER.pack(_MAGIC, FORMAT_VERSION, 0)
_RECORD = struct.Struct("<II")  # payload length, crc32(payload)
_MAX_PAYLOAD = 0xFFFF_FFFF  # the length field is a u32
_PAYLOAD_START = b"\x83"  # CBOR head of a 3-element array: how every record payload begins
# PySyncObj's FileJournal starts with this name; recognising it gives a useful error message.
_PYSYNCOBJ_MAGIC = b"PYSYNCOBJ"


def check_header(data: bytes, path: str) -> None:
    """Raise :class:`~.errors.JournalError` unless ``data`` starts with our header."""
    if data.startswith(_PYSYNCOBJ_MAGIC):
        raise JournalError(
            f"{path} is a PySyncObj FileJournal, not a dqlitepy journal; it cannot be "
            "converted (it was never fsynced): start this node from an empty journal"
        )
    if len(data) < HEADER_SIZE or data[: len(_MAGIC)] != _MAGIC:
        raise JournalError(f"{path} is not a dqlitepy Raft journal (bad magic)")
    _, version, flags = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise JournalError(
            f"{path}: journal format version {version} is not supported "
            f"(this dqlitepy reads version {FORMAT_VERSION})"
        )
    if flags != 0:
        raise JournalError(f"{path}: unknown journal flags {flags:#x}")


def _cbor_head(major: int, value: int) -> bytes:
    """CBOR initial byte(s) for an unsigned integer or a length, shortest form (RFC 8949 §3)."""
    if value < 24:
        return bytes((major << 5 | value,))
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes((major << 5 | extra,)) + value.to_bytes(size, "big")
    raise ValueError(f"{value} does not fit in 64 bits")


def checked_entry(entry: tuple[bytes, int, int]) -> Entry:
    """``entry`` as the journal keeps it, or TypeError / ValueError.

    The command becomes ``bytes`` (a view or bytearray is copied: the entry must not change
    under the journal), the index and term non-negative ints.
    """
    command, idx, term = entry
    if not isinstance(command, bytes | bytearray | memoryview):
        raise TypeError(f"journal command must be bytes, not {type(command).__name__}")
    idx, term = operator.index(idx), operator.index(term)
    if idx < 0 or term < 0:
        raise ValueError(f"negative raft index or term: {idx}, {term}")
    return bytes(command), idx, term


def encode_record(command: bytes, idx: int, term: int) -> list[bytes]:
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
class Scan:
    entries: list[Entry]
    offsets: list[int]  # file offset of each entry's record
    end: int  # end of the last intact record
    dropped: str | None  # why the bytes after ``end`` are not part of the log


def scan_records(buf: bytes, path: str) -> Scan:
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
        return Scan(entries, offsets, pos, _damaged_tail(buf, pos, path))
    return Scan(entries, offsets, pos, None)


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
