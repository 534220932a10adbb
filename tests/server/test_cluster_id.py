"""Two clusters sharing a key stay apart: the cluster id, with real ``dqlitepy server`` processes.

See ``docs/server.md``, "Data directory".  An operator who reuses one key file for two
clusters (staging and production) must not be able to move a member of one into the
other, by ``--join`` or by a Raft configuration naming the other's members: each data
directory records its cluster's id, joining checks it before anything is written, and
the Raft transport refuses a peer naming another id like a peer holding another key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dqlitepy_server import CLUSTER_KEY, DqlitepyCluster, DqlitepyServer, free_port
from waiting import wait_until

import dqlitepy

_REPO = Path(__file__).resolve().parents[2]


def _env(key: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["DQLITEPY_CLUSTER_KEY"] = key
    return env


def _record(data_dir: Path) -> dict[str, object]:
    record = json.loads((data_dir / "cluster.json").read_text())
    assert isinstance(record, dict)
    return record


def _cluster_id(data_dir: Path) -> object:
    return _record(data_dir).get("cluster_id")


def _snapshot(data_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's contents and mtime (ns), and every directory's mtime."""
    state: dict[str, tuple[bytes, int]] = {}
    for path in [data_dir, *data_dir.rglob("*")]:
        data = path.read_bytes() if path.is_file() else b""
        state[str(path.relative_to(data_dir))] = (data, path.stat().st_mtime_ns)
    return state


def _members(address: str) -> set[str]:
    with dqlitepy.Client([address], timeout=10) as client:
        return {n.address for n in client.cluster()}


def _write(address: str, table: str) -> None:
    with dqlitepy.connect("app", servers=[address], timeout=15) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (x)")
        conn.execute(f"INSERT INTO {table} VALUES (1)")
    conn.close()


def _stop_follower(cluster: DqlitepyCluster) -> DqlitepyServer:
    leader = cluster.leader()
    node = next(n for n in cluster.nodes if n.address != leader)
    assert node.stop() == 0
    return node


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[DqlitepyCluster, DqlitepyCluster]]:
    """Two 3-node clusters, A and B, started with the same key."""
    with DqlitepyCluster.formed(3) as a, DqlitepyCluster.formed(3) as b:
        _write(a.leader(), "a")
        _write(b.leader(), "b")
        yield a, b


def test_every_member_records_its_clusters_id_and_two_clusters_differ(
    clusters: tuple[DqlitepyCluster, DqlitepyCluster],
) -> None:
    a, b = clusters
    ids_a = {_cluster_id(n.data_dir) for n in a.nodes}
    ids_b = {_cluster_id(n.data_dir) for n in b.nodes}
    assert len(ids_a) == 1 and len(ids_b) == 1, (ids_a, ids_b)
    (id_a,), (id_b,) = ids_a, ids_b
    assert isinstance(id_a, str) and len(id_a) == 32 and id_a != id_b
    # Where an operator looks: the start-up line, and the log.
    assert f"cluster {id_a}" in a.nodes[1].log()
    assert f"member of cluster {id_a}" in a.nodes[1].log()
    # The key's fingerprint is the same, the key itself nowhere.
    assert (
        _record(a.nodes[0].data_dir)["key_fingerprint"]
        == _record(b.nodes[0].data_dir)["key_fingerprint"]
    )
    assert CLUSTER_KEY not in (a.nodes[0].data_dir / "cluster.json").read_text()


def test_a_member_of_one_cluster_is_refused_by_another_and_keeps_its_data(
    clusters: tuple[DqlitepyCluster, DqlitepyCluster],
) -> None:
    a, b = clusters
    member = _stop_follower(a)
    id_a, id_b = _cluster_id(member.data_dir), _cluster_id(b.nodes[0].data_dir)
    before = _snapshot(member.data_dir)
    members_b = _members(b.nodes[0].address)
    args = [sys.executable, "-m", "dqlitepy", "server", "-a", member.address]
    args += ["-d", str(member.data_dir), "-j", b.nodes[0].address]
    try:
        process = subprocess.run(
            args, capture_output=True, text=True, env=_env(CLUSTER_KEY), timeout=60
        )
        assert process.returncode == 2, process.stderr
        assert "Traceback" not in process.stderr, process.stderr
        errors = [line for line in process.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, process.stderr
        assert f"this node belongs to cluster {id_a}" in errors[0], errors
        assert f"belongs to cluster {id_b}" in errors[0], errors
        # Nothing written, nothing added.
        assert _snapshot(member.data_dir) == before
        assert _members(b.nodes[0].address) == members_b
    finally:
        member.start(timeout=60)  # back in its own cluster, its data intact
    a.wait_voters(3)
    assert a.read_on(a.leader(), "app", "SELECT x FROM a") == [(1,)]


def test_a_fresh_node_joins_either_cluster_and_takes_its_id(
    clusters: tuple[DqlitepyCluster, DqlitepyCluster], tmp_path: Path
) -> None:
    a, b = clusters
    for cluster, name in ((a, "to-a"), (b, "to-b")):
        seed = cluster.nodes[0].address
        with DqlitepyServer(tmp_path / name, cluster_key=CLUSTER_KEY, join=[seed]) as node:
            wait_until(
                lambda: node.address in _members(seed),  # noqa: B023 (used at once)
                f"the fresh node to join {seed}",
                timeout=30,
                interval=0.2,
            )
            cluster_id = _cluster_id(node.data_dir)
            assert isinstance(cluster_id, str), cluster_id
            assert cluster_id == _cluster_id(cluster.nodes[0].data_dir)
            with dqlitepy.Client([seed], timeout=10) as client:
                client.remove(next(n.id for n in client.cluster() if n.address == node.address))


def test_raft_traffic_between_two_clusters_is_refused(
    clusters: tuple[DqlitepyCluster, DqlitepyCluster],
) -> None:
    # A member of B whose cluster.json says A (copied from A's machine) and whose log was
    # lost: B's members list, A's identity.  Without the check it rejoined B and caught up.
    a, b = clusters
    node = _stop_follower(b)
    raft = node.data_dir / "raft"
    saved = {name: (raft / name).read_bytes() for name in ("journal", "journal.meta")}
    record = (node.data_dir / "cluster.json").read_bytes()
    databases = node.data_dir / "databases"
    kept = node.data_dir.with_name(node.data_dir.name + "-databases")
    id_a, id_b = _cluster_id(a.nodes[0].data_dir), _cluster_id(node.data_dir)
    try:
        for name in saved:
            (raft / name).unlink()
        databases.rename(kept)
        (node.data_dir / "cluster.json").write_bytes(
            (a.nodes[0].data_dir / "cluster.json").read_bytes()
        )
        # Without --join: with it the seed check refuses the node before Raft starts.
        join, node.join = node.join, []
        node.start(timeout=60)
        node.join = join
        _write(b.leader(), "b_after")
        refused = f"belongs to cluster {id_b}, this node to cluster {id_a}"
        wait_until(
            lambda: refused in node.log(),
            lambda: f"the node to refuse B's members; its log:\n{node.log()[-4000:]}",
            timeout=30,
        )
        leader = b.node(b.leader())
        wait_until(
            lambda: f"belongs to cluster {id_a}, this node to cluster {id_b}" in leader.log(),
            "B's leader to refuse the node",
            timeout=30,
        )
        time.sleep(2.0)  # a node that talked Raft with B had caught up by now
        assert not list(databases.glob("db-app.sqlite*")), "B's data reached a node of A"
        assert _cluster_id(node.data_dir) == id_a
    finally:
        node.stop()
        for name, data in saved.items():
            (raft / name).write_bytes(data)
        (node.data_dir / "cluster.json").write_bytes(record)
        if kept.exists():
            if databases.exists():
                for path in databases.iterdir():
                    path.unlink()
                databases.rmdir()
            kept.rename(databases)
        node.start(timeout=60)
    b.wait_voters(3)


def test_a_directory_without_a_cluster_id_takes_its_clusters(tmp_path: Path) -> None:
    # What a version before cluster ids left: a record with the key's fingerprint only.
    node = DqlitepyServer(tmp_path / "old", cluster_key=CLUSTER_KEY)
    try:
        node.start(timeout=30)
        _write(node.address, "t")
        cluster_id = _cluster_id(node.data_dir)
        assert isinstance(cluster_id, str)
        # The directory records the id at bootstrap; the log names it once the node
        # leads (a moment later): stopped before that, the log holds no id to take,
        # and the node would rightly start a cluster id of its own.
        journal = node.data_dir / "raft" / "journal"
        wait_until(
            lambda: cluster_id.encode() in journal.read_bytes(),
            "the Raft log to name the cluster id",
            timeout=10,
        )
        assert node.stop() == 0
        record = _record(node.data_dir)
        del record["cluster_id"]
        (node.data_dir / "cluster.json").write_text(json.dumps(record))
        node.start(timeout=30)
        wait_until(
            lambda: _cluster_id(node.data_dir) == cluster_id,
            "the cluster id to be taken from the log",
            timeout=30,
            interval=0.1,
        )
        assert "cluster_id_adopted" in _record(node.data_dir)
        # A fresh node joining it takes the same id.
        address = f"127.0.0.1:{free_port()}"
        with DqlitepyServer(
            tmp_path / "new", address, cluster_key=CLUSTER_KEY, join=[node.address]
        ) as joiner:
            wait_until(lambda: joiner.address in _members(node.address), "the join", timeout=30)
            assert _cluster_id(joiner.data_dir) == cluster_id
    finally:
        node.close()
