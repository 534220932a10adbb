"""Group commit in the Raft core: the commands queued in one go share one journal sync.

Proven on real DurableJournals (syncs counted per journal file by wrapping ``os.fdatasync``):
a leader appends the regular commands it drains from its queue with one write, one sync and one
AppendEntries, a membership change among them is appended on its own in its place, a failed
append fails every command of the batch and steps the node down once, a follower stores one
AppendEntries with one sync, and three nodes under concurrent submitters sync less often than
they append entries.  Nodes without a journal file (PySyncObj's MemoryJournal) append the
same batches one entry at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pysyncobj.syncobj
import pytest
from dqlitepy_server import free_port
from pysyncobj.config import FAIL_REASON
from pysyncobj.journal import MemoryJournal
from waiting import wait_until

from dqlitepy.replication.journal import JournalWriteError, durable_journal_for_syncobj
from dqlitepy.replication.raft import (
    LEADER,
    STORAGE_FAILED,
    HardenedSyncObj,
    PeerNode,
    raft_config,
    role_change,
)
from dqlitepy.replication.raft import commands as commands_module
from dqlitepy.replication.raft.config import MEMBERSHIP
from dqlitepy.wire import NodeRole


def _apply(index: int, command: bytes, decoded: object = None) -> int:
    return index


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], int]:
    """``syncs(path)``: how many fdatasync calls the file at ``path`` got so far."""
    counts: Counter[int] = Counter()
    lock = threading.Lock()
    original = os.fdatasync

    def counting(fd: int) -> None:
        with lock:
            counts[os.fstat(fd).st_ino] += 1
        original(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return lambda path: counts[os.stat(path).st_ino]


def _last_index(node: HardenedSyncObj) -> int:
    return int(node._SyncObj__raftLog[-1][1])


def _entries(node: HardenedSyncObj, first: int) -> list[bytes]:
    return [bytes(e[0]) for e in node._SyncObj__raftLog[:] if e[1] >= first]


@contextlib.contextmanager
def _single_voter(journal: Path | MemoryJournal) -> Iterator[HardenedSyncObj]:
    """A one-node cluster ticked by the test, leading and past its barrier.

    ``journal``: the DurableJournal's file, or the in-memory journal to use.
    """
    me = f"127.0.0.1:{free_port()}"
    if isinstance(journal, Path):
        conf = raft_config(autoTick=False, journalFile=str(journal))
        with durable_journal_for_syncobj():
            node = HardenedSyncObj(me, [], conf, _apply)
    else:
        saved = pysyncobj.syncobj.createJournal
        pysyncobj.syncobj.createJournal = lambda path: journal
        try:
            node = HardenedSyncObj(me, [], raft_config(autoTick=False), _apply)
        finally:
            pysyncobj.syncobj.createJournal = saved
    try:
        deadline = time.monotonic() + 10
        while not node.barrier_done:
            assert time.monotonic() < deadline, "the single voter did not elect itself"
            node.doTick(0.01)
        yield node
    finally:
        node._doDestroy()


class _Outcomes:
    """Callbacks for submitted commands, and what each was told."""

    def __init__(self) -> None:
        self.reasons: dict[bytes, int] = {}

    def callback(self, command: bytes) -> Callable[[Any, int], None]:
        def record(result: Any, reason: int) -> None:
            self.reasons[command] = reason

        return record


def _count_calls(node: HardenedSyncObj, name: str) -> list[int]:
    """Count calls of ``node``'s method ``name`` (still calling it)."""
    calls = [0]
    method = getattr(node, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return method(*args, **kwargs)

    setattr(node, name, counting)
    return calls


# -- the leader -------------------------------------------------------------------------------


def test_queued_commands_are_appended_with_one_sync_and_one_send(
    tmp_path: Path, syncs: Callable[[Path], int]
) -> None:
    journal = tmp_path / "journal"
    with _single_voter(journal) as node:
        outcomes = _Outcomes()
        commands = [b"cmd-%d" % i for i in range(10)]
        for command in commands:
            node.submit(command, outcomes.callback(command))
        sends = _count_calls(node, "_SyncObj__sendAppendEntries")
        wakes = _count_calls(node, "_wake")
        first, before = _last_index(node) + 1, syncs(journal)
        node._checkCommandsToApply()  # this test is the tick thread
        assert [c[1:] for c in _entries(node, first)] == commands  # type byte, then the command
        assert syncs(journal) - before == 1
        assert sends[0] == 1
        # A single voter's own sync is the quorum: the batch is committed and
        # applied in the same tick, with no second tick (and no wake-up for one).
        assert wakes[0] == 0
        assert outcomes.reasons == dict.fromkeys(commands, FAIL_REASON.SUCCESS)
        assert not node._SyncObj__commandsWaitingCommit
        assert node._SyncObj__raftLastApplied == first + 9


def test_a_tracked_command_is_applied_as_the_object_submitted(tmp_path: Path) -> None:
    # The application gets its own commands as submitted, with what the submitter
    # said they decode to (so it need not decode them); any other entry is handed
    # over as a copy of the log's bytes, with nothing decoded.
    with _single_voter(tmp_path / "journal") as node:
        applied: list[tuple[bytes, object]] = []

        def apply(index: int, command: bytes, decoded: object = None) -> int:
            applied.append((command, decoded))
            return index

        node._dqlitepy_apply = apply
        tracked, plain = b"tracked" + bytes(1000), b"plain" + bytes(1000)
        meaning = object()
        submission = node.submit_tracked(tracked, meaning)
        node.submit(plain, lambda result, reason: None)
        node._checkCommandsToApply()
        assert submission.wait(1.0)[1] == FAIL_REASON.SUCCESS
        assert len(applied) == 2
        assert applied[0][0] is tracked and applied[0][1] is meaning
        assert applied[1][0] == plain and applied[1][0] is not plain
        assert applied[1][1] is None
        assert node._submitted == {}  # nothing kept once applied


def test_a_batch_is_appended_once_it_is_large(
    tmp_path: Path, syncs: Callable[[Path], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal"
    with _single_voter(journal) as node:
        outcomes = _Outcomes()
        commands = [b"c%04d" % i for i in range(commands_module.MAX_BATCH_ENTRIES + 6)]
        for command in commands:
            node.submit(command, outcomes.callback(command))
        sends = _count_calls(node, "_SyncObj__sendAppendEntries")
        first, before = _last_index(node) + 1, syncs(journal)
        node._checkCommandsToApply()
        assert [c[1:] for c in _entries(node, first)] == commands
        assert syncs(journal) - before == 2 and sends[0] == 2  # by count
        # By size: 60 bytes a command (with its type byte), a batch closes at 100.
        monkeypatch.setattr(commands_module, "MAX_BATCH_BYTES", 100)
        for i in range(5):
            node.submit(b"%059d" % i, outcomes.callback(b"%059d" % i))
        first, before = _last_index(node) + 1, syncs(journal)
        node._checkCommandsToApply()
        assert len(_entries(node, first)) == 5
        assert syncs(journal) - before == 3 and sends[0] == 5


def test_a_membership_change_in_a_batch_is_appended_on_its_own_in_its_place(
    tmp_path: Path, syncs: Callable[[Path], int]
) -> None:
    journal = tmp_path / "journal"
    other = f"127.0.0.1:{free_port()}"
    with _single_voter(journal) as node:
        outcomes = _Outcomes()
        change = role_change(other, None, NodeRole.STANDBY)
        for command in (b"a", b"b"):
            node.submit(command, outcomes.callback(command))
        node._applyCommand(change[1:], outcomes.callback(change), MEMBERSHIP)
        for command in (b"c", b"d", b"e"):
            node.submit(command, outcomes.callback(command))
        first, before = _last_index(node) + 1, syncs(journal)
        node._checkCommandsToApply()
        assert _entries(node, first) == [b"\x00a", b"\x00b", change, b"\x00c", b"\x00d", b"\x00e"]
        # The batch before the change, the change, the batch after it.
        assert syncs(journal) - before == 3
        assert node.roles[other] == NodeRole.STANDBY  # in force once appended
        for _ in range(5):
            node.doTick(0.01)
        assert set(outcomes.reasons.values()) == {FAIL_REASON.SUCCESS}
        assert len(outcomes.reasons) == 6


def test_a_failed_batch_fails_every_command_and_steps_down_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = f"127.0.0.1:{free_port()}"
    with _single_voter(tmp_path / "journal") as node:
        outcomes = _Outcomes()
        change = role_change(other, None, NodeRole.STANDBY)
        for command in (b"a", b"b", b"c"):
            node.submit(command, outcomes.callback(command))
        node._applyCommand(change[1:], outcomes.callback(change), MEMBERSHIP)
        node.submit(b"after", outcomes.callback(b"after"))
        failures = _count_calls(node, "_storage_failed")
        log_before = node._SyncObj__raftLog[:]
        monkeypatch.setattr(os, "pwritev", _failing(errno.ENOSPC))
        node._checkCommandsToApply()
        monkeypatch.undo()
        # Provably not stored: STORAGE_FAILED for the whole batch; the node no longer
        # leads, so what was queued behind it was never appended anywhere.
        assert outcomes.reasons == {
            b"a": STORAGE_FAILED,
            b"b": STORAGE_FAILED,
            b"c": STORAGE_FAILED,
            change: FAIL_REASON.NOT_LEADER,
            b"after": FAIL_REASON.NOT_LEADER,
        }
        assert failures[0] == 1
        assert node.raft_state != LEADER and not node.storage_writable
        assert node._SyncObj__raftLog[:] == log_before
        assert not node._SyncObj__commandsWaitingCommit
        assert other not in node.roles


def _failing(code: int) -> Callable[..., Any]:
    def fail(*args: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


def test_a_failed_sync_fails_the_batch_with_an_unknown_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _single_voter(tmp_path / "journal") as node:
        outcomes = _Outcomes()
        for command in (b"a", b"b"):
            node.submit(command, outcomes.callback(command))
        monkeypatch.setattr(os, "fdatasync", _failing(errno.EIO))
        node._checkCommandsToApply()
        monkeypatch.undo()
        # The records may be on disk (the cut could not be synced): maybe stored.
        assert outcomes.reasons == dict.fromkeys((b"a", b"b"), FAIL_REASON.UNKNOWN_OUTCOME)
        assert node.raft_state != LEADER


class _FailingAfter(MemoryJournal):  # type: ignore[misc]
    """A journal without add_many whose storage fills up after ``room`` more entries."""

    def __init__(self) -> None:
        super().__init__()
        self.room: int | None = None
        self.failure: OSError | None = None

    @property
    def writable(self) -> bool:
        return self.failure is None

    def add(self, command: bytes, idx: int, term: int) -> None:
        if self.room is not None:
            if self.room == 0:
                self.failure = OSError(errno.ENOSPC, "No space left on device")
                raise JournalWriteError("no room", self.failure, stored=False)
            self.room -= 1
        super().add(command, idx, term)

    def probe(self) -> bool:
        return self.failure is None


def test_a_journal_without_add_many_takes_the_batch_one_entry_at_a_time() -> None:
    with _single_voter(MemoryJournal()) as node:
        outcomes = _Outcomes()
        commands = [b"cmd-%d" % i for i in range(5)]
        for command in commands:
            node.submit(command, outcomes.callback(command))
        first = _last_index(node) + 1
        node._checkCommandsToApply()
        assert [c[1:] for c in _entries(node, first)] == commands
        for _ in range(5):
            node.doTick(0.01)
        assert outcomes.reasons == dict.fromkeys(commands, FAIL_REASON.SUCCESS)


def test_commands_a_journal_took_before_failing_part_way_wait_for_their_commit() -> None:
    journal = _FailingAfter()
    with _single_voter(journal) as node:
        outcomes = _Outcomes()
        for command in (b"a", b"b", b"c", b"d"):
            node.submit(command, outcomes.callback(command))
        first = _last_index(node) + 1
        journal.room = 2
        node._checkCommandsToApply()
        # a and b are in the log (a later leader decides their fate); c and d are not.
        assert outcomes.reasons == {b"c": STORAGE_FAILED, b"d": STORAGE_FAILED}
        assert sorted(node._SyncObj__commandsWaitingCommit) == [first, first + 1]
        assert _entries(node, first) == [b"\x00a", b"\x00b"]
        assert node.raft_state != LEADER


# -- the follower -----------------------------------------------------------------------------


def _append(prev: int, entries: list[list[Any]], term: int = 1) -> dict[str, Any]:
    return {
        "type": "append_entries",
        "term": term,
        "commit_index": 0,
        "prevLogIdx": prev,
        "prevLogTerm": 1 if prev > 1 else 0,
        "entries": entries,
    }


@contextlib.contextmanager
def _follower(journal: Path) -> Iterator[tuple[HardenedSyncObj, PeerNode, list[dict[str, Any]]]]:
    me, leader = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    conf = raft_config(autoTick=False, journalFile=str(journal))
    with durable_journal_for_syncobj():
        node = HardenedSyncObj(me, [leader], conf, _apply)
    answers: list[dict[str, Any]] = []
    node._SyncObj__sendNextNodeIdx = lambda peer, **kwargs: answers.append(kwargs)
    try:
        yield node, PeerNode(leader), answers
    finally:
        node._doDestroy()


def test_a_follower_stores_one_append_entries_with_one_sync(
    tmp_path: Path, syncs: Callable[[Path], int]
) -> None:
    journal = tmp_path / "journal"
    other = f"127.0.0.1:{free_port()}"
    with _follower(journal) as (node, leader, answers):
        node._SyncObj__setCurrentTerm(1, None)
        change = role_change(other, None, NodeRole.STANDBY)
        entries = [[b"\x00a", 2, 1], [change, 3, 1], [b"\x00b", 4, 1], [b"\x00c", 5, 1]]
        before = syncs(journal)
        node._SyncObj__onMessageReceived(leader, _append(1, entries))
        assert syncs(journal) - before == 1
        assert answers[-1]["success"] and answers[-1]["nextNodeIdx"] == 6
        assert _entries(node, 2) == [e[0] for e in entries]
        assert node.roles[other] == NodeRole.STANDBY


def test_a_follower_that_cannot_store_a_message_stores_none_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = f"127.0.0.1:{free_port()}"
    with _follower(tmp_path / "journal") as (node, leader, answers):
        node._SyncObj__setCurrentTerm(1, None)
        node._SyncObj__onMessageReceived(leader, _append(1, [[b"\x00a", 2, 1]]))
        change = role_change(other, None, NodeRole.STANDBY)
        monkeypatch.setattr(os, "pwritev", _failing(errno.ENOSPC))
        node._SyncObj__onMessageReceived(
            leader, _append(2, [[b"\x00b", 3, 1], [change, 4, 1], [b"\x00c", 5, 1]])
        )
        monkeypatch.undo()
        assert _last_index(node) == 2
        assert not answers[-1]["success"] and answers[-1]["reset"]
        assert answers[-1]["nextNodeIdx"] == 3
        assert other not in node.roles  # the configuration was not stored: not in force
        assert not node.storage_writable


# -- a real cluster under concurrent submitters ------------------------------------------------


def test_concurrent_submitters_make_fewer_syncs_than_entries(
    tmp_path: Path, syncs: Callable[[Path], int]
) -> None:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    journals = {a: tmp_path / f"n{i}" / "journal" for i, a in enumerate(addresses)}
    for path in journals.values():
        path.parent.mkdir()
    with durable_journal_for_syncobj():
        nodes = [
            HardenedSyncObj(
                a,
                [p for p in addresses if p != a],
                raft_config(journalFile=str(journals[a])),
                _apply,
            )
            for a in addresses
        ]
    try:
        wait_until(lambda: any(n.barrier_done for n in nodes), "a leader elected", 10)
        leader = next(n for n in nodes if n.barrier_done)
        assert leader.submit_and_wait(b"warm-up", 5)[1] == FAIL_REASON.SUCCESS
        wait_until(
            lambda: all(n.last_applied == leader.last_applied for n in nodes), "all caught up", 10
        )
        first = {n: _last_index(n) for n in nodes}
        before = {n: syncs(journals[n.selfNode.id]) for n in nodes}
        writers, per_writer = 32, 15
        reasons: list[int] = []

        def submitter(i: int) -> None:
            for j in range(per_writer):
                reasons.append(leader.submit_and_wait(b"w%d-%d" % (i, j), 10)[1])

        threads = [threading.Thread(target=submitter, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert reasons == [FAIL_REASON.SUCCESS] * (writers * per_writer)
        wait_until(
            lambda: all(n.last_applied == leader.last_applied for n in nodes), "all applied", 10
        )
        expected = sorted(b"\x00w%d-%d" % (i, j) for i in range(writers) for j in range(per_writer))
        for node in nodes:
            entries = _last_index(node) - first[node]
            made = syncs(journals[node.selfNode.id]) - before[node]
            role = "leader" if node is leader else "follower"
            print(f"{role}: {made} syncs for {entries} entries")
            assert sorted(_entries(node, first[node] + 1)) == expected
            assert made * 2 <= entries  # at least two entries per sync on average
    finally:
        for n in nodes:
            n.destroy_synchronous()
