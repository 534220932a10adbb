"""Tests that stop or kill nodes: DUMP while a commit waits for Raft, and ``dqlitepy recover``.

They share one 3-node cluster of their own (the session's must not be stopped): the DUMP
test freezes the followers for a moment and lets them go again, then the recovery test
kills two nodes for good, recovers the third as a single voter (``docs/backup.md``,
"Disaster recovery"), checks that it holds every acknowledged row and takes writes, and
that two fresh nodes can join it and receive the data.  The operator's mistakes with
``dqlitepy recover`` are refused with exit status 2 and change nothing.
"""

from __future__ import annotations

import json
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from backups import contents, node_copy
from dqlitepy_server import CLUSTER_KEY, DqlitepyCluster, DqlitepyServer
from waiting import wait_until

import dqlitepy
from dqlitepy.cli import main
from dqlitepy.cli.backup import write_backup
from dqlitepy.engine import database_filename

ROWS = 60


@pytest.fixture(scope="module")
def cluster() -> Iterator[DqlitepyCluster]:
    with pytest.MonkeyPatch.context() as patch:
        # Snapshots every few entries: the survivor recovers from a snapshot and a log, and
        # the nodes joining it later are sent a snapshot.
        patch.setenv("DQLITEPY_SNAPSHOT_ENTRIES", "20")
        with DqlitepyCluster.formed(3) as formed:
            yield formed


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DQLITEPY_CLUSTER_KEY", raising=False)
    path = tmp_path / "cluster.key"
    path.write_text(CLUSTER_KEY + "\n")
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_dump_leaves_out_a_commit_raft_has_not_committed(
    cluster: DqlitepyCluster, tmp_path: Path
) -> None:
    db = f"inflight_{uuid.uuid4().hex[:8]}"
    with dqlitepy.connect(db, servers=cluster.addresses, isolation_level=None) as conn:
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.execute("INSERT INTO t VALUES ('before')")
    leader = cluster.leader()
    followers = [n for n in cluster.nodes if n.address != leader]
    wal = cluster.node(leader).data_dir / "databases" / (database_filename(db) + "-wal")
    marker = f"in-flight-{uuid.uuid4().hex}"
    outcome: list[object] = []

    def write() -> None:
        try:
            with dqlitepy.connect(db, servers=[leader], isolation_level=None) as conn:
                conn.execute("INSERT INTO t VALUES (?)", (marker,))
            outcome.append("committed")
        except dqlitepy.Error as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    for node in followers:
        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP)
    try:
        writer.start()
        # The commit is in the leader's WAL, waiting for a follower to store it.
        wait_until(lambda: marker.encode() in wal.read_bytes(), "the commit in the leader's WAL")
        with dqlitepy.Client([leader], timeout=5) as client:
            files = client.dump(db, leader)
        held = marker.encode() in wal.read_bytes()  # still there: the DUMP ran meanwhile
    finally:
        for node in followers:
            assert node.process is not None
            node.process.send_signal(signal.SIGCONT)
    writer.join(30)
    write_backup(db, files, tmp_path / "dump.db")
    assert contents(tmp_path / "dump.db")["rows"]["t"] == [(1, "before")]
    assert held, "the leader gave the commit up before the DUMP: the test proved nothing"
    if outcome == ["committed"]:
        # Once Raft committed it, DUMP has it.
        copy = node_copy(leader, db, tmp_path / "after.db")
        assert copy is not None
        assert [r[1] for r in copy["rows"]["t"]] == ["before", marker]


def _write_rows(servers: list[str], database: str) -> None:
    with dqlitepy.connect(database, servers=servers, isolation_level=None) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        for i in range(ROWS):
            conn.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))


def _mistakes(
    capsys: pytest.CaptureFixture[str],
    survivor: DqlitepyServer,
    key_file: Path,
    tmp_path: Path,
) -> None:
    """The operator's mistakes with ``dqlitepy recover`` on a stopped member: refused."""
    data_dir = str(survivor.data_dir)
    wrong = tmp_path / "wrong.key"
    wrong.write_text("another-cluster-key-0123456789abcdef\n")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    empty = tmp_path / "empty.key"
    empty.write_text(" \n")
    for argv, message in [
        # The key file is read as dqlitepy server reads it (cli/config.read_cluster_key).
        (["-d", data_dir, "-k", str(empty)], f"the cluster key file {empty} is empty"),
        (["-d", data_dir, "-k", str(tmp_path / "missing.key")], "cannot read the cluster key file"),
        (["-d", data_dir], "belongs to a replicated cluster; start the node with the cluster key"),
        (["-d", data_dir, "-k", str(wrong)], "the cluster key does not match"),
        (["-d", data_dir, "-k", str(key_file), "-a", "127.0.0.1:1"], "not 127.0.0.1:1"),
        (["-d", str(fresh), "-k", str(key_file)], "holds no member of a replicated cluster"),
        (["-d", str(tmp_path / "none"), "-k", str(key_file)], "is no data directory"),
    ]:
        status, _out, err = _run(capsys, "recover", *argv)
        assert (status, message in err) == (2, True), (argv, err)


def test_recover_a_survivor_after_losing_quorum(
    cluster: DqlitepyCluster,
    key_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = f"recover_{uuid.uuid4().hex[:8]}"
    _write_rows(cluster.addresses, db)
    # The leader holds every acknowledged entry: it is the survivor to pick.
    survivor = cluster.node(cluster.leader())
    for node in cluster.nodes:
        if node is not survivor:
            node.stop(signal.SIGKILL)
    key = ["-k", str(key_file)]
    # Still running (it lost its quorum, not its process): refused.
    status, _out, err = _run(capsys, "recover", "-d", str(survivor.data_dir), *key)
    assert status == 2
    assert "is in use by process" in err
    survivor.stop(signal.SIGTERM)
    _mistakes(capsys, survivor, key_file, tmp_path)
    status, out, err = _run(capsys, "recover", "--dry-run", "-d", str(survivor.data_dir), *key)
    assert status == 0, err
    assert "dry run: nothing changed" in out
    assert out.count(" voter") == 3  # the configuration it has: three voters
    assert ", snapshot at " in out
    cluster_id = json.loads((survivor.data_dir / "cluster.json").read_text())["cluster_id"]
    status, out, err = _run(capsys, "recover", "-d", str(survivor.data_dir), *key)
    assert status == 0, err
    assert f"{survivor.address} is the only voter now" in out
    assert f"cluster: {cluster_id} (kept)" in out
    assert "2 member(s) removed" in out
    status, out, err = _run(capsys, "recover", "-d", str(survivor.data_dir), *key)
    assert (status, "is the only member already" in out) == (0, True), err

    survivor.join = []  # restarted alone, as docs/backup.md says
    survivor.start()
    cluster.nodes = [survivor]
    with dqlitepy.connect(
        db, servers=[survivor.address], isolation_level=None, leader_timeout=30
    ) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (ROWS,)
        conn.execute("INSERT INTO t (v) VALUES ('after the recovery')")
    with dqlitepy.Client([survivor.address]) as client:
        assert [n.address for n in client.cluster()] == [survivor.address]

    for i in range(2):
        node = DqlitepyServer(
            cluster.root / f"new{i}", cluster_key=CLUSTER_KEY, join=[survivor.address]
        )
        cluster.nodes.append(node)
        node.start(timeout=60)
    cluster.wait_voters(3)
    for i, node in enumerate(cluster.nodes):

        def rows(n: DqlitepyServer = node, i: int = i) -> int:
            copy = node_copy(n.address, db, tmp_path / f"{i}.db")
            return -1 if copy is None else len(copy["rows"]["t"])

        wait_until(lambda: rows() == ROWS + 1, f"{node.address} to hold every row", timeout=30)
    # The cluster kept its id through the recovery: the new nodes took it.
    for node in cluster.nodes:
        assert json.loads((node.data_dir / "cluster.json").read_text())["cluster_id"] == cluster_id
    # The survivor's log starts at its snapshot: the new nodes were sent the snapshot.
    assert all("installed a snapshot" in node.log() for node in cluster.nodes[1:])
