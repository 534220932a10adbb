"""A follower busy storing a large message does not start an election when it is done.

A follower takes its leader's word for another election timeout when an AppendEntries
arrives; storing the entries (a 16 MiB part of a large transaction, written and
fdatasync'd) may take longer than that timeout on a loaded machine. The timeout must run
from the end of that work, not from the message's arrival: otherwise the follower's next
tick finds it expired before it reads the heartbeats queued meanwhile, it stands for
election with a higher term, and the healthy leader steps down (seen once with a 72 MiB
transaction under load).

Three real nodes on loopback with real DurableJournals in this process; one follower's
journal is slowed through its instance, past the longest election timeout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from durable_raft import durable_cluster
from pysyncobj.config import FAIL_REASON
from waiting import wait_until

from dqlitepy.replication.journal import DurableJournal
from dqlitepy.replication.raft import HardenedSyncObj

# Longer than raftMaxTimeout (1.2 s): the follower is busy past any election deadline.
_BUSY = 1.8


def _term(node: HardenedSyncObj) -> int:
    term: int = node._SyncObj__raftCurrentTerm
    return term


def test_a_follower_slow_to_store_entries_does_not_depose_its_leader(tmp_path: Path) -> None:
    with durable_cluster(tmp_path) as nodes:
        leader = next(n for n in nodes if n.barrier_done)
        assert leader.submit_and_wait(b"warm-up", 5)[1] == FAIL_REASON.SUCCESS
        follower = next(n for n in nodes if n is not leader)
        journal = follower._SyncObj__raftLog
        assert isinstance(journal, DurableJournal)
        real_add_many = journal.add_many
        slowed: list[float] = []

        def busy_add_many(entries: Any) -> None:
            if not slowed:  # the first message only: one long busy spell
                slowed.append(time.monotonic())
                time.sleep(_BUSY)
            real_add_many(entries)

        journal.add_many = busy_add_many  # type: ignore[method-assign]
        terms = [_term(n) for n in nodes]
        # Committed by the leader and the other follower while this one is busy.
        assert leader.submit_and_wait(b"large", 10)[1] == FAIL_REASON.SUCCESS
        wait_until(lambda: bool(slowed), "the follower stored the entry", 5)
        # Heartbeats went on meanwhile; the busy follower reads them and stays a follower.
        wait_until(
            lambda: time.monotonic() > slowed[0] + _BUSY + 2.0, "well past the busy spell", 10
        )
        assert [_term(n) for n in nodes] == terms, "an election was started"
        assert leader.barrier_done and leader.submit_and_wait(b"after", 5)[1] == (
            FAIL_REASON.SUCCESS
        )
