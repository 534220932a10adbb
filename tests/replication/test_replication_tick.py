"""The adaptive tick (raft/tick.py): idle nodes sleep, and Raft's timers still fire in time.

Real Replicators (secure transport, fsync'd journal) on 127.0.0.1, from the
ReadIndex tests.  Timing bounds are generous: they assert behaviour (an
election happens, a lease is kept), not speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_replication_readindex import WAIT, Replicators
from waiting import wait_until

from dqlitepy.replication.raft import LEADER, HardenedSyncObj
from dqlitepy.replication.raft.tick import IDLE_TICK_MAX
from dqlitepy.replication.replicator import Replicator


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[Replicators]:
    r = Replicators(tmp_path, 3)
    try:
        yield r
    finally:
        r.close()


def _core(node: Replicator) -> HardenedSyncObj:
    core = node._core
    assert core is not None
    return core


def _count_ticks(cores: list[HardenedSyncObj]) -> list[list[float]]:
    """Record the wait each tick of each core chose (the poller's ``_wait``)."""
    waits: list[list[float]] = [[] for _ in cores]
    for core, seen in zip(cores, waits, strict=True):
        poller = core._poller
        choose: Callable[[float], float] = poller._wait

        def counting(period: float, choose: Any = choose, seen: list[float] = seen) -> float:
            wait = float(choose(period))
            seen.append(wait)
            return wait

        poller._wait = counting
    return waits


def _settled(r: Replicators) -> HardenedSyncObj:
    leader = _core(r.leader())
    wait_until(lambda: len(leader.peer_health()) == 2, "both followers connected", WAIT)
    wait_until(lambda: leader.lease_valid, "the leader to hold a lease", WAIT)
    return leader


def test_idle_nodes_tick_rarely_and_keep_the_lease(trio: Replicators) -> None:
    """No work: about 10 ticks a second per node (heartbeats), not 100; the lease holds."""
    leader = _settled(trio)
    cores = [_core(n) for n in trio.live()]
    waits = _count_ticks(cores)
    start = time.monotonic()
    lease_lost = 0
    while time.monotonic() - start < 2.0:
        if not leader.lease_valid:
            lease_lost += 1
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    rates = [len(w) / elapsed for w in waits]
    # 100 a second with PySyncObj's 10 ms poll; a leader here wakes for its 10
    # heartbeats and 20 answers, a follower for 10 heartbeats.
    assert all(rate < 60 for rate in rates), rates
    assert max(max(w) for w in waits) <= IDLE_TICK_MAX + 1e-9
    assert lease_lost == 0, "heartbeats keep the lease while the leader sleeps between them"
    assert leader.raft_state == LEADER


def test_a_follower_elects_itself_in_time_after_the_leader_dies(trio: Replicators) -> None:
    """Followers asleep between heartbeats still start an election at their deadline."""
    old = trio.leader()
    _settled(trio)
    term = _core(old)._SyncObj__raftCurrentTerm
    trio.stop(old)
    start = time.monotonic()
    new = trio.leader()
    elapsed = time.monotonic() - start
    assert new is not old and _core(new)._SyncObj__raftCurrentTerm > term
    # Election timeouts are 0.8-1.2 s; the bound only allows for a loaded machine.
    assert elapsed < 8, f"{elapsed:.2f} s without a leader"
    assert new.submit(b"after the election", WAIT) is not None


def test_the_wait_ends_by_the_next_heartbeat_and_can_be_turned_off(trio: Replicators) -> None:
    leader = _settled(trio)
    period = float(leader.conf.autoTickPeriod)
    wait = leader._tick_wait(period)
    assert period <= wait <= IDLE_TICK_MAX
    # Read after the wait: the heartbeat may have been sent meanwhile (later, not sooner).
    assert time.monotonic() + wait <= leader._SyncObj__newAppendEntriesTime + period + 1e-3
    leader._adaptive_tick = False
    assert leader._tick_wait(period) == period


def test_followers_in_step_get_one_encoding_per_append_entries(
    trio: Replicators, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``sent_at`` per round of AppendEntries: the transport encodes it once, not per follower.

    A time per message (as before) made every follower's message differ, and the
    transport's cache of the last encoding never hit.  An earlier ``sent_at``
    than the real sending only shortens the lease, so the lease still holds.
    """
    from dqlitepy.replication.transport import adapter

    leader_node = trio.leader()
    leader = _settled(trio)
    sent: list[dict[str, Any]] = []
    encoded: list[int] = []
    encode = adapter.SecureTransport._encode
    split = adapter.split_append_entries

    def counting_encode(self: Any, message: Any) -> Any:
        if message.get("type") == "append_entries" and message.get("entries"):
            sent.append(dict(message))
        return encode(self, message)

    def counting_split(message: Any, target: int) -> Any:
        if message.get("type") == "append_entries" and message.get("entries"):
            encoded.append(1)
        return split(message, target)

    monkeypatch.setattr(adapter.SecureTransport, "_encode", counting_encode)
    monkeypatch.setattr(adapter, "split_append_entries", counting_split)
    for i in range(30):
        leader_node.submit(b"command %d" % i, WAIT)
    assert len(sent) >= 60, "each command reached both followers"
    # Followers in step: most rounds encoded once for two messages.
    assert len(encoded) <= 0.75 * len(sent), (len(encoded), len(sent))
    by_round: dict[float, int] = {}
    for message in sent:
        by_round[message["sent_at"]] = by_round.get(message["sent_at"], 0) + 1
    assert max(by_round.values()) == 2, "the two messages of a round share their sending time"
    assert leader.lease_valid
