"""Linearizable reads: Raft's ReadIndex (thesis §6.4) in HardenedSyncObj and Replicator.

Three kinds of test: the round logic on a leader whose thread the test plays
(deterministic), the message shapes on the secure transport, and real clusters
on 127.0.0.1 (PySyncObj's own transport in-process, or the full Replicator stack
with the secure transport and the fsync'd journal), where nodes are paused,
partitioned and stopped.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dqlitepy_server import free_port
from pysyncobj.config import FAIL_REASON
from raft_acceptor import ConnectAcceptor
from waiting import wait_until

from dqlitepy.replication.raft import (
    FOLLOWER,
    LEADER,
    HardenedSyncObj,
    PeerNode,
    ReadResult,
    raft_config,
)
from dqlitepy.replication.replicator import LeadershipUnconfirmed, NotLeader, Replicator
from dqlitepy.replication.transport import (
    RaftMessageError,
    decode_raft_message,
    encode_raft_message,
)

KEY = b"cluster key for the read index tests"
WAIT = 15.0  # upper bound of every wait


def _apply(index: int, command: bytes, decoded: object = None) -> int:
    return index


class Outcomes:
    """Collects ``read_index`` callbacks: ``(result, index)`` in order."""

    def __init__(self) -> None:
        self.results: list[tuple[ReadResult, int]] = []
        self.done = threading.Event()

    def __call__(self, result: ReadResult, index: int) -> None:
        self.results.append((result, index))
        self.done.set()


# ------------------------------------------------------------ the round logic


@dataclass
class Played:
    """A leader whose thread the test plays, its two followers, and its sends."""

    node: HardenedSyncObj
    a: PeerNode
    b: PeerNode
    sent: list[int]  # the read round of each AppendEntries broadcast


@pytest.fixture
def leader() -> Iterator[Played]:
    yield from played_leader()


def played_leader() -> Iterator[Played]:
    """A leader of term 2 among 3 voters whose thread the test plays.

    Its log holds 1..5 from term 1 and its no-op at 6; everything is committed
    and applied.
    """
    me, *peers = (f"127.0.0.1:{free_port()}" for _ in range(3))
    node = HardenedSyncObj(me, peers, raft_config(autoTick=False), _apply)
    for index in range(2, 6):
        node._SyncObj__raftLog.add(b"\x01", index, 1)
    node._SyncObj__setCurrentTerm(2, None)
    node._SyncObj__raftLog.add(b"\x01", 6, 2)
    node._SyncObj__noopIDx = 6
    node._SyncObj__raftCommitIndex = 6
    node._SyncObj__raftLastApplied = 6
    node._SyncObj__setState(LEADER)
    followers = sorted(node._SyncObj__otherNodes, key=lambda n: str(n.id))
    for follower in followers:
        node._SyncObj__raftMatchIndex[follower] = 6
        node._SyncObj__raftNextIndex[follower] = 7
        node._SyncObj__lastResponseTime[follower] = time.monotonic()
    sent: list[int] = []
    node._SyncObj__sendAppendEntries = lambda: sent.append(node._read_number)
    yield Played(node, followers[0], followers[1], sent)
    node._doDestroy()


def _answer(
    node: HardenedSyncObj, follower: PeerNode, read_round: int | None, term: int = 2
) -> None:
    """The follower's answer (next_node_idx) to an AppendEntries tagged ``read_round``."""
    message = {
        "type": "next_node_idx",
        "next_node_idx": 7,
        "reset": False,
        "success": True,
        "term": term,
        "read_round": read_round,
    }
    node._SyncObj__onMessageReceived(follower, message)


def _request(node: HardenedSyncObj) -> Outcomes:
    outcomes = Outcomes()
    node.read_index(outcomes)
    node._run_tick_calls()  # what Raft's thread does at its next tick
    return outcomes


def test_a_read_waits_for_a_majority_to_answer_a_message_sent_after_it(leader: Played) -> None:
    node, a, sent = leader.node, leader.a, leader.sent
    first = _request(node)
    assert sent == [1], "a round sends AppendEntries at once"
    _answer(node, a, 0)  # answers a message sent before the read arrived
    _answer(node, a, None)  # an untagged answer (a snapshot chunk's, say)
    assert first.results == []
    _answer(node, a, 1)  # with the leader, 2 of 3 voters
    assert first.results == [(ReadResult.CONFIRMED, 6)]


def test_a_failed_answer_in_our_term_also_confirms(leader: Played) -> None:
    node, a = leader.node, leader.a
    outcomes = _request(node)
    # A follower missing entries still accepted this leader for its term.
    node._SyncObj__onMessageReceived(
        a,
        {
            "type": "next_node_idx",
            "next_node_idx": 4,
            "reset": True,
            "success": False,
            "term": 2,
            "read_round": 1,
        },
    )
    assert outcomes.results == [(ReadResult.CONFIRMED, 6)]


def test_reads_arriving_during_a_round_share_the_next_one(leader: Played) -> None:
    node, a, b, sent = leader.node, leader.a, leader.b, leader.sent
    first = _request(node)
    later = [_request(node) for _ in range(5)]
    assert sent == [1]
    _answer(node, b, 1)
    assert first.results == [(ReadResult.CONFIRMED, 6)]
    assert all(o.results == [] for o in later), "round 1 began before they arrived"
    assert sent == [1, 2], "the next round starts as soon as one is confirmed"
    _answer(node, a, 1)  # late: answers a message of round 1
    assert all(o.results == [] for o in later)
    _answer(node, a, 2)
    assert all(o.results == [(ReadResult.CONFIRMED, 6)] for o in later)
    assert node.read_stats == (6, 2)


def test_the_read_index_is_the_commit_index_when_the_read_arrives(leader: Played) -> None:
    node, a = leader.node, leader.a
    node._SyncObj__raftLog.add(b"\x01", 7, 2)
    node._SyncObj__raftCommitIndex = 7  # committed, not yet applied
    outcomes = _request(node)
    _answer(node, a, 1)
    assert outcomes.results == [], "confirmed, but entry 7 is not applied"
    node._SyncObj__raftLastApplied = 7
    node._serve_reads()
    assert outcomes.results == [(ReadResult.CONFIRMED, 7)]


def test_a_new_leader_reads_at_least_at_its_noop(leader: Played) -> None:
    node, a = leader.node, leader.a
    # Just elected: its commit index (learnt as a follower) lags, its no-op is not committed.
    node._SyncObj__raftCommitIndex = 4
    node._SyncObj__raftLastApplied = 4
    outcomes = _request(node)
    _answer(node, a, 1)
    node._serve_reads()
    assert outcomes.results == []
    node._SyncObj__raftCommitIndex = node._SyncObj__raftLastApplied = 6
    node._serve_reads()
    assert outcomes.results == [(ReadResult.CONFIRMED, 6)]


def test_an_answer_with_a_newer_term_deposes_the_leader(leader: Played) -> None:
    node, a = leader.node, leader.a
    outcomes = _request(node)
    _answer(node, a, 1, term=3)
    assert outcomes.results == [(ReadResult.LEADERSHIP_LOST, 0)]
    assert node.raft_state == FOLLOWER
    assert node._SyncObj__raftCurrentTerm == 3
    assert node._SyncObj__raftElectionDeadline > time.monotonic(), "no election at once"


def test_answers_from_an_earlier_term_count_for_nothing(leader: Played) -> None:
    node, a = leader.node, leader.a
    outcomes = _request(node)
    node._SyncObj__raftMatchIndex[a] = 2
    _answer(node, a, 1, term=1)
    assert outcomes.results == []
    assert node._SyncObj__raftMatchIndex[a] == 2, "nor for the match index"


def test_losing_leadership_fails_waiting_reads(leader: Played) -> None:
    node = leader.node
    in_round = _request(node)
    queued = _request(node)
    node._SyncObj__setState(FOLLOWER)
    node._serve_reads()
    assert in_round.results == queued.results == [(ReadResult.LEADERSHIP_LOST, 0)]
    assert _request(node).results == [(ReadResult.NOT_LEADER, 0)]


def test_a_round_counts_the_voters_of_now(leader: Played) -> None:
    node, a, b = leader.node, leader.a, leader.b
    outcomes = _request(node)
    node._set_role(str(a.id), None)
    node._set_role(str(b.id), None)  # now the only voter
    node._serve_reads()
    assert outcomes.results == [(ReadResult.CONFIRMED, 6)]


def test_a_follower_echoes_the_round_and_answers_a_stale_leader_with_its_term() -> None:
    me, old = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    node = HardenedSyncObj(me, [old], raft_config(autoTick=False), _apply)
    try:
        sent: list[dict[str, Any]] = []
        node._SyncObj__transport.send = lambda peer, message: sent.append(message)
        node._SyncObj__setCurrentTerm(3, None)
        heartbeat = {
            "type": "append_entries",
            "term": 3,
            "commit_index": 0,
            "prevLogIdx": 1,
            "prevLogTerm": 0,
            "entries": [],
            "read_round": 7,
        }
        node._SyncObj__onMessageReceived(PeerNode(old), heartbeat)
        assert sent[-1] == {
            "type": "next_node_idx",
            "next_node_idx": 2,
            "reset": False,
            "success": True,
            "term": 3,
            "read_round": 7,
        }
        node._SyncObj__onMessageReceived(PeerNode(old), {**heartbeat, "term": 2})
        assert sent[-1]["term"] == 3 and not sent[-1]["success"] and not sent[-1]["reset"]
        assert node._SyncObj__raftCurrentTerm == 3
    finally:
        node._doDestroy()


# ------------------------------------------------------------ on the wire


def test_the_secure_transport_carries_rounds_and_terms() -> None:
    tagged = {
        "type": "append_entries",
        "term": 3,
        "commit_index": 9,
        "entries": [[b"\x00x", 10, 3]],
        "prevLogIdx": 9,
        "prevLogTerm": 3,
        "read_round": 12,
    }
    chunk = {"type": "append_entries", "term": 3, "commit_index": 9, "serialized": None}
    answer = {
        "type": "next_node_idx",
        "next_node_idx": 11,
        "reset": False,
        "success": True,
        "term": 3,
        "read_round": 12,
    }
    for message in (tagged, {**chunk, "read_round": 0}, answer, {**answer, "read_round": None}):
        assert decode_raft_message(encode_raft_message(message)) == message
    for bad in ({**tagged, "read_round": None}, {**answer, "read_round": -1}):
        with pytest.raises(RaftMessageError):
            encode_raft_message(bad)
    with pytest.raises(RaftMessageError):
        encode_raft_message({**answer, "term": None})


# ------------------------------------------------------------ in-process clusters


class Cluster:
    """HardenedSyncObj voters on PySyncObj's TCP transport, with a network to cut."""

    def __init__(self, size: int, *, read_lease: bool = True, **conf: Any) -> None:
        self.read_lease = read_lease
        self.addresses = [f"127.0.0.1:{free_port()}" for _ in range(size)]
        self.applied: dict[str, list[bytes]] = {a: [] for a in self.addresses}
        self.blocked: set[tuple[str, str]] = set()  # (from, to) links that drop everything
        self.on_apply: Callable[[str, bytes], None] = lambda address, command: None
        self.on_leading: Callable[[str], None] = lambda address: None
        self.nodes = [self._start(a, conf) for a in self.addresses]

    def _start(self, address: str, conf: dict[str, Any]) -> HardenedSyncObj:
        def apply(index: int, command: bytes, decoded: object = None) -> int:
            if command:
                self.applied[address].append(command)
                self.on_apply(address, command)
            return index

        def changed(old: int, new: int) -> None:
            if new == LEADER:
                self.on_leading(address)

        others = [p for p in self.addresses if p != address]
        node = HardenedSyncObj(
            address,
            others,
            raft_config(onStateChanged=changed, **conf),
            apply,
            read_lease=self.read_lease,
        )
        transport = node._SyncObj__transport
        send = transport.send

        def send_unless_cut(peer: Any, message: Any) -> Any:
            if (address, str(peer.id)) in self.blocked:
                return True  # lost on the way
            return send(peer, message)

        transport.send = send_unless_cut
        return node

    def node(self, address: str) -> HardenedSyncObj:
        return self.nodes[self.addresses.index(address)]

    def cut(self, a: str, b: str) -> None:
        self.blocked |= {(a, b), (b, a)}

    def heal(self, a: str, b: str) -> None:
        self.blocked -= {(a, b), (b, a)}

    def isolate(self, a: str) -> None:
        for b in self.addresses:
            if b != a:
                self.cut(a, b)

    def leader(self, among: list[str] | None = None) -> HardenedSyncObj:
        """The node that leads (among ``among``) once it has passed its barrier."""
        candidates = [self.node(a) for a in among or self.addresses]
        wait_until(lambda: any(n.barrier_done for n in candidates), "a leader", WAIT)
        return next(n for n in candidates if n.barrier_done)

    def close(self) -> None:
        for node in self.nodes:
            node.destroy_synchronous()


@pytest.fixture(params=[False, True], ids=["readindex", "lease"])
def stubborn(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Three voters whose leaders never step down for silence alone.

    PySyncObj's leaderFallbackTimeout (2 s) would eventually depose a cut-off
    leader by itself; disabling it leaves ReadIndex (and the lease) as the
    only protection, as it is during the window before that timeout.  Each
    test runs with reads confirmed by ReadIndex rounds only, then with the
    leader lease (``tests/replication/test_replication_lease.py``).
    """
    c = Cluster(3, read_lease=request.param, leaderFallbackTimeout=60.0)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def stubborn_readindex() -> Iterator[Cluster]:
    """:func:`stubborn` with ReadIndex rounds only: a cut-off leader keeps its lease a while."""
    c = Cluster(3, read_lease=False, leaderFallbackTimeout=60.0)
    try:
        yield c
    finally:
        c.close()


def _address(node: HardenedSyncObj) -> str:
    return str(node.selfNode.id)


def test_a_cut_off_leader_cannot_confirm_a_read(stubborn_readindex: Cluster) -> None:
    stubborn = stubborn_readindex
    old = stubborn.leader()
    assert old.read_barrier(5)[0] == ReadResult.CONFIRMED
    # The control for the timeout below: connected, the same probe confirms within it.
    assert old.read_barrier(0.3)[0] == ReadResult.CONFIRMED
    stubborn.isolate(_address(old))
    start = time.monotonic()
    assert old.read_barrier(0.3) == (ReadResult.TIMEOUT, 0)
    assert time.monotonic() - start < 1.0
    assert old.raft_state == LEADER, "it still believes it leads"
    # The others elect a new leader; once the old one hears of it, waiting reads fail.
    pending = Outcomes()
    old.read_index(pending)
    others = [a for a in stubborn.addresses if a != _address(old)]
    new = stubborn.leader(others)
    assert new.submit_and_wait(b"newer", timeout=5)[1] == FAIL_REASON.SUCCESS
    assert not pending.done.is_set()
    stubborn.heal(_address(old), _address(new))
    assert pending.done.wait(5)
    assert pending.results == [(ReadResult.LEADERSHIP_LOST, 0)]


def test_a_deposed_leader_learns_its_fate_from_a_follower(stubborn: Cluster) -> None:
    old = stubborn.leader()
    stubborn.isolate(_address(old))
    others = [a for a in stubborn.addresses if a != _address(old)]
    new = stubborn.leader(others)
    follower = next(a for a in others if a != _address(new))
    assert new.submit_and_wait(b"newer", timeout=5)[1] == FAIL_REASON.SUCCESS
    outcome: list[tuple[ReadResult, int]] = []
    requests = old.read_stats[0]
    reader = threading.Thread(target=lambda: outcome.append(old.read_barrier(5)))
    reader.start()
    wait_until(lambda: old.read_stats[0] > requests, "the read to reach Raft's thread", WAIT)
    # The new leader still cannot reach it: only the follower's answer (its newer
    # term, to the old leader's AppendEntries) can tell it.
    stubborn.heal(_address(old), follower)
    reader.join()
    assert outcome[0] == (ReadResult.LEADERSHIP_LOST, 0)
    assert old.raft_state != LEADER


@pytest.mark.parametrize("round_", range(3))
def test_a_paused_leader_that_resumes_after_a_new_write_elsewhere_reads_nothing(
    stubborn: Cluster, round_: int
) -> None:
    """The reported bug: SIGSTOP the leader, write on a new one, SIGCONT, read."""
    old = stubborn.leader()
    assert old.submit_and_wait(b"old", timeout=5)[1] == FAIL_REASON.SUCCESS
    resume = threading.Event()

    def stopped() -> None:  # Raft's thread stops, as under SIGSTOP
        resume.wait(WAIT)

    old.on_tick(stopped)
    others = [a for a in stubborn.addresses if a != _address(old)]
    new = stubborn.leader(others)
    assert new.submit_and_wait(b"new", timeout=5)[1] == FAIL_REASON.SUCCESS
    assert old.raft_state == LEADER and b"new" not in stubborn.applied[_address(old)]
    # A read arrives while it is stopped: a check of the role alone would serve "old".
    outcome: list[tuple[ReadResult, int]] = []
    queued = old._tick_calls.qsize()
    reader = threading.Thread(target=lambda: outcome.append(old.read_barrier(5)))
    reader.start()
    # Raft's thread is stopped: the read waits in its queue of calls.
    wait_until(lambda: old._tick_calls.qsize() > queued, "the read to be queued", WAIT)
    resume.set()
    reader.join()
    assert outcome[0][0] in (ReadResult.LEADERSHIP_LOST, ReadResult.NOT_LEADER), outcome


def test_a_single_voter_confirms_at_once() -> None:
    c = Cluster(1)
    try:
        node = c.leader()
        assert node.submit_and_wait(b"x", timeout=5)[1] == FAIL_REASON.SUCCESS
        result, index = node.read_barrier(5)
        assert result == ReadResult.CONFIRMED
        assert index >= 2 and node.last_applied >= index
        # Answered on the caller's thread: Raft's thread took no request up.
        assert node.read_stats == (0, 0), "no request, no round"
        # The same question on Raft's thread (read_index) needs no round either.
        answered: list[ReadResult] = []
        node.read_index(lambda result, index: answered.append(result))
        wait_until(lambda: answered, "the tick thread's answer")
        assert answered == [ReadResult.CONFIRMED]
        assert node.read_stats == (1, 0), "no round needed"
    finally:
        c.close()


def test_a_new_leader_serves_a_read_only_after_applying_what_was_committed_before() -> None:
    c = Cluster(3)
    try:
        old = c.leader()
        for i in range(10):
            assert old.submit_and_wait(b"w%d" % i, timeout=5)[1] == FAIL_REASON.SUCCESS

        def cut_after_last(address: str, command: bytes) -> None:
            # The old leader applied "last" (so it was committed and acknowledged),
            # and vanishes before telling anyone the new commit index.
            if address == _address(old) and command == b"last":
                c.isolate(address)

        seen: dict[str, Any] = {}
        done = threading.Event()

        def read_at_election(address: str) -> None:
            # On the new leader's thread, the moment it is elected: before its
            # no-op, let alone "last", is committed or applied.
            if address == _address(old) or seen:
                return
            node = c.node(address)
            seen["applied at election"] = list(c.applied[address])

            def answered(result: ReadResult, index: int) -> None:
                seen.update(result=result, index=index, applied=list(c.applied[address]))
                seen["last applied"] = node.last_applied
                done.set()

            node.read_index(answered)

        c.on_apply = cut_after_last
        c.on_leading = read_at_election
        last_index, reason = old.submit_and_wait(b"last", timeout=5)
        assert reason == FAIL_REASON.SUCCESS
        assert done.wait(WAIT)
        assert b"last" not in seen["applied at election"], "nothing was pending"
        assert seen["result"] == ReadResult.CONFIRMED
        assert seen["index"] > last_index, "the read index covers 'last' (and the no-op)"
        assert seen["last applied"] >= seen["index"]
        assert seen["applied"][-1] == b"last"
    finally:
        c.close()


# ------------------------------------------------------------ the Replicator stack


class Replicators:
    """Replicator nodes (secure transport, fsync'd journal) behind ConnectAcceptors."""

    def __init__(self, base: Path, size: int, *, read_lease: bool = True) -> None:
        self.acceptors = [ConnectAcceptor("127.0.0.1:0") for _ in range(size)]
        addresses = [a.address for a in self.acceptors]
        self.nodes: list[Replicator | None] = []
        for i, acceptor in enumerate(self.acceptors):
            node = Replicator(
                acceptor.address,
                base / f"n{i}",
                addresses,
                node_id=i + 1,
                cluster_key=KEY,
                apply=_apply,
                read_lease=read_lease,
            )
            node.start()
            acceptor.attach(node._transport)
            self.nodes.append(node)

    def live(self) -> list[Replicator]:
        return [n for n in self.nodes if n is not None]

    def leader(self) -> Replicator:
        wait_until(lambda: any(n.is_leader() for n in self.live()), "a leader", WAIT)
        return next(n for n in self.live() if n.is_leader())

    def stop(self, node: Replicator) -> None:
        i = self.nodes.index(node)
        self.acceptors[i].attach(None)
        node.close()
        self.nodes[i] = None

    def close(self) -> None:
        for node in self.live():
            self.stop(node)
        for acceptor in self.acceptors:
            acceptor.close()


@pytest.fixture
def replicators(tmp_path: Path) -> Iterator[Replicators]:
    """Three Replicators that confirm every read with a ReadIndex round (no lease)."""
    r = Replicators(tmp_path, 3, read_lease=False)
    try:
        yield r
    finally:
        r.close()


def test_read_barrier_costs_a_round_trip_and_concurrent_reads_share_rounds(
    replicators: Replicators,
) -> None:
    leader = replicators.leader()
    wait_until(lambda: len(leader.peer_health()) == 2, "both followers connected", WAIT)
    for _ in range(20):  # warm up
        leader.read_barrier(5)
    latencies = []
    for _ in range(300):
        start = time.perf_counter()
        leader.read_barrier(5)
        latencies.append(time.perf_counter() - start)
    latencies.sort()
    p50, p99 = latencies[150], latencies[296]
    print(f"read barrier, 1 caller: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
    # A round that waited for the next heartbeat would take ~50 ms on average.
    assert p50 < 0.02

    callers, per_caller = 16, 100
    before = leader.core.read_stats
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(per_caller):
                leader.read_barrier(5)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    assert not errors, errors
    requests, rounds = (
        now - then for now, then in zip(leader.core.read_stats, before, strict=True)
    )
    assert requests == callers * per_caller
    print(
        f"read barrier, {callers} callers: {requests / elapsed:.0f} barriers/s, "
        f"{rounds} rounds for {requests} calls ({requests / rounds:.1f} calls per round)"
    )
    assert rounds * 3 < requests, "concurrent reads share rounds"


def test_read_barrier_raises_not_leader_on_a_follower(replicators: Replicators) -> None:
    leader = replicators.leader()
    follower = next(n for n in replicators.live() if n is not leader)
    with pytest.raises(NotLeader):
        follower.read_barrier(1)


def test_read_barrier_times_out_without_followers_then_raises_not_leader(
    replicators: Replicators,
) -> None:
    leader = replicators.leader()
    leader.read_barrier(5)
    # The control for the timeout below: with its followers, the same call confirms within it.
    leader.read_barrier(0.5)
    for node in [n for n in replicators.live() if n is not leader]:
        replicators.stop(node)
    start = time.monotonic()
    with pytest.raises(LeadershipUnconfirmed):
        leader.read_barrier(0.5)
    assert 0.5 <= time.monotonic() - start < 1.5
    # Once PySyncObj's silence timeout (2 s) deposes it, it says so at once.
    wait_until(lambda: not leader.is_elected(), "the leader to step down", WAIT)
    start = time.monotonic()
    with pytest.raises(NotLeader):
        leader.read_barrier(5)
    assert time.monotonic() - start < 0.1


def test_read_now_only_while_a_read_needs_no_round(tmp_path: Path) -> None:
    """``Replicator.read_now``: True on a leader under its lease, never on a follower, and
    False once the lease ran out on a leader cut off from its followers (still elected)."""
    r = Replicators(tmp_path, 3)
    try:
        leader = r.leader()
        wait_until(leader.read_now, "the leader to read under its lease", WAIT)
        follower = next(n for n in r.live() if n is not leader)
        assert not follower.read_now()
        for node in [n for n in r.live() if n is not leader]:
            r.stop(node)
        wait_until(lambda: not leader.read_now(), "the lease to run out", WAIT)
        with pytest.raises((LeadershipUnconfirmed, NotLeader)):
            leader.read_barrier(0.2)
    finally:
        r.close()


def test_read_now_without_the_lease(replicators: Replicators, tmp_path: Path) -> None:
    """Without the lease every read of three voters takes a round; one voter needs none."""
    leader = replicators.leader()
    leader.read_barrier(5)
    assert not leader.read_now()
    single = Replicators(tmp_path / "single", 1, read_lease=False)
    try:
        node = single.leader()
        wait_until(node.read_now, "the single voter to read at once", WAIT)
    finally:
        single.close()


def test_read_barrier_on_a_single_node(tmp_path: Path) -> None:
    r = Replicators(tmp_path, 1)
    try:
        node = r.leader()
        assert node.read_barrier(5) >= 1
        latencies = []
        for _ in range(200):
            start = time.perf_counter()
            node.read_barrier(5)
            latencies.append(time.perf_counter() - start)
        print(f"read barrier, single node: p50 {statistics.median(latencies) * 1e3:.3f} ms")
        assert node.core.read_stats[1] == 0
    finally:
        r.close()
