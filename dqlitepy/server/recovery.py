"""Disaster recovery: a member whose cluster lost its quorum for good, brought back alone.

:func:`recover_member` works on a stopped node's data directory: it takes the
directory's lock (so a running node, or a second recovery, is refused), checks
the cluster key against the directory's record, and has the Raft log make this
node the only voter (:class:`~dqlitepy.replication.recovery.OfflineLog`), with
the ``member`` records of the members it drops removed in the same go, so that
``.cluster`` then lists this node alone.  Every entry the node holds is kept.
Started again (``dqlitepy server`` with the same address and key, without
``--join``), the node elects itself, commits its whole log and serves; new nodes
can ``--join`` it.  The cluster keeps its id (``cluster.json`` is not touched,
and the log names the same one): the new nodes take it when they join.  The
procedure and its dangers are in ``docs/backup.md``, "Disaster recovery".

With ``apply=False`` nothing is changed: the result says what the node holds,
so that the operator can pick the survivor with the most recent log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..replication.recovery import LogSummary, OfflineLog, RecoveryError
from .commands import encode_member
from .datadir import DataDirectory, StartupRefused
from .identity import InitialConfiguration, load_node_id

__all__ = ["MemberRecovery", "RecoveryRefused", "recover_member"]


class RecoveryRefused(StartupRefused):
    """The directory cannot be recovered as asked; nothing in it was changed."""


@dataclass(frozen=True, slots=True)
class MemberRecovery:
    """A member's log before and after recovery.

    Attributes:
        node_id: the member's id.
        address: its address (its identity in the cluster).
        before: its log and configuration as they were.
        after: as they are now (the same as ``before`` when nothing was applied).
        cluster_id: the id of its cluster, which the recovery keeps (None: the directory
            records none yet, made by an older version).
    """

    node_id: int
    address: str
    before: LogSummary
    after: LogSummary
    cluster_id: str | None = None

    @property
    def changed(self) -> bool:
        """Whether entries were appended."""
        return self.after.last_index != self.before.last_index

    @property
    def removed(self) -> list[str]:
        """The members the recovery dropped (or would drop)."""
        return [a for a in self.before.roles if a != self.address]


def _own_address(data_dir: Path, configuration: InitialConfiguration, given: str | None) -> str:
    recorded = configuration.address
    if recorded is not None and given is not None and given != recorded:
        raise RecoveryRefused(
            f"data directory {str(data_dir)!r} belongs to the member its cluster knows as "
            f"{recorded}, not {given}: a member keeps its address through a recovery"
        )
    address = recorded or given
    if address is None:
        raise RecoveryRefused(
            f"data directory {str(data_dir)!r} does not record its member's address "
            "(written by an older version): give it with --address"
        )
    return address


def recover_member(
    data_dir: str | os.PathLike[str],
    *,
    cluster_key: bytes | None,
    address: str | None = None,
    apply: bool = True,
) -> MemberRecovery:
    """Make the stopped member in ``data_dir`` the only voter of its cluster.

    Args:
        data_dir: the member's data directory; the member must not run.
        cluster_key: the cluster's key, checked against the directory's record.
        address: the member's address, needed only if the directory does not
            record it (older versions); otherwise it must be the recorded one.
        apply: False: change nothing, only report what the log holds.

    Raises:
        DataDirectoryInUse: a node (or another recovery) holds the directory.
        ClusterIdentityError: the key is missing or not the directory's.
        RecoveryRefused: the directory is no replicated member's, the address
            does not match, or its log cannot be read or written.
    """
    path = Path(data_dir)
    if not path.is_dir():
        raise RecoveryRefused(f"{str(path)!r} is no data directory")
    # What a node started meanwhile is told holds the directory.
    holder = "no address: `dqlitepy recover` is rewriting its Raft log"
    directory = DataDirectory(path, address=holder, cluster_key=cluster_key)
    try:
        configuration = InitialConfiguration.load(path)
        if configuration is None or directory.fresh:
            raise RecoveryRefused(
                f"data directory {str(path)!r} holds no member of a replicated cluster "
                "(no Raft log): nothing to recover"
            )
        own = _own_address(path, configuration, address)
        # Recorded before Raft first started (NodeServer): read, never written here.
        node_id = load_node_id(path, bootstrap=False)
        try:
            with OfflineLog(
                path / "raft", own, configuration.voters, voting=configuration.voting
            ) as raft_log:
                before = raft_log.summary()
                if not apply:
                    return MemberRecovery(node_id, own, before, before, directory.cluster_id)
                # The removed members' ids go too, so the cluster lists this node alone.
                forget = [encode_member(0, a, removed=True) for a in before.roles if a != own]
                after = raft_log.make_sole_voter(forget)
        except RecoveryError as exc:
            raise RecoveryRefused(f"cannot recover {str(path)!r}: {exc}") from exc
        # Later starts begin from this configuration too (the log's entries then agree).
        InitialConfiguration((), voting=True, address=own).save(path)
        return MemberRecovery(node_id, own, before, after, directory.cluster_id)
    finally:
        directory.close()
