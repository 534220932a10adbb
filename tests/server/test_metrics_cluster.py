"""``dqlitepy server --metrics-address`` on a 3-node cluster: scraped during a write workload.

Three ``dqlitepy server`` processes on loopback, each serving its metrics on a port of its
own; every scrape is parsed with ``prometheus_client``'s own parser.  The figures must move
(commits, indexes), agree across nodes (one leader, named by all, one term) and add up
(histogram counts against request counts).  ``/readyz`` is 200 on a current member and 503
with a reason when the leader is paused (SIGSTOP, then SIGCONT: the cluster is left whole).

One cluster serves the module (forming one takes most of the time); the tests run in order
and the pausing ones come last.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from dqlitepy_server import CLUSTER_KEY, DqlitepyServer, free_port
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from waiting import wait_until

import dqlitepy
from dqlitepy.replication.transport.messages import check_raft_message


def _get(address: str, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@dataclass
class Scrape:
    """One parsed ``/metrics`` answer."""

    samples: list[Sample]

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples if s.name == name and _matches(s, labels)]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    def labels(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name and s.value == 1]

    def series(self, name: str) -> dict[str, float]:
        """``name``'s samples by their one label's value."""
        return {next(iter(s.labels.values())): s.value for s in self.samples if s.name == name}


def _matches(sample: Sample, labels: dict[str, str]) -> bool:
    return all(sample.labels.get(k) == v for k, v in labels.items())


class Member:
    """A cluster member and its metrics endpoint."""

    def __init__(self, server: DqlitepyServer, metrics: str) -> None:
        self.server = server
        self.metrics = metrics

    @property
    def address(self) -> str:
        return self.server.address

    def scrape(self) -> Scrape:
        status, body = _get(self.metrics, "/metrics")
        assert status == 200, body
        return Scrape([s for f in text_string_to_metric_families(body) for s in f.samples])

    def get(self, path: str) -> tuple[int, str]:
        return _get(self.metrics, path)

    def signal(self, sig: int) -> None:
        process = self.server.process
        assert process is not None
        os.kill(process.pid, sig)  # only the process this test started


def _member(join: list[str] | None) -> Member:
    metrics = f"127.0.0.1:{free_port()}"
    server = DqlitepyServer(
        cluster_key=CLUSTER_KEY, join=join, options=["--metrics-address", metrics]
    )
    return Member(server, metrics)


@pytest.fixture(scope="module")
def members() -> Iterator[list[Member]]:
    first = _member(None)
    members = [first]
    try:
        first.server.start(timeout=60)
        # The two others join at once, in parallel: half the start-up time.
        members += [_member([first.address]), _member([first.address])]
        errors: list[BaseException] = []

        def start(member: Member) -> None:
            try:
                member.server.start(timeout=60)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(m,)) for m in members[1:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert not errors, errors
        wait_until(
            lambda: all(m.get("/readyz")[0] == 200 for m in members), "every member ready", 60
        )
        yield members
    finally:
        for member in members:
            if member.server.process is not None:
                member.signal(signal.SIGCONT)  # a paused one must be able to die
            member.server.close()


def _leader(members: list[Member]) -> Member:
    named = {m.scrape().labels("dqlitepy_raft_leader_info")[0]["address"] for m in members}
    assert len(named) == 1, named
    return next(m for m in members if m.address in named)


def _write(servers: list[str], rows: int) -> None:
    conn = dqlitepy.connect("metrics.db", servers=servers)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        conn.commit()
        for i in range(rows):
            conn.execute("INSERT INTO t VALUES (?)", (i,))
            conn.commit()
    finally:
        conn.close()


def test_figures_move_agree_and_add_up_during_a_workload(members: list[Member]) -> None:
    before = {m.address: m.scrape() for m in members}
    rows = 40
    writer = threading.Thread(target=_write, args=([m.address for m in members], rows))
    writer.start()
    scrapes = 0
    try:
        while writer.is_alive():  # scraped and parsed while the writes go on
            for member in members:
                scrape = member.scrape()
                assert scrape.value("dqlitepy_raft_term") >= 1
                scrapes += 1
    finally:
        writer.join(60)
    assert not writer.is_alive()
    assert scrapes >= 3

    leader = _leader(members)
    followers = [m for m in members if m is not leader]
    commit = leader.scrape().value("dqlitepy_raft_commit_index")
    # The followers apply what the leader committed (at the next heartbeat).
    for member in followers:
        wait_until(
            lambda m=member: m.scrape().value("dqlitepy_raft_applied_index") >= commit,
            f"{member.address} applying up to {commit}",
        )
    after = {m.address: m.scrape() for m in members}

    # Every member applied every transaction: CREATE TABLE and the rows.
    for member in members:
        moved = after[member.address].value("dqlitepy_commits_total") - before[
            member.address
        ].value("dqlitepy_commits_total")
        assert moved >= rows + 1, (member.address, moved)

    # One leader, which everyone names, in one term; every member a voter.
    states = {a: s.labels("dqlitepy_raft_state")[0]["state"] for a, s in after.items()}
    assert sorted(states.values()) == ["follower", "follower", "leader"]
    assert states[leader.address] == "leader"
    assert {s.labels("dqlitepy_raft_leader_info")[0]["address"] for s in after.values()} == {
        leader.address
    }
    assert len({s.value("dqlitepy_raft_term") for s in after.values()}) == 1
    assert all(s.labels("dqlitepy_raft_role") == [{"role": "voter"}] for s in after.values())
    assert all(s.value("dqlitepy_raft_has_leader") == 1 for s in after.values())

    # The leader sees both followers, caught up; followers report no peers.
    led = after[leader.address]
    assert set(led.series("dqlitepy_raft_peer_match_index")) == {m.address for m in followers}
    wait_until(
        lambda: set(leader.scrape().series("dqlitepy_raft_peer_lag_entries").values()) == {0},
        "the followers to acknowledge everything",
    )
    for member in followers:
        assert after[member.address].series("dqlitepy_raft_peer_match_index") == {}

    # Group commit and the journal: the leader appended in batches, everyone synced.
    assert led.value("dqlitepy_raft_batch_entries_count") >= rows
    assert led.value("dqlitepy_raft_batch_entries_sum") >= rows
    for scrape in after.values():
        assert scrape.value("dqlitepy_raft_journal_fsync_seconds_count") >= rows

    # Requests: the leader served the writes; each type's histogram counts every request.
    assert led.value("dqlitepy_requests_total", type="exec_sql", outcome="ok") >= 2 * rows
    for scrape in after.values():
        by_type: dict[str, float] = {}
        for sample in scrape.samples:
            if sample.name == "dqlitepy_requests_total":
                kind = sample.labels["type"]
                by_type[kind] = by_type.get(kind, 0) + sample.value
        for kind, count in by_type.items():
            assert scrape.value("dqlitepy_request_duration_seconds_count", type=kind) == count
            assert scrape.value(
                "dqlitepy_request_duration_seconds_bucket", type=kind, le="+Inf"
            ) == count

    # The database exists on every member.
    for scrape in after.values():
        assert scrape.value("dqlitepy_database_size_bytes", database="metrics.db", file="main") > 0


def test_readyz_is_503_on_a_follower_while_its_leader_is_paused(members: list[Member]) -> None:
    leader = _leader(members)
    follower = next(m for m in members if m is not leader)
    assert follower.get("/readyz") == (200, "ready\n")  # positive control
    leader.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, body = follower.get("/readyz")
        assert status == 503, body
        assert body.startswith("not ready: "), body
        assert time.monotonic() - started < 4  # bounded: about 2 s at most
        assert follower.get("/healthz") == (200, "ok\n")  # the process still serves
    finally:
        leader.signal(signal.SIGCONT)
    # Whole again: a leader (maybe another) and every member current.
    wait_until(lambda: all(m.get("/readyz")[0] == 200 for m in members), "every member ready", 30)


def test_readyz_is_503_on_a_member_alone(members: list[Member]) -> None:
    alone = members[-1]
    others = [m for m in members if m is not alone]
    for member in others:
        member.signal(signal.SIGSTOP)
    try:
        _, body = wait_until(
            lambda: (answer := alone.get("/readyz"))[0] == 503 and answer,
            "the lone member to say it is not ready",
            timeout=20,
        )
        assert body.startswith("not ready: "), body
    finally:
        for member in others:
            member.signal(signal.SIGCONT)


def test_the_follower_read_index_messages_have_exact_shapes() -> None:
    check_raft_message({"type": "read_index", "request": 7})
    check_raft_message({"type": "read_index_answer", "request": 7, "index": 42, "confirmed": True})
    for bad in (
        {"type": "read_index"},
        {"type": "read_index", "request": -1},
        {"type": "read_index", "request": 7, "index": 1},
        {"type": "read_index_answer", "request": 7, "index": 42, "confirmed": 1},
        {"type": "read_index_answer", "request": 7, "index": "42", "confirmed": True},
    ):
        with pytest.raises(ValueError):
            check_raft_message(bad)
