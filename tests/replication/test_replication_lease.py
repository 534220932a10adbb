"""The leader lease (raft/lease.py): reads with no round, and why no other leader interferes.

Followers' refusal of early votes on a node whose thread the test plays; the
rest on real clusters on 127.0.0.1 (the in-process :class:`Cluster` of the
ReadIndex tests, whose links the test cuts).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dqlitepy_server import free_port
from pysyncobj.config import FAIL_REASON
from test_replication_readindex import (
    WAIT,
    Cluster,
    Played,
    _address,
    _apply,
    played_leader,
)
from waiting import wait_until

from dqlitepy.replication.raft import (
    FOLLOWER,
    LEADER,
    HardenedSyncObj,
    PeerNode,
    ReadResult,
    raft_config,
)
from dqlitepy.replication.raft.lease import DRIFT_MARGIN
from dqlitepy.replication.transport import (
    RaftMessageError,
    decode_raft_message,
    encode_raft_message,
)

MIN_TIMEOUT = 0.8  # raft_config's raftMinTimeout


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(3)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def played() -> Iterator[Played]:
    """A leader of term 2 among 3 voters whose thread the test plays (see the ReadIndex tests)."""
    yield from played_leader()


def _both_followers_answer(
    played: Played, next_node_idx: int = 7, success: bool = True
) -> dict[str, Any]:
    """Both followers answer the leader's AppendEntries now (by default, up to its last
    entry, 6: a lease's quorum); returns the answer."""
    answer = {
        "type": "next_node_idx",
        "next_node_idx": next_node_idx,
        "reset": not success,
        "success": success,
        "term": 2,
        "read_round": 0,
        "sent_at": time.monotonic(),
    }
    for follower in (played.a, played.b):
        played.node._SyncObj__onMessageReceived(follower, dict(answer))
    return answer


def _leased(c: Cluster) -> HardenedSyncObj:
    leader = c.leader()
    wait_until(lambda: leader.lease_valid, "the leader to hold a lease", WAIT)
    return leader


# ------------------------------------------------------------ the followers' refusal


def _follower(min_timeout: float) -> tuple[HardenedSyncObj, PeerNode, PeerNode, list[Any]]:
    """A follower of ``old`` at term 3 whose thread the test plays, and what it sends."""
    me, old, candidate = (f"127.0.0.1:{free_port()}" for _ in range(3))
    conf = raft_config(
        autoTick=False,
        raftMinTimeout=min_timeout,
        raftMaxTimeout=2 * min_timeout,
        connectionTimeout=2 * min_timeout,
    )
    node = HardenedSyncObj(me, [old, candidate], conf, _apply)
    sent: list[Any] = []
    node._SyncObj__transport.send = lambda peer, message: sent.append(message)
    node._SyncObj__setCurrentTerm(3, None)
    heartbeat = {
        "type": "append_entries",
        "term": 3,
        "commit_index": 0,
        "prevLogIdx": 1,
        "prevLogTerm": 0,
        "entries": [],
        "read_round": 0,
        "sent_at": 12.5,
    }
    node._SyncObj__onMessageReceived(PeerNode(old), heartbeat)
    assert sent[-1]["success"] and sent[-1]["sent_at"] == 12.5, "the answer echoes sent_at"
    return node, PeerNode(old), PeerNode(candidate), sent


def _vote_request(**extra: Any) -> dict[str, Any]:
    return {"type": "request_vote", "term": 4, "last_log_index": 1, "last_log_term": 0, **extra}


def test_a_follower_ignores_a_vote_request_while_it_hears_from_its_leader() -> None:
    node, _, candidate, sent = _follower(min_timeout=0.4)
    try:
        sent.clear()
        node._SyncObj__onMessageReceived(candidate, _vote_request())
        assert sent == [], "no vote granted"
        assert node._SyncObj__raftCurrentTerm == 3, "nor the candidate's term taken"
        time.sleep(0.4)  # raftMinTimeout without a word from the leader
        node._SyncObj__onMessageReceived(candidate, _vote_request())
        assert sent == [{"type": "response_vote", "term": 4}]
        assert node._SyncObj__raftCurrentTerm == 4
    finally:
        node._doDestroy()


def test_a_follower_votes_at_once_for_a_candidate_its_leader_sent_timeout_now() -> None:
    node, _, candidate, sent = _follower(min_timeout=5.0)
    try:
        sent.clear()
        node._SyncObj__onMessageReceived(candidate, _vote_request(transfer=True))
        assert sent == [{"type": "response_vote", "term": 4}]
    finally:
        node._doDestroy()


def test_a_restarted_follower_keeps_refusing_as_if_it_had_just_heard_a_leader() -> None:
    me, a, b = (f"127.0.0.1:{free_port()}" for _ in range(3))
    conf = raft_config(
        autoTick=False, raftMinTimeout=5.0, raftMaxTimeout=6.0, connectionTimeout=6.0
    )
    node = HardenedSyncObj(me, [a, b], conf, _apply)
    try:
        sent: list[Any] = []
        node._SyncObj__transport.send = lambda peer, message: sent.append(message)
        node._SyncObj__onMessageReceived(PeerNode(b), _vote_request())
        assert sent == []
    finally:
        node._doDestroy()


def test_a_live_leader_is_not_deposed_by_a_node_that_cannot_hear_it(cluster: Cluster) -> None:
    """A node cut off from the leader alone campaigns in vain: its peer hears the leader."""
    leader = _leased(cluster)
    other = next(a for a in cluster.addresses if a != _address(leader))
    term = leader._SyncObj__raftCurrentTerm
    cluster.cut(_address(leader), other)
    # Its election timer expires within raftMaxTimeout (1.2 s), again and again.
    wait_until(
        lambda: cluster.node(other)._SyncObj__raftCurrentTerm > term + 1,
        "the cut-off node to campaign twice",
        WAIT,
    )
    assert leader.raft_state == LEADER and leader._SyncObj__raftCurrentTerm == term
    assert leader.lease_valid and leader.read_barrier(5)[0] == ReadResult.CONFIRMED


def test_a_transfer_target_wins_its_first_election_at_once() -> None:
    """The target's RequestVote says TimeoutNow started it: followers vote at once.

    With 5 voters the target needs a follower's vote besides its own and the old
    leader's, and every follower heard the old leader a moment ago.
    """
    c = Cluster(5)
    try:
        old = _leased(c)
        term = old._SyncObj__raftCurrentTerm
        target = next(n for n in old._SyncObj__otherNodes)
        outcome: list[int] = []
        start = time.monotonic()
        old.on_tick(lambda: old.transfer(target, outcome.append))
        new = c.node(str(target.id))
        wait_until(lambda: new.raft_state == LEADER, "the target to lead", WAIT)
        elapsed = time.monotonic() - start
        assert elapsed < MIN_TIMEOUT / 2, f"{elapsed:.2f} s: followers made it wait"
        assert new._SyncObj__raftCurrentTerm == term + 1, "won its first election"
        wait_until(lambda: bool(outcome), "the transfer to end", WAIT)
        assert outcome == [FAIL_REASON.SUCCESS]
    finally:
        c.close()


# ------------------------------------------------------------ the lease


def test_a_lease_read_needs_no_message(cluster: Cluster) -> None:
    leader = _leased(cluster)
    counted: list[str] = []
    transport = leader._SyncObj__transport
    send = transport.send

    def counting_send(peer: Any, message: Any) -> Any:
        counted.append(message["type"])
        return send(peer, message)

    transport.send = counting_send
    requests, rounds = leader.read_stats
    served = leader.lease_reads
    start = time.monotonic()
    for _ in range(300):
        assert leader.read_barrier(5)[0] == ReadResult.CONFIRMED
    elapsed = time.monotonic() - start
    assert leader.read_stats == (requests, rounds), "no round, not even Raft's thread"
    assert leader.lease_reads == served + 300
    # Only heartbeats (2 followers, one each per appendEntriesPeriod) went out.
    assert len(counted) <= 2 * (elapsed / 0.1 + 2), (len(counted), elapsed)
    print(f"300 lease reads in {elapsed * 1e3:.1f} ms")


def test_forced_readindex_takes_a_round_per_read() -> None:
    c = Cluster(3, read_lease=False)
    try:
        leader = c.leader()
        wait_until(lambda: leader.commit_index >= (leader.noop_index or 0), "the no-op", WAIT)
        time.sleep(0.3)  # a few heartbeats answered: a lease would be held by now
        _, rounds = leader.read_stats
        for _ in range(20):
            assert leader.read_barrier(5)[0] == ReadResult.CONFIRMED
        assert leader.read_stats[1] == rounds + 20
        assert leader.lease_reads == 0 and not leader.lease_valid
    finally:
        c.close()


def test_a_new_leader_holds_no_lease_before_its_noop_commits(played: Played) -> None:
    """Answers may come in before the no-op commits (a follower whose log lacks entries)."""
    leader, node = played, played.node
    node._SyncObj__raftCommitIndex = node._SyncObj__raftLastApplied = 4  # the no-op is 6
    answer = _both_followers_answer(leader, next_node_idx=5, success=False)
    node._tend_lease()
    assert not node.lease_valid
    node._SyncObj__raftCommitIndex = 6
    node._tend_lease()
    assert node.lease_valid
    # Answers without sent_at (a node without the lease), or from an earlier term, count not.
    node._lease = None
    node._lease_acks.clear()
    for follower, extra in ((leader.a, {"term": 1}), (leader.b, {"sent_at": None})):
        node._SyncObj__onMessageReceived(follower, {**answer, **extra})
    node._tend_lease()
    assert not node.lease_valid


def test_a_leader_that_stops_voting_or_leading_loses_its_lease(played: Played) -> None:
    """The majority behind a lease counted the leader's own vote."""
    node = played.node
    _both_followers_answer(played)
    assert node.lease_valid
    node._voting = False
    assert not node.lease_valid
    node._voting = True
    assert node.lease_valid
    node._SyncObj__setState(FOLLOWER)
    assert not node.lease_valid
    node._tend_lease()
    assert node._lease is None


def test_a_cut_off_leader_serves_no_lease_read_once_another_could_be_elected() -> None:
    """Isolated, the old leader reads under its lease, never after the others elect."""
    c = Cluster(3, leaderFallbackTimeout=60.0)  # only the lease protects it
    try:
        old = _leased(c)
        elected: list[float] = []
        c.on_leading = lambda address: elected.append(time.monotonic())
        confirmed: list[float] = []  # when each confirmed read began
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                began = time.monotonic()
                if old.read_barrier(0.05)[0] == ReadResult.CONFIRMED:
                    confirmed.append(began)

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            time.sleep(0.2)
            cut = time.monotonic()
            c.isolate(_address(old))
            others = [a for a in c.addresses if a != _address(old)]
            new = c.leader(others)
            assert new.submit_and_wait(b"newer", timeout=5)[1] == FAIL_REASON.SUCCESS
            time.sleep(0.2)
        finally:
            stop.set()
            thread.join()
        assert old.raft_state == LEADER, "it still believes it leads"
        assert any(t > cut for t in confirmed), "it served reads under its lease after the cut"
        assert elected and max(confirmed) < elected[0], max(confirmed) - elected[0]
        assert max(confirmed) < cut + MIN_TIMEOUT * (1 - DRIFT_MARGIN)
    finally:
        c.close()


def test_a_failed_transfer_ends_the_lease_for_the_rest_of_the_term(cluster: Cluster) -> None:
    """TimeoutNow went out: the target might still win, so the leader reads by ReadIndex."""
    leader = _leased(cluster)
    term = leader._SyncObj__raftCurrentTerm
    target = next(n for n in leader._SyncObj__otherNodes)
    transport = leader._SyncObj__transport
    send = transport.send
    at_send: list[bool] = []

    def losing_target(peer: Any, message: Any) -> Any:
        if message["type"] == "timeout_now":
            # The target starts its election, but nobody hears it.
            for address in cluster.addresses:
                cluster.blocked.add((str(target.id), address))
            result = send(peer, message)
            at_send.append(leader.lease_valid)
            return result
        return send(peer, message)

    transport.send = losing_target
    outcome: list[int] = []
    leader.on_tick(lambda: leader.transfer(target, outcome.append))
    wait_until(lambda: bool(outcome), "the transfer to give up", WAIT)
    assert outcome == [FAIL_REASON.REQUEST_DENIED]
    assert at_send == [False], "the lease ended as TimeoutNow left"
    assert leader.raft_state == LEADER and leader._SyncObj__raftCurrentTerm == term
    time.sleep(0.3)  # heartbeats answered by the other follower
    assert not leader.lease_valid
    _, rounds = leader.read_stats
    served = leader.lease_reads
    assert leader.read_barrier(5)[0] == ReadResult.CONFIRMED
    assert leader.read_stats[1] == rounds + 1 and leader.lease_reads == served


def test_a_configuration_change_ends_the_lease(cluster: Cluster) -> None:
    """A lease counted with the old voters proves nothing: count again with the new ones."""
    leader = _leased(cluster)
    follower = next(n for n in leader._SyncObj__otherNodes)
    seen: list[bool] = []
    done = threading.Event()

    def remove() -> None:  # the leader's side of a configuration change, on its thread
        leader._set_role(str(follower.id), None)
        seen.append(leader.lease_valid)
        done.set()

    leader.on_tick(remove)
    assert done.wait(WAIT)
    assert seen == [False]
    wait_until(lambda: leader.lease_valid, "a lease counted with the new voters", WAIT)
    assert leader._lease_voters == leader._SyncObj__otherNodes


# ------------------------------------------------------------ on the wire


def test_the_secure_transport_carries_the_lease_fields() -> None:
    heartbeat = {
        "type": "append_entries",
        "term": 3,
        "commit_index": 9,
        "entries": [],
        "prevLogIdx": 9,
        "prevLogTerm": 3,
        "read_round": 12,
        "sent_at": 1234.5,
    }
    answer = {
        "type": "next_node_idx",
        "next_node_idx": 10,
        "reset": False,
        "success": True,
        "term": 3,
        "read_round": 12,
        "sent_at": 1234.5,
    }
    for message in (heartbeat, answer, _vote_request(transfer=True)):
        assert decode_raft_message(encode_raft_message(message)) == message
    for bad in (
        {**heartbeat, "sent_at": None},
        {**heartbeat, "sent_at": -1.0},
        {**answer, "sent_at": float("nan")},
        {**answer, "sent_at": 7},
        _vote_request(transfer=1),
    ):
        with pytest.raises(RaftMessageError):
            encode_raft_message(bad)


def test_read_index_now_answers_only_a_read_that_needs_no_wait(played: Played) -> None:
    """The server's one check per read (``read_index_now``): leading, under a lease, and
    applied up to the read index; anything else is None (read_barrier then waits)."""
    node = played.node
    assert node.read_index_now() is None, "no lease yet, and two other voters"
    _both_followers_answer(played)
    assert node.lease_valid
    served = node.lease_reads
    assert node.read_index_now() == 6
    assert node.lease_reads == served + 1, "counted as a lease read"
    # Committed but not applied yet: a read now would have to wait for it.
    node._commit_index = 7
    assert node.read_index_now() is None
    node._SyncObj__raftLastApplied = 7
    assert node.read_index_now() == 7
    lease = node._lease
    assert lease is not None
    node._lease = lease._replace(until=time.monotonic() - 0.001)  # the lease ran out
    assert node.read_index_now() is None
    node._lease = lease
    assert node.read_index_now() == 7
    node._SyncObj__setState(FOLLOWER)  # deposed, the lease not tended yet
    assert node.read_index_now() is None
    assert node.lease_reads == served + 3, "only the reads it answered"
