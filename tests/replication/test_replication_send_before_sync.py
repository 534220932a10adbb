"""The leader sends new entries before its own fsync, and counts itself only once synced.

Raft thesis §10.2.1.  Three real nodes on loopback with real DurableJournals, in this
process; the leader's journal is slowed, held or broken through its instance (the followers'
journals are left alone):

- its AppendEntries goes out before its fsync: a follower holds the entry while the
  leader is still inside ``flush``;
- its commit index never counts its own unsynced copy: with its sync held back, one
  follower's acknowledgement does not commit an entry, two do;
- a failed write is STORAGE_FAILED and nothing is sent; a failed fdatasync after the send
  is UNKNOWN_OUTCOME (the followers have the entry, and may commit it), and the leader
  steps down.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from durable_raft import durable_cluster
from pysyncobj.config import FAIL_REASON
from waiting import wait_until

from dqlitepy.replication.journal import DurableJournal
from dqlitepy.replication.journal import appends as appends_module
from dqlitepy.replication.raft import LEADER, STORAGE_FAILED, HardenedSyncObj


def _journal(node: HardenedSyncObj) -> DurableJournal:
    journal = node._SyncObj__raftLog
    assert isinstance(journal, DurableJournal)
    return journal


def _holds(node: HardenedSyncObj, command: bytes) -> bool:
    return any(bytes(entry[0]) == b"\x00" + command for entry in node._SyncObj__raftLog[:])


class Cluster:
    def __init__(self, nodes: list[HardenedSyncObj]) -> None:
        self.nodes = nodes
        self.leader = next(n for n in nodes if n.barrier_done)
        self.followers = [n for n in nodes if n is not self.leader]


@contextlib.contextmanager
def _cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three nodes, a leader past its barrier, every node caught up."""
    with durable_cluster(tmp_path) as nodes:
        cluster = Cluster(nodes)
        assert cluster.leader.submit_and_wait(b"warm-up", 5)[1] == FAIL_REASON.SUCCESS
        last = cluster.leader.last_applied
        wait_until(lambda: all(n.last_applied >= last for n in nodes), "all caught up", 10)
        yield cluster


def test_the_leader_sends_new_entries_before_its_own_fsync(tmp_path: Path) -> None:
    with _cluster(tmp_path) as cluster:
        journal = _journal(cluster.leader)
        flushing, release = threading.Event(), threading.Event()
        seen_while_flushing: list[int | None] = []
        real_flush = journal.flush

        def slow_flush() -> None:
            seen_while_flushing.append(journal.durable_index)
            flushing.set()
            release.wait(10)
            real_flush()

        journal.flush = slow_flush  # type: ignore[method-assign]
        try:
            pending = cluster.leader.submit_tracked(b"x")
            assert flushing.wait(5), "the leader never synced its entries"
            # The leader's tick thread is inside flush; the followers' are not.
            wait_until(
                lambda: all(_holds(f, b"x") for f in cluster.followers),
                "the followers hold the entry while the leader is still syncing",
                5,
            )
            index = _journal(cluster.leader)[-1][1]
            assert seen_while_flushing == [index - 1]  # not durable on the leader yet
            assert cluster.leader.commit_index < index
        finally:
            release.set()
        assert pending.wait(5)[1] == FAIL_REASON.SUCCESS
        assert journal.durable_index == index


def test_the_commit_index_counts_the_leader_only_once_its_copy_is_durable(
    tmp_path: Path,
) -> None:
    with _cluster(tmp_path) as cluster:
        leader, (one, other) = cluster.leader, cluster.followers
        journal = _journal(leader)
        # The leader's sync "has not returned yet" while its tick goes on: nothing syncs
        # what append_unsynced wrote (the commit rule must not rely on the tick blocking).
        journal._sync_unsynced = lambda: None  # type: ignore[method-assign]
        # `other` hears nothing from the leader for a while (its election timer is long
        # enough not to fire meanwhile).
        other.conf.raftMinTimeout, other.conf.raftMaxTimeout = 20.0, 21.0
        other.postpone_election()
        other._on_append_entries = lambda node, message: None  # type: ignore[method-assign]
        try:
            pending = leader.submit_tracked(b"x")
            wait_until(lambda: _holds(one, b"x"), "one follower holds the entry", 5)
            index = journal[-1][1]
            match = leader._SyncObj__raftMatchIndex
            wait_until(
                lambda: any(match[n] >= index for n in match),
                "the leader counted that follower's acknowledgement",
                5,
            )
            time.sleep(0.3)  # several more ticks: the commit rule ran on that answer
            # The leader's copy plus one follower's would be a majority of three, but the
            # leader's copy is not durable: not committed.
            assert journal.durable_index is not None and journal.durable_index < index
            assert leader.commit_index < index
            assert not _holds(other, b"x")
            # Two followers hold it durably: a majority without the leader (the thesis
            # allows committing before the leader's own sync returned).
            del other._on_append_entries
            assert pending.wait(5)[1] == FAIL_REASON.SUCCESS
            assert leader.commit_index >= index
            assert journal.durable_index < index
        finally:
            del journal._sync_unsynced
            journal.flush()
        assert journal.durable_index == index


def test_a_failed_write_is_storage_failed_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _cluster(tmp_path) as cluster:
        leader_fd = _journal(cluster.leader)._fd
        real = appends_module.pwrite_all

        def full_on_the_leader(fd: int, parts: list[bytes], offset: int) -> None:
            if fd == leader_fd:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(fd, parts, offset)

        monkeypatch.setattr(appends_module, "pwrite_all", full_on_the_leader)
        result, reason = cluster.leader.submit_and_wait(b"x", 5)
        assert reason == STORAGE_FAILED and result.stored is False
        wait_until(lambda: cluster.leader.raft_state != LEADER, "the leader stepped down", 5)
        time.sleep(0.3)
        assert not any(_holds(node, b"x") for node in cluster.nodes)


def test_a_failed_sync_after_the_send_is_an_unknown_outcome_and_the_leader_steps_down(
    tmp_path: Path,
) -> None:
    with _cluster(tmp_path) as cluster:
        old = cluster.leader
        journal = _journal(old)
        real_datasync = journal._datasync
        failures = [1]

        def fails_once(fd: int) -> None:
            # Only the sync of the new entry (not a lazy commit-index write meanwhile).
            if failures[0] and journal._unsynced:
                failures[0] -= 1
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_datasync(fd)

        journal._datasync = fails_once  # type: ignore[method-assign]
        result, reason = old.submit_and_wait(b"x", 5)
        # The cut after the failed sync worked (the journal says "not stored here"), but
        # the followers were sent the entry: only "unknown" is true.
        assert result.stored is False
        assert reason == FAIL_REASON.UNKNOWN_OUTCOME
        wait_until(lambda: old.raft_state != LEADER, "the leader stepped down", 5)
        assert not _holds(old, b"x")
        # ... and indeed the cluster may go on to commit it without the old leader.
        wait_until(lambda: all(_holds(f, b"x") for f in cluster.followers), "followers hold it", 5)
        wait_until(
            lambda: any(n.barrier_done for n in cluster.followers), "a new leader elected", 10
        )
        new = next(n for n in cluster.followers if n.barrier_done)
        assert _holds(new, b"x")  # committed by the new leader's no-op
