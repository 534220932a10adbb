"""PySyncObj's Raft messages on the wire: their exact shapes, and cbor2 in place of pickle.

PySyncObj's stock transport pickles every message, so one frame sent to its Raft port runs
arbitrary code (``libraries.md`` defect 4).  Here a message is a cbor2 map of plain values,
and what arrives must match one of PySyncObj's message shapes (:data:`_SHAPES`) exactly:

* :func:`encode_raft_message` checks a message PySyncObj hands us and encodes it;
* :func:`decode_raft_message` decodes a RAFT frame's body, rejecting every cbor tag (no
  datetime, set, bignum, regex... construction), indefinite lengths, duplicate keys,
  non-string keys and trailing bytes, then checks the shape;
* :func:`check_raft_message` is the shape check both use.

Nothing here does I/O or touches the session's MACs: only a frame whose MAC verified
(``session.py``) reaches :func:`decode_raft_message`.

**Large entries** (defect 5).  PySyncObj sends a single entry of ``appendEntriesBatchSizeBytes``
or more through a chunked "transmission" path that is buggy and unpickles what it receives;
the caller raises that setting above the largest entry, and this transport refuses to send or
accept "transmission" messages at all.  A raised batch size lets PySyncObj put many entries in
one message; an AppendEntries larger than :data:`APPEND_CHUNK_TARGET` is split
(:func:`split_append_entries`) into consecutive AppendEntries (each one's
``prevLogIdx``/``prevLogTerm`` is the previous one's last entry), which Raft treats exactly
like the original, so the frame limit only bounds a single entry.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import cbor2

__all__ = [
    "APPEND_CHUNK_TARGET",
    "RaftMessageError",
    "check_raft_message",
    "decode_raft_message",
    "encode_raft_message",
    "split_append_entries",
]

#: An AppendEntries whose commands add up to more than this is split (see the module docstring).
APPEND_CHUNK_TARGET: Final = 8 * 1024 * 1024

_MAX_U63: Final = (1 << 63) - 1


class RaftMessageError(ValueError):
    """A payload that is not one of PySyncObj's messages, or a message we refuse to carry."""


# PySyncObj's messages (syncobj.py 0.3.17), field by field.  Every key set below is exact:
# a message with a missing or an extra key is not one PySyncObj sends.


def _is_index(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_U63


def _is_index_or_none(value: object) -> bool:
    return value is None or _is_index(value)


def _is_time(value: object) -> bool:
    # A reading of time.monotonic(): a finite float, never negative on Linux.
    return type(value) is float and math.isfinite(value) and value >= 0.0


def _is_bool(value: object) -> bool:
    return type(value) is bool


def _is_command(value: object) -> bool:
    # PySyncObj reads the command type from the first byte (``ord(command[:1])``).
    return type(value) is bytes and len(value) > 0


def _is_fail_reason(value: object) -> bool:
    return type(value) is int and 0 <= value <= 255


def _is_entries(value: object) -> bool:
    # Lists on the wire (cbor2 has no tuples); PySyncObj's journal turns each back into a tuple.
    if type(value) is not list and type(value) is not tuple:
        return False
    for entry in value:
        if (type(entry) is not list and type(entry) is not tuple) or len(entry) != 3:
            return False
        command, index, term = entry
        if not (_is_command(command) and _is_index(index) and _is_index(term)):
            return False
    return True


def _is_snapshot_chunk(value: object) -> bool:
    # serializer.getTransmissionData(): None while no snapshot is ready, else
    # (data, isFirst, isLast); the last chunk is empty.
    if value is None:
        return True
    if (type(value) is not list and type(value) is not tuple) or len(value) != 3:
        return False
    data, first, last = value
    return type(data) is bytes and _is_bool(first) and _is_bool(last)


_Shape = Mapping[str, Callable[[object], bool]]

_APPEND_ENTRIES: Final[_Shape] = {
    "term": _is_index,
    "commit_index": _is_index,
    "entries": _is_entries,
    # None when the leader no longer has the previous entry (the follower resets).
    "prevLogIdx": _is_index_or_none,
    "prevLogTerm": _is_index_or_none,
}
_INSTALL_SNAPSHOT: Final[_Shape] = {
    "term": _is_index,
    "commit_index": _is_index,
    "serialized": _is_snapshot_chunk,
}
_NEXT_NODE_IDX: Final[_Shape] = {"next_node_idx": _is_index, "reset": _is_bool, "success": _is_bool}

# HardenedSyncObj's additions for linearizable reads (raft/reads.py, "Linearizable reads"): a
# leader tags every append_entries with its current read round; a follower's answer echoes
# the tag (None when the request had none) and carries its term, as Raft's responses do.
_READ_ROUND: Final[_Shape] = {"read_round": _is_index}
_ANSWER: Final[_Shape] = {"term": _is_index, "read_round": _is_index_or_none}
# The leader lease (raft/lease.py): an append_entries carries the leader's monotonic clock at
# sending, which the answer echoes; the RequestVote of an election a TimeoutNow started says so.
_SENT_AT: Final[_Shape] = {"sent_at": _is_time}
_REQUEST_VOTE: Final[_Shape] = {
    "term": _is_index,
    "last_log_index": _is_index,
    "last_log_term": _is_index,
}

_SHAPES: Final[Mapping[str, tuple[_Shape, ...]]] = {
    "request_vote": (_REQUEST_VOTE, {**_REQUEST_VOTE, "transfer": _is_bool}),
    "response_vote": ({"term": _is_index},),
    "timeout_now": ({"term": _is_index},),
    "append_entries": (
        _APPEND_ENTRIES,
        _INSTALL_SNAPSHOT,
        {**_APPEND_ENTRIES, **_READ_ROUND},
        {**_INSTALL_SNAPSHOT, **_READ_ROUND},
        {**_APPEND_ENTRIES, **_READ_ROUND, **_SENT_AT},
        {**_INSTALL_SNAPSHOT, **_READ_ROUND, **_SENT_AT},
    ),
    "next_node_idx": (
        _NEXT_NODE_IDX,
        {**_NEXT_NODE_IDX, **_ANSWER},
        {**_NEXT_NODE_IDX, **_ANSWER, **_SENT_AT},
    ),
    "apply_command": (
        {"command": _is_command},
        {"command": _is_command, "request_id": _is_index},
    ),
    "apply_command_response": (
        {"request_id": _is_index, "log_idx": _is_index, "log_term": _is_index},
        {"request_id": _is_index, "error": _is_fail_reason},
    ),
    # HardenedSyncObj's ReadIndex for followers (raft/remote.py): a member asks the leader for
    # its read index, which the leader answers (0 and not confirmed when it does not lead).
    "read_index": ({"request": _is_index},),
    "read_index_answer": (
        {"request": _is_index, "index": _is_index, "confirmed": _is_bool},
    ),
}


def check_raft_message(message: object) -> dict[str, Any]:
    """Check that ``message`` is exactly one of PySyncObj's messages; return it as a dict.

    Raises:
        RaftMessageError: not a message PySyncObj sends, or one we refuse to carry.
    """
    if type(message) is not dict:
        raise RaftMessageError(f"a raft message is a map, not {type(message).__name__}")
    kind = message.get("type")
    if type(kind) is not str:
        raise RaftMessageError("a raft message has no 'type'")
    if "transmission" in message:
        # Only produced for an entry >= appendEntriesBatchSizeBytes (defect 5); the receiver
        # would unpickle the reassembled chunks.  The caller must raise the batch size.
        raise RaftMessageError(
            "PySyncObj's chunked 'transmission' path is refused: an entry reached "
            "appendEntriesBatchSizeBytes; raise that setting above the largest entry"
        )
    shapes = _SHAPES.get(kind)
    if shapes is None:
        raise RaftMessageError(f"unknown raft message type {kind!r}")
    keys = message.keys() - {"type"}
    for shape in shapes:
        if keys == shape.keys():
            for field, valid in shape.items():
                if not valid(message[field]):
                    raise RaftMessageError(f"bad field {field!r} in a {kind!r} message")
            return message
    raise RaftMessageError(f"unexpected fields {sorted(keys)!r} in a {kind!r} message")


def encode_raft_message(message: Mapping[str, Any]) -> bytes:
    """Check one of PySyncObj's messages and encode it with cbor2 (tuples become arrays).

    Raises:
        RaftMessageError: not a message PySyncObj sends, or one we refuse to carry.
    """
    checked = check_raft_message(dict(message) if type(message) is not dict else message)
    return cbor2.dumps(checked)


class _RejectEveryTag(Mapping[int, Callable[..., object]]):
    """cbor2's ``semantic_decoders``: looked up for every tag, it answers "reject" for all.

    cbor2 builds datetimes, sets, bignums, decimals, regexes, UUIDs, IP addresses and shared
    references from tags on its own; PySyncObj's messages contain none, so none may be built.
    """

    def __getitem__(self, tag: int) -> Callable[..., object]:
        return _reject_tag

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _reject_tag(*args: object) -> object:
    raise RaftMessageError("cbor tags are not allowed in raft messages")


_REJECT_EVERY_TAG: Final = _RejectEveryTag()


def decode_raft_message(body: bytes) -> dict[str, Any]:
    """Decode a RAFT frame's body (its MAC already verified) and check its shape.

    Returns:
        The message as PySyncObj expects it (lists where PySyncObj sent tuples).

    Raises:
        RaftMessageError: not exactly one well-formed cbor item of a known message shape.
    """
    stream = io.BytesIO(body)
    decoder = cbor2.CBORDecoder(
        stream,
        tag_hook=_reject_tag,
        semantic_decoders=_REJECT_EVERY_TAG,
        max_depth=3,  # message → entries → entry
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
    )
    try:
        message = decoder.decode()
    except Exception as exc:  # cbor2 raises several types; all mean "not a message"
        raise RaftMessageError(f"undecodable raft message: {exc}") from exc
    if stream.tell() != len(body):
        raise RaftMessageError("trailing bytes after a raft message")
    return check_raft_message(message)


def split_append_entries(message: dict[str, Any], target: int) -> list[dict[str, Any]]:
    """Split a large AppendEntries into consecutive ones (see the module docstring).

    Args:
        message: a checked message (:func:`check_raft_message`); anything but an
            AppendEntries with entries adding up to more than ``target`` comes back alone.
        target: the budget of one part, in command bytes plus a fixed overhead per entry.
    """
    entries = message.get("entries")
    if not entries or len(entries) < 2:
        return [message]
    costs = [len(entry[0]) + 64 for entry in entries]  # 64: cbor overhead of idx/term/arrays
    if sum(costs) <= target:
        return [message]
    parts: list[dict[str, Any]] = []
    prev_idx, prev_term = message["prevLogIdx"], message["prevLogTerm"]
    current: list[Any] = []
    size = 0
    for entry, cost in zip(entries, costs, strict=True):
        if current and size + cost > target:
            parts.append(
                {**message, "entries": current, "prevLogIdx": prev_idx, "prevLogTerm": prev_term}
            )
            prev_idx, prev_term = current[-1][1], current[-1][2]
            current, size = [], 0
        current.append(entry)
        size += cost
    parts.append({**message, "entries": current, "prevLogIdx": prev_idx, "prevLogTerm": prev_term})
    return parts
