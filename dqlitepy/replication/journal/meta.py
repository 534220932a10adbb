"""The metadata file: term, vote and commit index, in two slots updated in turn.

``PATH.meta``
    two 4096-byte slots, each ``magic "DQPYMETA" | u32 version (1) | u32 crc32(rest) |
    u64 sequence | u32 length | payload | zero padding``, payload the CBOR map
    ``{"term": int, "voted_for": str | None, "commit": int}``. An update overwrites the slot not
    holding the newest state and syncs it; the valid slot with the highest sequence wins. A
    crash in the middle of an update therefore leaves the previous state readable, and an
    update costs one ``fdatasync`` of an in-place block (no rename, no directory sync).
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass

import cbor2

from .errors import JournalCorruptError, JournalError

__all__ = ["SLOT_SIZE", "Meta", "encode_slot", "read_meta_file"]

log = logging.getLogger("dqlitepy.replication.journal")

_META_MAGIC = b"DQPYMETA"
_META_VERSION = 1
SLOT_SIZE = 4096  # one file-system block: a torn slot write cannot touch the other slot
_SLOT_HEAD = struct.Struct("<8sII")  # magic, version, crc32 of everything after it
_SLOT_BODY = struct.Struct("<QI")  # sequence, payload length


@dataclass(frozen=True)
class Meta:
    """Term, vote and commit index, as one slot holds them."""

    term: int = 0
    voted_for: str | None = None
    commit: int = 0  # as stored: never beyond the last entry; 0 = nothing known


def encode_slot(sequence: int, meta: Meta) -> bytes:
    """The 4096 bytes of a slot holding ``meta`` as update number ``sequence``."""
    payload = cbor2.dumps({"term": meta.term, "voted_for": meta.voted_for, "commit": meta.commit})
    body = _SLOT_BODY.pack(sequence, len(payload)) + payload
    if _SLOT_HEAD.size + len(body) > SLOT_SIZE:
        raise ValueError(f"metadata of {len(payload)} bytes does not fit in a slot (node id?)")
    slot = _SLOT_HEAD.pack(_META_MAGIC, _META_VERSION, zlib.crc32(body)) + body
    return slot.ljust(SLOT_SIZE, b"\0")


def _decode_slot(slot: bytes, path: str) -> tuple[int, Meta] | None:
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
    return sequence, Meta(term=term, voted_for=voted_for, commit=commit)


def read_meta_file(path: str) -> tuple[int, Meta]:
    """The newest valid state in a metadata file, with its sequence number."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) != 2 * SLOT_SIZE:
        # Created at full size by an atomic rename and only ever overwritten in place.
        raise JournalCorruptError(f"{path}: metadata file has {len(data)} bytes, not 8192")
    slots = [_decode_slot(data[i * SLOT_SIZE : (i + 1) * SLOT_SIZE], path) for i in (0, 1)]
    valid = [slot for slot in slots if slot is not None]
    if not valid:
        # Falling back to "term 0, no vote" could let this node vote twice in one term.
        raise JournalCorruptError(f"{path}: both metadata slots are damaged")
    for i, slot in enumerate(slots):
        if slot is None and data[i * SLOT_SIZE : (i + 1) * SLOT_SIZE].count(0) != SLOT_SIZE:
            # Expected after a crash in the middle of an update, which had not returned yet.
            log.warning("%s: metadata slot %d is damaged (interrupted update?)", path, i)
    return max(valid, key=lambda slot: slot[0])
