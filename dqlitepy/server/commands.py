"""The commands a replicated node writes to the Raft log, and their cbor2 encoding.

Every command is a cbor2 map with ``v`` (:data:`COMMAND_VERSION`) and ``t`` (its kind):

- ``frames``: the pages of one commit to database ``db`` — ``ps`` (page size),
  ``size`` (the database's size in pages after it), ``pages`` ([page number,
  page image] pairs) — tagged with ``origin`` ([node id, sequence], unique per
  commit) and what the leader built it on: ``after``, the origin of the
  commit before it, while that one was still in flight (a pipelined commit,
  version 2), else ``base``, the index of the last FRAMES entry of ``db``.
  Every node skips a command that does not build on its own last FRAMES entry
  of ``db``: it was built on a deposed leader's state or on a failed commit.
  A commit larger than :data:`PART_BYTES` travels as several entries, ``part``
  of ``parts``.
- ``member``: a member's dqlite ``id`` and ``address``, or its removal
  (``removed``; entries written before roles moved into Raft say ``role`` -1).
- ``cluster``: the cluster's ``id`` (``datadir.py``), which every member
  records in its ``cluster.json``; the first one in the log counts, later
  ones are ignored.  Versions before it skip it as a kind they do not know.

The empty command is the no-op entry each new leader appends (its barrier).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

__all__ = [
    "COMMAND_VERSION",
    "ClusterId",
    "PART_BYTES",
    "Frames",
    "InvalidCommand",
    "Member",
    "Page",
    "decode",
    "encode_cluster_id",
    "encode_frames",
    "encode_member",
    "split_pages",
]

COMMAND_VERSION = 1
#: A pipelined ``frames`` command (``after``): nodes older than that skip it
#: loudly, as an unknown version, instead of judging it by ``base`` alone.
CHAINED_VERSION = 2
#: A commit's pages per Raft entry: one entry must fit in one transport frame
#: (64 MiB), and smaller entries keep heartbeats flowing between them.
PART_BYTES = 16 * 1024 * 1024

#: (page number, page image)
Page = tuple[int, bytes]


class InvalidCommand(ValueError):
    """An entry no version of dqlitepy wrote (the message completes "entry N ...")."""


@dataclass(frozen=True, slots=True)
class Frames:
    """A ``frames`` command: one commit's pages, or one part of them."""

    db: str
    base: int
    origin: tuple[int, int]
    page_size: int
    db_size: int
    pages: list[Page]
    part: int = 0
    parts: int = 1
    #: The origin of the commit this one was built on (None: built on ``base``).
    after: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Member:
    """A ``member`` command: a member's id, or its removal."""

    address: str
    node_id: int
    removed: bool


@dataclass(frozen=True, slots=True)
class ClusterId:
    """A ``cluster`` command: the cluster's id."""

    cluster_id: str


def decode(command: bytes) -> Frames | Member | ClusterId | None:
    """Decode a non-empty command; None for a kind this version does not know.

    Raises:
        InvalidCommand: not a cbor2 map of a known version.
    """
    try:
        decoded = cbor2.loads(command)
    except Exception as exc:
        raise InvalidCommand("is not a dqlitepy command") from exc
    if not isinstance(decoded, dict) or decoded.get("v") not in (COMMAND_VERSION, CHAINED_VERSION):
        raise InvalidCommand("has an unknown command version")
    kind = decoded.get("t")
    if kind == "member":
        # Entries written before roles moved into Raft mark a removal with role -1.
        removed = bool(decoded.get("removed")) or int(decoded.get("role", 0)) < 0
        return Member(str(decoded["address"]), 0 if removed else int(decoded["id"]), removed)
    if kind == "cluster":
        cluster_id = decoded.get("id")
        if not isinstance(cluster_id, str) or not cluster_id or "\0" in cluster_id:
            raise InvalidCommand("names no valid cluster id")
        return ClusterId(cluster_id)
    if kind == "frames":
        after = decoded.get("after")
        return Frames(
            db=str(decoded["db"]),
            base=int(decoded["base"]),
            origin=(int(decoded["origin"][0]), int(decoded["origin"][1])),
            page_size=int(decoded["ps"]),
            db_size=int(decoded["size"]),
            pages=[(int(p), bytes(d)) for p, d in decoded["pages"]],
            part=int(decoded.get("part", 0)),
            parts=int(decoded.get("parts", 1)),
            after=None if after is None else (int(after[0]), int(after[1])),
        )
    return None


def split_pages(pages: tuple[Page, ...]) -> list[list[Page]]:
    """Cut a commit's pages into runs of at most PART_BYTES (at least one page each)."""
    if pages and len(pages) * len(pages[0][1]) <= PART_BYTES:
        # The usual commit, in one part (a database's pages are all of one size).
        return [list(pages)]
    parts: list[list[Page]] = [[]]
    size = 0
    for pgno, page in pages:
        if parts[-1] and size + len(page) > PART_BYTES:
            parts.append([])
            size = 0
        parts[-1].append((pgno, page))
        size += len(page)
    return parts


def encode_frames(frames: Frames) -> bytes:
    """The ``frames`` entry that :func:`decode` turns back into ``frames``."""
    command: dict[str, Any] = {
        "v": COMMAND_VERSION if frames.after is None else CHAINED_VERSION,
        "t": "frames",
        "db": frames.db,
        "base": frames.base,
        "origin": list(frames.origin),
        "ps": frames.page_size,
        "size": frames.db_size,
        # (page number, image) pairs: cbor2 writes a tuple as the same array as a list.
        "pages": frames.pages,
    }
    if frames.parts > 1:
        command.update(part=frames.part, parts=frames.parts)
    if frames.after is not None:
        command["after"] = list(frames.after)
    return cbor2.dumps(command)


def encode_member(node_id: int, address: str, *, removed: bool = False) -> bytes:
    """A ``member`` command: record ``node_id`` at ``address``, or its removal."""
    fields: dict[str, Any] = {"id": node_id, "address": address}
    if removed:
        fields["removed"] = True
    return cbor2.dumps({"v": COMMAND_VERSION, "t": "member", **fields})


def encode_cluster_id(cluster_id: str) -> bytes:
    """A ``cluster`` command: the cluster's id."""
    return cbor2.dumps({"v": COMMAND_VERSION, "t": "cluster", "id": cluster_id})
