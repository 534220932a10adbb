"""Jepsen-style workloads on a real 3-process cluster under kills, pauses and restarts.

- bank: transfers between accounts in transactions; every read of the total, on
  whichever node leads, must see the same total, and so must the end state;
- append: every acknowledged insert must be present exactly once at the end.

A nemesis SIGKILLs and restarts, or SIGSTOPs and SIGCONTs, a random node every
couple of seconds (never two at once, so a majority stays up).  Bounded in time.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from dqlitepy_server import DqlitepyCluster

import dqlitepy

ACCOUNTS = 5
BALANCE = 100
RUN_SECONDS = 15.0


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[DqlitepyCluster]:
    # Compact the log every 200 entries: snapshots are written, and installed on
    # nodes that come back from a kill, while the workloads run.
    monkeypatch.setenv("DQLITEPY_SNAPSHOT_ENTRIES", "200")
    with DqlitepyCluster.formed() as c:
        yield c


class Nemesis(threading.Thread):
    """Kills/restarts or pauses/resumes one random node at a time."""

    def __init__(self, cluster: DqlitepyCluster, seed: int) -> None:
        super().__init__(name="nemesis")
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.actions: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(1.5, 2.5)):
            node = self.rng.choice(self.cluster.nodes)
            if self.rng.random() < 0.5:
                node.stop(signal.SIGKILL)
                self.actions.append(f"kill {node.address}")
                self.stop.wait(self.rng.uniform(0.5, 1.5))
                node.start(timeout=60)
            else:
                process = node.process
                assert process is not None
                process.send_signal(signal.SIGSTOP)
                self.actions.append(f"pause {node.address}")
                self.stop.wait(self.rng.uniform(0.5, 1.5))
                process.send_signal(signal.SIGCONT)


def _connect(cluster: DqlitepyCluster) -> dqlitepy.Connection:
    return dqlitepy.connect(
        "jepsen",
        servers=cluster.addresses,
        leader_timeout=20,
        attempt_timeout=1,
        request_timeout=3,
        check_same_thread=False,
    )


@pytest.mark.slow
def test_bank_and_append_under_faults(cluster: DqlitepyCluster) -> None:
    seed = int(os.environ.get("DQLITEPY_FAULT_SEED") or random.randrange(1 << 30))
    print(f"seed {seed} (replay with DQLITEPY_FAULT_SEED)")
    setup = _connect(cluster)
    with setup:
        setup.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
        setup.executemany(
            "INSERT INTO accounts VALUES (?, ?)", [(i, BALANCE) for i in range(ACCOUNTS)]
        )
        setup.execute("CREATE TABLE log (v TEXT PRIMARY KEY)")
    setup.close()

    stop = threading.Event()
    totals: list[int] = []
    acknowledged: list[str] = []
    counts = {"transfers": 0, "appends": 0, "failures": 0}
    lock = threading.Lock()

    def banker(worker: int) -> None:
        rng = random.Random(seed + worker)
        conn = _connect(cluster)
        while not stop.is_set():
            a, b = rng.sample(range(ACCOUNTS), 2)
            amount = rng.randint(1, 10)
            try:
                with conn:
                    conn.execute(
                        "UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, a)
                    )
                    conn.execute(
                        "UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, b)
                    )
                total = conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
                with lock:
                    counts["transfers"] += 1
                    totals.append(total)
            except dqlitepy.Error:
                with lock:
                    counts["failures"] += 1
                time.sleep(0.05)
        conn.close()

    def appender(worker: int) -> None:
        conn = _connect(cluster)
        conn.isolation_level = None
        i = 0
        while not stop.is_set():
            value = f"w{worker}-{i}"
            i += 1
            try:
                conn.execute("INSERT INTO log VALUES (?)", (value,))
                with lock:
                    acknowledged.append(value)
                    counts["appends"] += 1
            except dqlitepy.IntegrityError:
                # A retried insert whose first attempt did commit: present once.
                with lock:
                    acknowledged.append(value)
            except dqlitepy.Error:
                with lock:
                    counts["failures"] += 1
                time.sleep(0.05)
        conn.close()

    workers = [threading.Thread(target=banker, args=(i,)) for i in range(2)]
    workers += [threading.Thread(target=appender, args=(i,)) for i in range(2)]
    nemesis = Nemesis(cluster, seed)
    for t in workers:
        t.start()
    nemesis.start()
    time.sleep(RUN_SECONDS)
    nemesis.stop.set()
    nemesis.join(120)
    stop.set()
    for t in workers:
        t.join(120)

    # Everyone is back up: the final state, through whichever node leads (which
    # may still be catching up: give its answer time).
    check = dqlitepy.connect(
        "jepsen", servers=cluster.addresses, leader_timeout=60, request_timeout=60
    )
    final_total = check.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
    rows = [r[0] for r in check.execute("SELECT v FROM log")]
    check.close()
    print(counts, nemesis.actions)
    assert counts["transfers"] > 0 and counts["appends"] > 0
    assert nemesis.actions, "the nemesis did nothing"
    assert set(totals) == {ACCOUNTS * BALANCE}, f"totals seen: {sorted(set(totals))}"
    assert final_total == ACCOUNTS * BALANCE
    assert len(rows) == len(set(rows))
    missing = set(acknowledged) - set(rows)
    assert not missing, f"acknowledged appends lost: {sorted(missing)[:5]}"
