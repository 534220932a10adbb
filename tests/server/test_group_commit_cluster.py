"""Group commit on a real 3-process cluster: 16 writers, and the leader killed under them.

With 16 concurrent writers of one database every writer gets its turn (no
``database is locked``), commits are in flight together, and a SIGKILL of the
leader in the middle loses no acknowledged write: every node ends with the
same rows, which hold every acknowledged row and only rows whose writer was
told the outcome is unknown.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from dqlitepy_server import DqlitepyCluster
from waiting import wait_until

import dqlitepy

WRITERS = 16
DATABASE = "group"


@pytest.fixture
def cluster() -> Iterator[DqlitepyCluster]:
    with DqlitepyCluster.formed() as c:
        yield c


class _Writers:
    """WRITERS threads inserting (writer, seq) rows; what each was told."""

    def __init__(self, cluster: DqlitepyCluster) -> None:
        self._url = f"dqlite://{','.join(cluster.addresses)}/{DATABASE}"
        self.lock = threading.Lock()
        self.acknowledged: set[tuple[int, int]] = set()
        self.unknown: set[tuple[int, int]] = set()
        self.errors: Counter[str] = Counter()
        self.stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(WRITERS)
        ]

    def __enter__(self) -> _Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)
        assert not any(t.is_alive() for t in self._threads)

    def acked(self) -> int:
        with self.lock:
            return len(self.acknowledged)

    def _run(self, writer: int) -> None:
        conn: dqlitepy.Connection | None = None
        seq = 0
        while not self.stop.is_set():
            row = (writer, seq)
            seq += 1
            try:
                if conn is None:
                    conn = dqlitepy.connect(
                        self._url, isolation_level=None, timeout=10, attempt_timeout=2
                    )
                conn.execute("INSERT INTO t (writer, seq) VALUES (?, ?)", row)
                with self.lock:
                    self.acknowledged.add(row)
            except dqlitepy.OperationalError as exc:
                refused = isinstance(exc, dqlitepy.NotLeaderError | dqlitepy.NoLeaderError)
                unsent = isinstance(exc, dqlitepy.ConnectionLostError) and not exc.request_sent
                with self.lock:
                    self.errors[str(exc).split(":")[0]] += 1
                    if not (refused or unsent):
                        self.unknown.add(row)
                if conn is not None:
                    with contextlib.suppress(dqlitepy.Error):
                        conn.close()
                conn = None
                self.stop.wait(0.05)
        if conn is not None:
            conn.close()


def _rows_on(cluster: DqlitepyCluster, address: str) -> set[tuple[int, int]]:
    rows = cluster.read_on(address, DATABASE, "SELECT writer, seq FROM t")
    return {(int(w), int(s)) for w, s in rows}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sixteen_writers_lose_nothing_when_the_leader_is_killed(cluster: DqlitepyCluster) -> None:
    conn = dqlitepy.connect(DATABASE, servers=cluster.addresses, isolation_level=None)
    conn.execute("CREATE TABLE t (writer INTEGER, seq INTEGER, PRIMARY KEY (writer, seq))")
    conn.close()
    with _Writers(cluster) as writers:
        wait_until(lambda: writers.acked() >= 200, "200 acknowledged writes", 60)
        old = cluster.node(cluster.leader())
        killed_at = writers.acked()
        assert old.process is not None
        old.process.send_signal(signal.SIGKILL)
        old.process.wait(10)
        # Writes go on through the new leader.
        wait_until(lambda: writers.acked() >= killed_at + 200, "200 writes after the kill", 60)
        old.start(timeout=60)
    assert "database is locked" not in writers.errors, writers.errors
    expected = _rows_on(cluster, cluster.leader(30))
    missing = writers.acknowledged - expected
    assert not missing, f"acknowledged writes lost: {sorted(missing)[:10]}"
    strangers = expected - writers.acknowledged - writers.unknown
    assert not strangers, f"rows nobody was told might exist: {sorted(strangers)[:10]}"
    # Every node, the restarted old leader included, ends with the same rows.
    for node in cluster.nodes:
        wait_until(
            lambda node=node: _rows_on(cluster, node.address) == expected,
            f"{node.address} converged",
            60,
        )
