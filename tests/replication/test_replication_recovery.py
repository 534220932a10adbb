"""``OfflineLog``: a stopped node's Raft log made the only voter's, on journal files directly.

The multi-process test (``tests/cli/test_recover.py``) runs the whole recovery; these check
the log itself: the configuration it computes from the first configuration, the snapshot and
the membership entries, the entries it appends (a new term, after everything, the node made
a voter), and a log that does not start at its snapshot.
"""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest

from dqlitepy.replication.journal import DurableJournal
from dqlitepy.replication.raft import role_change
from dqlitepy.replication.raft.entries import membership_request, role_change_of
from dqlitepy.replication.recovery import OfflineLog, RecoveryError
from dqlitepy.wire import NodeRole

ME, B, C, D = "10.0.0.1:9001", "10.0.0.2:9001", "10.0.0.3:9001", "10.0.0.4:9001"
NO_OP = b"\x01"


def _command(n: int) -> bytes:
    return b"\x00" + f"command {n}".encode()


def _journal(raft_dir: Path, entries: list[tuple[bytes, int, int]], term: int) -> None:
    raft_dir.mkdir(parents=True, exist_ok=True)
    with DurableJournal(raft_dir / "journal", sync=False) as journal:
        journal.setCurrentTerm(term, None)
        journal.add_many(entries)


def _snapshot(
    raft_dir: Path,
    previous: tuple[bytes, int, int],
    last: tuple[bytes, int, int],
    roles: dict[str, int],
) -> None:
    header = {
        "version": 1,
        "last": list(last),
        "previous": list(previous),
        "cluster": sorted(roles),
        "roles": roles,
    }
    (raft_dir / "snapshot").write_bytes(cbor2.dumps(header) + b"the databases")


def _entries(raft_dir: Path) -> list[tuple[bytes, int, int]]:
    with DurableJournal(raft_dir / "journal", sync=False) as journal:
        return [tuple(e) for e in journal[:]]  # type: ignore[misc]


def test_the_configuration_comes_from_the_first_one_and_the_log(tmp_path: Path) -> None:
    raft = tmp_path / "raft"
    # This node joined B's cluster as a non-voter; the log then made it a voter.
    log = [
        (NO_OP, 1, 1),
        (role_change(ME, None, NodeRole.STANDBY), 2, 1),
        (_command(3), 3, 1),
        (role_change(ME, NodeRole.STANDBY, NodeRole.VOTER), 4, 1),
        (role_change(C, None, NodeRole.VOTER), 5, 2),
        (role_change(D, None, NodeRole.SPARE), 6, 2),
        (_command(7), 7, 2),
    ]
    _journal(raft, log, term=3)
    with OfflineLog(raft, ME, [B], voting=False) as offline:
        before = offline.summary()
        assert before.roles == {
            ME: NodeRole.VOTER,
            B: NodeRole.VOTER,
            C: NodeRole.VOTER,
            D: NodeRole.SPARE,
        }
        assert (before.last_index, before.last_term, before.term) == (7, 2, 3)
        after = offline.make_sole_voter([b"forget B", b"forget C"])
    assert after.roles == {ME: NodeRole.VOTER}
    assert (after.last_index, after.last_term, after.term) == (12, 4, 4)
    entries = _entries(raft)
    assert entries[:7] == log  # nothing the node had is gone
    appended = entries[7:]
    assert {term for _c, _i, term in appended} == {4}
    assert [role_change_of(membership_request(c)) for c, _i, _t in appended[:3]] == [
        (B, None),
        (C, None),
        (D, None),
    ]
    assert [c for c, _i, _t in appended[3:]] == [b"\x00forget B", b"\x00forget C"]
    # Done already: a second run appends nothing.
    with OfflineLog(raft, ME, [B], voting=False) as offline:
        assert offline.make_sole_voter().last_index == 12


def test_a_standby_is_made_a_voter(tmp_path: Path) -> None:
    raft = tmp_path / "raft"
    _journal(raft, [(NO_OP, 1, 1), (role_change(ME, None, NodeRole.STANDBY), 2, 1)], term=1)
    with OfflineLog(raft, ME, [B], voting=False) as offline:
        assert offline.make_sole_voter().roles == {ME: NodeRole.VOTER}
    assert role_change_of(membership_request(_entries(raft)[-1][0])) == (ME, NodeRole.VOTER)


def test_a_log_left_behind_its_snapshot_is_compacted_not_lost(tmp_path: Path) -> None:
    raft = tmp_path / "raft"
    log = [(_command(i), i, 1) for i in range(1, 11)]
    _journal(raft, log, term=1)
    # A crash after the snapshot was written, before the log was compacted to it.
    _snapshot(raft, log[4], log[5], {ME: NodeRole.VOTER, B: NodeRole.VOTER})
    with OfflineLog(raft, ME, [], voting=True) as offline:
        assert offline.make_sole_voter().roles == {ME: NodeRole.VOTER}
    entries = _entries(raft)
    assert entries[:6] == log[4:]  # starts at the snapshot; entries 7-10 kept
    assert [i for _c, i, _t in entries] == list(range(5, 12))


def test_a_log_older_than_its_snapshot_is_replaced_by_the_snapshots_entries(
    tmp_path: Path,
) -> None:
    raft = tmp_path / "raft"
    _journal(raft, [(_command(i), i, 1) for i in range(1, 4)], term=2)
    _snapshot(raft, (_command(20), 20, 2), (_command(21), 21, 2), {ME: 0, B: 0, C: 0})
    with OfflineLog(raft, ME, [], voting=True) as offline:
        assert offline.summary().last_index == 21
        after = offline.make_sole_voter()
    assert (after.last_index, after.roles) == (23, {ME: NodeRole.VOTER})
    assert [i for _c, i, _t in _entries(raft)] == [20, 21, 22, 23]


def test_a_log_in_use_or_missing_is_refused(tmp_path: Path) -> None:
    raft = tmp_path / "raft"
    with pytest.raises(RecoveryError, match="holds no Raft journal"):
        OfflineLog(raft, ME, [], voting=True)
    _journal(raft, [(NO_OP, 1, 1)], term=1)
    with (
        DurableJournal(raft / "journal", sync=False),
        pytest.raises(RecoveryError, match="already open"),
    ):
        OfflineLog(raft, ME, [], voting=True)
