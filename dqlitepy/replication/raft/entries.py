"""What the Raft log holds, and how it is decoded without PySyncObj's pickle.

**Pickle (PySyncObj defect 4).**  Commands are cbor2 (our own encoding,
applied through an overridden ``__doApplyCommand``); PySyncObj's own
membership entries are unpickled with a whitelist; chunked "transmission"
messages (the buggy large-entry path, defect 5, which also unpickles) are
refused (:mod:`.append_entries`) — the batch size is configured
(:func:`~.config.raft_config`) so PySyncObj never produces them.

An entry is PySyncObj's command type byte followed by its payload:
``REGULAR`` (a dqlitepy command, opaque bytes here), ``NO_OP`` (each leader's
first entry), ``MEMBERSHIP`` (``["role", address, old, new]`` in cbor2, see
:mod:`.roles`, or PySyncObj's own pickled add/rem entry) or ``VERSION``.
"""

from __future__ import annotations

import io
import logging
import pickle
from typing import Any

import cbor2

from ...wire import NodeRole
from .base import RaftBase
from .config import MEMBERSHIP, NO_OP, REGULAR, ApplyHandler

__all__ = [
    "EntriesMixin",
    "membership_request",
    "role_change",
    "role_change_of",
    "safe_unpickle",
]

log = logging.getLogger("dqlitepy.replication")


class _WhitelistUnpickler(pickle.Unpickler):
    """Builds only plain data and :class:`~.config.PeerNode` (PySyncObj's membership entries)."""

    _ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("dqlitepy.replication.raft", "PeerNode"),
            ("pysyncobj.node", "Node"),
            ("pysyncobj.node", "TCPNode"),
            ("copyreg", "_reconstructor"),
            ("builtins", "object"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def safe_unpickle(data: bytes) -> Any:
    """Unpickle PySyncObj's own membership/version entries with a whitelist."""
    return _WhitelistUnpickler(io.BytesIO(data)).load()


def role_change(address: str, old: int | None, new: int | None) -> bytes:
    """The membership entry moving ``address`` from role ``old`` to ``new`` (None: not a member)."""
    return bytes([MEMBERSHIP]) + cbor2.dumps(["role", address, old, new])


class EntriesMixin(RaftBase):
    """Applies committed entries through dqlitepy's handler; decodes membership entries."""

    _dqlitepy_apply: ApplyHandler

    def _init_entries(self, apply: ApplyHandler) -> None:
        self._dqlitepy_apply = apply

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:
        kind = command[0] if command else NO_OP
        if kind == REGULAR:
            index = self._SyncObj__raftLastApplied + 1
            submitted = self._submitted.pop(index, None)
            if submitted is not None and submitted[0] is command:
                # This node's log entry of a command it submitted (the same object,
                # so the same bytes): the command as submitted, with what the
                # submitter said it decodes to.
                return self._dqlitepy_apply(index, submitted[1], submitted[2])
            return self._dqlitepy_apply(index, bytes(command[1:]), None)
        if kind == NO_OP:
            # Each leader's first entry: the application learns a term began.
            return self._dqlitepy_apply(self._SyncObj__raftLastApplied + 1, b"", None)
        # MEMBERSHIP entries took effect when appended; VERSION entries (we never
        # change the code version) do nothing.
        return None

    def _SyncObj__parseChangeClusterRequest(self, command: bytes) -> Any:
        return membership_request(command)


def membership_request(command: bytes) -> Any:
    """The change a MEMBERSHIP entry's command holds, decoded; None for any other entry."""
    if not command or command[0] != MEMBERSHIP:
        return None
    payload = bytes(command[1:])
    try:
        # A pickle is PySyncObj's own add/rem entry; ours are cbor2.
        pickled = payload[:1] == b"\x80"
        return safe_unpickle(payload) if pickled else cbor2.loads(payload)
    except Exception:
        log.error("ignoring an undecodable membership entry")
        return None


def role_change_of(request: Any, *, reverse: bool = False) -> tuple[str, int | None] | None:
    """The member and the role (None: not a member) a decoded membership change gives.

    ``reverse``: the role it took away instead (undoing a truncated entry).  None
    for a request that is no role change.
    """
    if isinstance(request, list) and len(request) == 4 and request[0] == "role":
        _, address, old, new = request
        return str(address), old if reverse else new
    if isinstance(request, list) and len(request) >= 2 and request[0] in ("add", "rem"):
        # PySyncObj's own entries (logs written before roles existed).
        adding = (request[0] == "add") != reverse
        return str(request[1]), NodeRole.VOTER if adding else None
    return None
