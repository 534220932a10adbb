"""A stopped member's Raft log, edited offline to make it the only voter: :class:`OfflineLog`.

When a cluster loses a majority of its voters for good, no leader can be
elected and nothing commits; Raft itself offers no way out.  The operator's
way out (go-dqlite's ``.reconfigure``, C raft's ``raft_recover``) is to give a
surviving member a new configuration in which it is the only voter, so that it
elects itself and commits alone.  Here that new configuration is written the
way every configuration is (``raft/roles.py``): as membership entries at the
end of the log, after every entry the node has, in a new term.  On its next
start the node replays them like any other (they take effect when appended),
leads alone, and commits its whole log with its first entry of its own term —
including entries the old cluster may never have committed, as a new leader
would.  Nothing the node holds is dropped.

The new term (one past any the node has seen) keeps the entries apart from
anything a leader of an earlier term wrote at the same indexes.  That matters
only if an old member comes back: it must not.  The recovered node's voters
refuse connections from peers outside their configuration, so a returning old
member cannot disturb it, but the two would go on as two clusters (see
``docs/backup.md``, "Disaster recovery").

The log must match the snapshot the node starts from.  PySyncObj replaces a
log whose first two entries are not the snapshot's last two by those two
entries alone (which would drop the entries appended here); a log a crash left
uncompacted after its snapshot still holds those two entries further on, and is
compacted here instead, keeping everything after them.

The caller holds the node's data directory (its lock); opening the journal
takes the journal's own lock too, so a running node is refused twice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import cbor2

from ..wire import NodeRole
from .journal import DurableJournal, JournalError
from .raft.config import REGULAR
from .raft.entries import membership_request, role_change, role_change_of

__all__ = ["LogSummary", "OfflineLog", "RecoveryError"]

log = logging.getLogger("dqlitepy.replication")

Entry = tuple[bytes, int, int]


class RecoveryError(Exception):
    """The log cannot be opened or read for recovery; nothing was changed."""


@dataclass(frozen=True, slots=True)
class LogSummary:
    """What a stopped node's Raft log holds.

    Attributes:
        last_index: the index of its last entry.
        last_term: that entry's term.
        term: the latest term the node has seen.
        commit_index: how far the node knew the log to be committed (entries
            after it may or may not have been committed by the cluster).
        snapshot_index: the last entry its snapshot covers (None: no snapshot).
        roles: the configuration it would start with: each member's role.
    """

    last_index: int
    last_term: int
    term: int
    commit_index: int
    snapshot_index: int | None
    roles: Mapping[str, NodeRole]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    previous: Entry
    last: Entry
    roles: dict[str, int] | None
    cluster: tuple[str, ...]


def _entry(value: Any) -> Entry:
    command, index, term = value
    return bytes(command), int(index), int(term)


def _read_snapshot(path: Path) -> _Snapshot | None:
    """The header of the node's snapshot (``replicator.py`` writes it), if it has one."""
    try:
        with path.open("rb") as f:
            header = cbor2.load(f)
    except FileNotFoundError:
        return None
    except Exception as exc:  # any decoding failure: not a snapshot we can trust
        raise RecoveryError(f"{path}: unreadable snapshot: {exc}") from exc
    if not isinstance(header, dict) or "last" not in header:
        raise RecoveryError(f"{path}: not a dqlitepy snapshot")
    roles = header.get("roles")
    return _Snapshot(
        _entry(header["previous"]),
        _entry(header["last"]),
        None if roles is None else {str(a): int(r) for a, r in roles.items()},
        tuple(str(a) for a in header.get("cluster", ())),
    )


class OfflineLog:
    """The Raft log of a node that is not running, opened to make it the only voter.

    Args:
        raft_dir: the node's ``raft`` directory (journal and snapshot).
        address: the node's address (its Raft identity).
        voters: the voters it started Raft with the first time (``initial-voters.cbor``).
        voting: whether it was one of them.

    Raises:
        RecoveryError: there is no journal, it is in use (the node runs), or it
            or the snapshot cannot be read.
    """

    def __init__(
        self, raft_dir: Path, address: str, voters: Sequence[str], *, voting: bool
    ) -> None:
        path = raft_dir / "journal"
        if not path.exists() or not os.path.exists(f"{path}.meta"):
            raise RecoveryError(f"{raft_dir} holds no Raft journal")
        self._address = address
        self._voters = tuple(voters)
        self._voting = voting
        self._snapshot = _read_snapshot(raft_dir / "snapshot")
        try:
            self._journal = DurableJournal(path)
        except JournalError as exc:
            raise RecoveryError(str(exc)) from exc

    def close(self) -> None:
        """Release the journal."""
        self._journal.close()

    def __enter__(self) -> OfflineLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- reading

    def _start_roles(self) -> dict[str, int]:
        """The roles Raft starts from before it replays the log (as ``raft/roles.py``)."""
        roles: dict[str, int] = {a: NodeRole.VOTER for a in self._voters if a != self._address}
        if self._voting:
            roles[self._address] = NodeRole.VOTER
        snapshot = self._snapshot
        if snapshot is not None:
            if snapshot.roles is not None:
                return dict(snapshot.roles)
            voting = roles.get(self._address) == NodeRole.VOTER
            roles = {a: NodeRole.VOTER for a in snapshot.cluster if a != self._address}
            if voting:
                roles[self._address] = NodeRole.VOTER
        return roles

    def _roles(self) -> dict[str, int]:
        roles = self._start_roles()
        for command, _index, _term in self._journal[:]:
            change = role_change_of(membership_request(command))
            if change is None:
                continue
            address, role = change
            if role is None:
                roles.pop(address, None)
            else:
                roles[address] = role
        return roles

    def summary(self) -> LogSummary:
        """What the log holds and the configuration the node would start with."""
        journal = self._journal
        _command, last_index, last_term = journal[-1] if len(journal) else (b"", 0, 0)
        snapshot = self._snapshot
        if snapshot is not None and snapshot.last[1] > last_index:
            last_index, last_term = snapshot.last[1], snapshot.last[2]
        return LogSummary(
            last_index=last_index,
            last_term=last_term,
            term=max(journal.getCurrentTerm(), last_term),
            commit_index=journal.getRaftCommitIndex() if len(journal) else 0,
            snapshot_index=None if snapshot is None else snapshot.last[1],
            roles={a: NodeRole(r) for a, r in sorted(self._roles().items())},
        )

    # ---------------------------------------------------------------- changing

    def _align_with_snapshot(self) -> None:
        """Make the log start with the snapshot's last two entries, as PySyncObj expects."""
        snapshot, journal = self._snapshot, self._journal
        if snapshot is None:
            return
        head = [tuple(e) for e in journal[:2]]
        if head == [snapshot.previous, snapshot.last]:
            return
        position = snapshot.previous[1] - journal[0][1] if len(journal) else -1
        if 0 <= position < len(journal) - 1 and [
            tuple(e) for e in journal[position : position + 2]
        ] == [snapshot.previous, snapshot.last]:
            # A compaction a crash interrupted: everything after the snapshot stays.
            journal.deleteEntriesTo(position)
            log.info("compacted the log up to its snapshot (entry %d)", snapshot.last[1])
            return
        # What PySyncObj would do when the node starts: the log is older than the snapshot.
        journal.clear()
        journal.add_many([snapshot.previous, snapshot.last])
        log.info("replaced the log, older than its snapshot, by the snapshot's entries")

    def make_sole_voter(self, commands: Sequence[bytes] = ()) -> LogSummary:
        """Append the entries that leave this node the only member, a voter; return the result.

        Every other member is removed from the configuration and this node
        made a voter, then ``commands`` (application commands, opaque here)
        follow, all in a new term and synced before this returns.

        Raises:
            RecoveryError: the journal could not be written (what was written
                before the failure is cut off again: the node is as it was).
        """
        try:
            self._align_with_snapshot()
            before = self.summary()
            entries: list[bytes] = [
                role_change(address, role, None)
                for address, role in before.roles.items()
                if address != self._address
            ]
            own = before.roles.get(self._address)
            if own != NodeRole.VOTER:
                entries.append(role_change(self._address, own, NodeRole.VOTER))
            entries.extend(bytes([REGULAR]) + command for command in commands)
            if entries:
                term = before.term + 1
                # The term first: an entry's term never exceeds the node's own.
                self._journal.setCurrentTerm(term, None)
                first = before.last_index + 1
                self._journal.add_many(
                    (command, first + i, term) for i, command in enumerate(entries)
                )
        except (JournalError, OSError) as exc:
            raise RecoveryError(f"the Raft log could not be written: {exc}") from exc
        return self.summary()
