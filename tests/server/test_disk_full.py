"""Disk full: real ``dqlitepy server`` processes whose data directories are small tmpfs mounts.

A leader whose disk fills steps down and stays out of elections until the probe of its Raft
log works again; clients are told ``database or disk is full`` (13) when their write provably
did not happen and ``leadership lost`` (10506) when its outcome is unknown, never anything
else; no acknowledged write is lost, and everything recovers once space is freed, without a
restart (``docs/replication.md``, "Disk full and I/O errors").

Mounting needs root (CI runs as root): without it the tests are skipped, saying so.  Every
mount is unmounted in the fixtures' teardown, after the processes using it are killed.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dqlitepy_server import DqlitepyCluster as Cluster
from small_fs import FILLER, fill, needs_root, small_filesystem, unfill
from waiting import wait_until

import dqlitepy

pytestmark = [pytest.mark.slow, needs_root, pytest.mark.timeout(240)]

_SQLITE_FULL = 13
_LEADERSHIP_LOST = 10506
_DATABASE = "app"


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[list[Path]]:
    """Three 32 MiB tmpfs mounts (the nodes' logs go beside them, in ``tmp_path``)."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(small_filesystem(32, parent=tmp_path)) for _ in range(3)]


@pytest.fixture
def cluster(disks: list[Path]) -> Iterator[Cluster]:
    # Torn down before `disks`: the processes are killed before their mounts go.
    with Cluster.formed(data_dirs=disks) as c:
        yield c


class _Writer:
    """Inserts ids 0, 1, 2... through the driver on a thread, sorting every outcome."""

    def __init__(self, servers: list[str], *, leader_timeout: float) -> None:
        self.url = f"dqlite://{','.join(servers)}/{_DATABASE}"
        self.leader_timeout = leader_timeout
        self.acknowledged: list[int] = []
        self.full: list[int] = []  # SQLITE_FULL: did not happen
        self.unknown: list[int] = []  # leadership lost, no leader: may have happened
        self.wrong: list[tuple[int, str]] = []
        self.no_leader = 0
        self._next = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the writer hangs"

    def _run(self) -> None:
        conn = dqlitepy.connect(self.url, isolation_level=None, leader_timeout=self.leader_timeout)
        try:
            while not self._stop.is_set():
                value = self._next
                self._next += 1
                try:
                    conn.execute("INSERT INTO t (id) VALUES (?)", (value,))
                except dqlitepy.NoLeaderError:
                    # Nothing was sent: the driver found no leader in time.
                    self.no_leader += 1
                    self.unknown.append(value)
                except dqlitepy.Error as exc:
                    code = getattr(exc, "sqlite_errorcode", None)
                    if code == _SQLITE_FULL:
                        self.full.append(value)
                    elif code == _LEADERSHIP_LOST:
                        self.unknown.append(value)
                    else:
                        self.wrong.append((value, f"{type(exc).__name__} {code}: {exc}"))
                    time.sleep(0.05)
                else:
                    self.acknowledged.append(value)
                time.sleep(0.01)
        finally:
            conn.close()

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self._thread.is_alive(), "the writer died"
            assert time.monotonic() < deadline, f"{what} (writer: {self.summary()})"
            time.sleep(0.05)

    def summary(self) -> str:
        return (
            f"{len(self.acknowledged)} acknowledged, {len(self.full)} disk full, "
            f"{len(self.unknown)} unknown ({self.no_leader} no leader), wrong: {self.wrong[:3]}"
        )


def _setup(cluster: Cluster, rows: int) -> list[int]:
    conn = dqlitepy.connect(_DATABASE, servers=cluster.addresses, isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        for value in range(-rows, 0):
            conn.execute("INSERT INTO t (id) VALUES (?)", (value,))
    finally:
        conn.close()
    return list(range(-rows, 0))


def _rows_on(address: str) -> set[int]:
    """Every id, read on ``address`` (which must lead), after an integrity check."""
    conn = dqlitepy.connect(_DATABASE, servers=[address])
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return {row[0] for row in conn.execute("SELECT id FROM t")}
    finally:
        conn.close()


def _check_outcomes(rows: set[int], writer: _Writer, before: list[int]) -> None:
    missing = (set(before) | set(writer.acknowledged)) - rows
    assert not missing, f"acknowledged writes lost: {sorted(missing)[:10]}"
    ghosts = set(writer.full) & rows
    assert not ghosts, f"writes answered 'disk full' were stored: {sorted(ghosts)}"
    assert not writer.wrong, writer.wrong


def test_a_leader_whose_disk_fills_steps_down_and_rejoins_when_space_is_freed(
    cluster: Cluster, disks: list[Path]
) -> None:
    before = _setup(cluster, 20)
    full_node = cluster.leader()
    disk = disks[cluster.addresses.index(full_node)]
    with _Writer(cluster.addresses, leader_timeout=20) as writer:
        writer.wait_for(lambda: len(writer.acknowledged) >= 10, 20, "no write went through")
        filled_at = time.monotonic()
        fill(disk)
        # The full leader's client is told "disk full", and the leader steps down.
        writer.wait_for(lambda: bool(writer.full or writer.unknown), 20, "no write failed")
        # (The client may hear "disk full" a tick before Raft's thread steps down.)
        wait_until(
            lambda: cluster.leader(timeout=20) != full_node,
            "the full leader to step down",
            max(0.0, filled_at + 10 - time.monotonic()),
            0.05,
        )
        stepped_down = time.monotonic() - filled_at
        # Writes go on through the driver, on another leader.
        acked = len(writer.acknowledged)
        writer.wait_for(lambda: len(writer.acknowledged) >= acked + 30, 30, "writes stopped")
        # The full node stays out of elections while its disk is full (its probe fails
        # every second meanwhile).
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert cluster.leader() != full_node
            time.sleep(0.2)
        freed_at = time.monotonic()
        unfill(disk)
        acked = len(writer.acknowledged)
        writer.wait_for(lambda: len(writer.acknowledged) >= acked + 20, 30, "writes stopped")
    assert writer.full, f"the first failed write was not answered 'disk full': {writer.summary()}"
    assert writer.no_leader == 0, writer.summary()
    # It rejoined without a restart, caught up, and can lead again.
    cluster.make_leader(full_node, timeout=60)
    rejoined = time.monotonic() - freed_at
    # The control for the window above: the probe it watched sees this node lead.
    wait_until(lambda: cluster.leader() == full_node, "the probe to name it the leader")
    assert all(node.process is not None and node.process.poll() is None for node in cluster.nodes)
    _check_outcomes(_rows_on(full_node), writer, before)
    conn = dqlitepy.connect(_DATABASE, servers=[full_node], isolation_level=None)
    try:
        conn.execute("INSERT INTO t (id) VALUES (?)", (10**9,))
    finally:
        conn.close()
    print(
        f"\nstepped down and replaced in {stepped_down:.2f} s; leading again "
        f"{rejoined:.2f} s after space was freed; {writer.summary()}"
    )


def test_a_follower_whose_disk_fills_holds_nothing_up_and_catches_up(
    cluster: Cluster, disks: list[Path]
) -> None:
    before = _setup(cluster, 20)
    leader = cluster.leader()
    follower = next(address for address in cluster.addresses if address != leader)
    disk = disks[cluster.addresses.index(follower)]
    fill(disk)
    with _Writer(cluster.addresses, leader_timeout=20) as writer:
        # It cannot store entries: the leader and the other follower are the quorum.
        writer.wait_for(lambda: len(writer.acknowledged) >= 50, 30, "writes stopped")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert cluster.leader() == leader
            time.sleep(0.2)
        unfill(disk)
        acked = len(writer.acknowledged)
        writer.wait_for(lambda: len(writer.acknowledged) >= acked + 20, 30, "writes stopped")
    assert not writer.full and not writer.unknown, writer.summary()
    cluster.make_leader(follower, timeout=60)
    # The control for the window above: the probe it watched sees the leader change.
    wait_until(lambda: cluster.leader() == follower, "the probe to name the new leader")
    _check_outcomes(_rows_on(follower), writer, before)


def test_when_every_disk_is_full_writes_fail_clearly_and_the_cluster_recovers(
    cluster: Cluster, disks: list[Path]
) -> None:
    before = _setup(cluster, 20)
    with _Writer(cluster.addresses, leader_timeout=3) as writer:
        writer.wait_for(lambda: len(writer.acknowledged) >= 10, 20, "no write went through")
        for disk in disks:
            fill(disk)
        acked = len(writer.acknowledged)
        writer.wait_for(lambda: len(writer.full) + len(writer.unknown) >= 5, 60, "no failures")
        # Nothing is acknowledged without room on a majority of the disks.
        failed = len(writer.full) + len(writer.unknown)
        time.sleep(3)
        # The control: the writer kept trying in the window, and its outcomes were recorded.
        writer.wait_for(
            lambda: len(writer.full) + len(writer.unknown) >= failed + 2,
            30,
            "the writer stopped trying",
        )
        stalled = len(writer.acknowledged)
        assert stalled <= acked + 1, writer.summary()
        freed_at = time.monotonic()
        for disk in disks:
            unfill(disk)
        writer.wait_for(
            lambda: len(writer.acknowledged) >= stalled + 20, 60, "the cluster did not recover"
        )
        recovered = time.monotonic() - freed_at
    assert writer.full, f"no write was answered 'disk full': {writer.summary()}"
    assert all(node.process is not None and node.process.poll() is None for node in cluster.nodes)
    _check_outcomes(_rows_on(cluster.leader()), writer, before)
    print(f"\nrecovered {recovered:.2f} s after space was freed; {writer.summary()}")


def _leave_free(disk: Path, mib: int) -> None:
    """Fill ``disk``'s file system but for about ``mib`` MiB (``unfill`` frees it again)."""
    free = shutil.disk_usage(disk).free - (mib << 20)
    chunk = bytes(1 << 20)
    with (disk / FILLER).open("wb") as out:
        while free > 0:
            out.write(chunk[: min(free, len(chunk))])
            free -= len(chunk)


def test_a_rebuild_that_fails_on_a_full_disk_keeps_the_committed_frames(
    tmp_path: Path,
) -> None:
    """Blobs fill a leader's disk with committed WAL frames that its rebuild cannot fold in.

    Stepping down, it rolls its files back: the checkpoint needs to grow the database file
    and fails with SQLITE_FULL part-way, and is retried until space is freed.  A retry must
    still know where the committed frames end: cutting the WAL there drops pages the file
    never got, and the pages written past them later leave a malformed database.
    """
    blob = 128 * 1024
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(small_filesystem(32, parent=tmp_path))
        _leave_free(disk, 10)
        cluster = stack.enter_context(
            Cluster.formed(data_dirs=[disk, tmp_path / "n1", tmp_path / "n2"])
        )
        full_node = cluster.addresses[0]
        cluster.make_leader(full_node)
        conn = dqlitepy.connect(
            f"dqlite://{','.join(cluster.addresses)}/blobs",
            isolation_level=None,
            leader_timeout=20,
        )
        stack.callback(conn.close)
        conn.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, x BLOB)")
        # Until its disk is full (10 MiB holds fewer than 80 blobs in the WAL and the log).
        for i in range(200):
            try:
                conn.execute("INSERT INTO b VALUES (?, randomblob(?))", (i, blob))
            except dqlitepy.Error as exc:
                assert getattr(exc, "sqlite_errorcode", None) in (_SQLITE_FULL, _LEADERSHIP_LOST)
                break
        else:
            pytest.fail("the leader's disk never filled")
        wait_until(lambda: cluster.leader() != full_node, "the full leader to step down", 20)
        # Newer pages, past the end of what its file holds, while its rebuild keeps failing.
        for i in range(1000, 1010):
            conn.execute("INSERT INTO b VALUES (?, randomblob(?))", (i, blob))
        # The control: its rebuild failed (and is retried) while the disk is full.
        wait_until(
            lambda: "rebuilding the database files failed" in cluster.node(full_node).log(),
            "the rebuild on the full disk to fail",
            20,
            0.1,
        )
        time.sleep(1.5)  # a few retries
        unfill(disk)
        for i in range(2000, 2005):
            conn.execute("INSERT INTO b VALUES (?, randomblob(?))", (i, 100))
        contents = "SELECT id, x FROM b ORDER BY id"
        rows = {}
        for address in [full_node, *cluster.addresses[1:]]:
            # Each node's own copy, the once-full one first (it must serve reads again).
            check = cluster.read_on(address, "blobs", "PRAGMA integrity_check")
            assert check == [("ok",)], f"{address}: {str(check)[:300]}"
            rows[address] = cluster.read_on(address, "blobs", contents)
        assert all(r == rows[full_node] for r in rows.values())
        assert {2000, 2004, 1009} <= {row[0] for row in rows[full_node]}
