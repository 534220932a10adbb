"""Operator mistakes with real ``dqlitepy server`` processes.

See ``docs/architecture.md``, "Operating safely".

A data directory belongs to one process and one cluster: a second process on a
live directory, a member restarted without its key or with another one, a
standalone directory given a key, a node joining with the wrong key and a Raft
journal that cannot be read are all refused at once (exit status 2, one line on
stderr), and leave every byte of data where it was.  A node waiting to join stops
at once on SIGTERM or SIGINT (exit 0).  Two clusters sharing a key: ``test_cluster_id.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dqlitepy_server import CLUSTER_KEY, DqlitepyCluster, DqlitepyServer, free_port
from waiting import wait_until

import dqlitepy

_REPO = Path(__file__).resolve().parents[2]
OTHER_KEY = "another-cluster-key-fedcba9876543210"
ROWS = [(i, f"row {i}") for i in range(1, 51)]


def _env(key: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DQLITEPY_CLUSTER_KEY", None)
    if key is not None:
        env["DQLITEPY_CLUSTER_KEY"] = key
    env.update(extra)
    return env


def _refused(
    data_dir: Path,
    *,
    key: str | None = None,
    join: str | None = None,
    within: float = 10.0,
    options: tuple[str, ...] = (),
) -> tuple[str, float]:
    """Run ``dqlitepy server`` on ``data_dir``; it must exit 2 within ``within`` seconds.

    Returns its stderr and how long it ran.
    """
    address = f"127.0.0.1:{free_port()}"
    args = [sys.executable, "-m", "dqlitepy", "server", "-a", address, "-d", str(data_dir)]
    if join is not None:
        args += ["-j", join]
    args += options
    started = time.monotonic()
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(key)
    )
    try:
        _, err = process.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"the node was not refused within {within} s; it served:\n{err}")
    elapsed = time.monotonic() - started
    assert process.returncode == 2, (process.returncode, err)
    assert "Traceback" not in err, err
    return err, elapsed


def _write_rows(address: str) -> None:
    with dqlitepy.connect("app", servers=[address], timeout=10) as conn:
        conn.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, s TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", ROWS)
    conn.close()


def _read_rows(address: str) -> list[tuple[int, str]]:
    # A new connection each time: a node whose files were deleted under it
    # still reads the old ones through the sessions it had open.
    conn = dqlitepy.connect("app", servers=[address], timeout=10)
    try:
        return [tuple(r) for r in conn.execute("SELECT i, s FROM t ORDER BY i")]
    finally:
        conn.close()


def _database_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "databases").glob("db-*.sqlite*"))


def _database_inode(data_dir: Path) -> int:
    # A live node checkpoints and drops its WAL as it likes: its main file must stay.
    return (data_dir / "databases" / "db-app.sqlite").stat().st_ino


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    return tmp_path / "node"


@pytest.fixture
def keyed_node(node_dir: Path) -> Iterator[DqlitepyServer]:
    """A one-member replicated cluster holding ``ROWS`` in database ``app``."""
    node = DqlitepyServer(node_dir, cluster_key=CLUSTER_KEY)
    try:
        node.start(timeout=30)
        _write_rows(node.address)
        yield node
    finally:
        node.close()


# -- a data directory belongs to one process ------------------------------------------------------


def test_a_second_server_on_a_live_directory_fails_fast_and_touches_nothing(
    keyed_node: DqlitepyServer, node_dir: Path
) -> None:
    inode = _database_inode(node_dir)
    assert keyed_node.process is not None
    err, elapsed = _refused(node_dir, key=CLUSTER_KEY)
    assert elapsed < 5, elapsed
    assert len(err.strip().splitlines()) == 1, err
    assert "in use" in err
    assert f"process {keyed_node.process.pid}" in err, err
    assert keyed_node.address in err, err
    # The first node's database file is still there, and it still serves it.
    assert _database_inode(node_dir) == inode
    assert _read_rows(keyed_node.address) == ROWS
    # Its data survives its own restart too (rebuilt from its intact Raft log).
    assert keyed_node.stop() == 0
    keyed_node.start(timeout=30)
    assert _read_rows(keyed_node.address) == ROWS


def test_a_standalone_server_on_a_live_directory_fails_fast(tmp_path: Path) -> None:
    with DqlitepyServer(tmp_path / "single") as node:
        _write_rows(node.address)
        assert node.process is not None
        err, elapsed = _refused(tmp_path / "single")
        assert elapsed < 5, elapsed
        assert f"process {node.process.pid}" in err and node.address in err, err
        assert _read_rows(node.address) == ROWS


def _listing(data_dir: Path) -> list[str]:
    """The directory's entries, two levels down (a node's own WAL comes and goes: not listed)."""
    return sorted(
        str(p.relative_to(data_dir))
        for p in [*data_dir.iterdir(), *data_dir.glob("*/*")]
        if not p.name.endswith(("-wal", "-shm"))
    )


def test_a_second_server_on_a_member_whose_lock_file_was_deleted_moves_nothing(
    tmp_path: Path,
) -> None:
    # An operator clearing what looks like a stale lock: the lock held is the directory's
    # own, so the second server is still refused before it moves the live databases aside.
    with DqlitepyCluster.formed(3) as cluster:
        leader = cluster.leader()
        _write_rows(leader)
        member = next(n for n in cluster.nodes if n.address != leader)
        assert member.process is not None
        wait_until(
            lambda: (member.data_dir / "databases" / "db-app.sqlite").exists(),
            "the member to apply the rows",
            timeout=10,
            interval=0.05,
        )
        (member.data_dir / "LOCK").unlink()
        listing, inode = _listing(member.data_dir), _database_inode(member.data_dir)
        # Its own address advertised: past the address check, on to the lock.
        err, _ = _refused(member.data_dir, key=CLUSTER_KEY, options=("--advertise", member.address))
        assert "in use" in err and f"process {member.process.pid}" in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert _listing(member.data_dir) == listing
        assert _database_inode(member.data_dir) == inode
        # The member still has every row: led by it, and written through it.
        assert cluster.read_on(member.address, "app", "SELECT i, s FROM t ORDER BY i") == ROWS
        with dqlitepy.connect("app", servers=[member.address], timeout=10) as conn:
            conn.execute("INSERT INTO t VALUES (?, ?)", (1000, "after"))
        conn.close()
        rows = _read_rows(member.address)
        assert rows == [*ROWS, (1000, "after")]


def _snapshot(data_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's contents and mtime (ns), and every directory's mtime."""
    state: dict[str, tuple[bytes, int]] = {}
    for path in [data_dir, *data_dir.rglob("*")]:
        key = str(path.relative_to(data_dir))
        data = path.read_bytes() if path.is_file() else b""
        state[key] = (data, path.stat().st_mtime_ns)
    return state


def test_a_refused_start_writes_nothing(keyed_node: DqlitepyServer, node_dir: Path) -> None:
    assert keyed_node.stop() == 0
    before = _snapshot(node_dir)
    _refused(node_dir, key=None)  # no key
    _refused(node_dir, key=OTHER_KEY)  # another key
    _refused(node_dir, key=CLUSTER_KEY)  # another address
    assert _snapshot(node_dir) == before
    keyed_node.start(timeout=30)
    assert _read_rows(keyed_node.address) == ROWS
    # And a refusal by a live node's lock leaves its record alone.
    lock = (node_dir / "LOCK").read_bytes()
    _refused(node_dir, key=CLUSTER_KEY)
    assert (node_dir / "LOCK").read_bytes() == lock


# -- a data directory records its cluster ---------------------------------------------------------


def test_a_member_restarted_without_its_key_refuses_and_keeps_its_data(
    keyed_node: DqlitepyServer, node_dir: Path
) -> None:
    assert keyed_node.stop() == 0
    files = _database_files(node_dir)
    err, _ = _refused(node_dir, key=None)
    assert "belongs to a replicated cluster" in err and "cluster key" in err, err
    assert _database_files(node_dir) == files
    keyed_node.start(timeout=30)
    assert _read_rows(keyed_node.address) == ROWS


def test_a_member_restarted_with_another_key_refuses_and_keeps_its_data(
    keyed_node: DqlitepyServer, node_dir: Path
) -> None:
    assert keyed_node.stop() == 0
    files = _database_files(node_dir)
    err, _ = _refused(node_dir, key=OTHER_KEY)
    assert "does not match" in err, err
    assert _database_files(node_dir) == files
    keyed_node.start(timeout=30)
    assert _read_rows(keyed_node.address) == ROWS


def test_a_standalone_directory_with_data_refuses_a_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "single"
    node = DqlitepyServer(data_dir)
    try:
        node.start()
        _write_rows(node.address)
        assert node.stop() == 0
        files = _database_files(data_dir)
        err, _ = _refused(data_dir, key=CLUSTER_KEY)
        assert "standalone" in err, err
        assert _database_files(data_dir) == files
        node.start()
        assert _read_rows(node.address) == ROWS
    finally:
        node.close()


def test_a_directory_made_before_identity_records_is_taken_as_replicated(
    keyed_node: DqlitepyServer, node_dir: Path
) -> None:
    # What an older version left: a Raft journal and no identity record.
    assert keyed_node.stop() == 0
    (node_dir / "cluster.json").unlink()
    err, _ = _refused(node_dir, key=None)
    assert "belongs to a replicated cluster" in err, err
    keyed_node.start(timeout=30)  # the first keyed start records the key
    assert _read_rows(keyed_node.address) == ROWS
    assert keyed_node.stop() == 0
    err, _ = _refused(node_dir, key=OTHER_KEY)
    assert "does not match" in err, err


# -- joining proves the key -----------------------------------------------------------------------


def test_a_node_with_the_wrong_key_is_never_added_and_exits(
    keyed_node: DqlitepyServer, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    args = [sys.executable, "-m", "dqlitepy", "server", "-a", address, "-d", str(tmp_path / "j")]
    args += ["-j", keyed_node.address]
    started = time.monotonic()
    joiner = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(OTHER_KEY)
    )
    listed = False
    try:
        with dqlitepy.Client([keyed_node.address], timeout=5) as client:
            while joiner.poll() is None and time.monotonic() - started < 10:
                listed = listed or address in {n.address for n in client.cluster()}
                time.sleep(0.05)
            assert joiner.poll() is not None, "the joiner did not exit within 10 s"
            listed = listed or address in {n.address for n in client.cluster()}
    finally:
        if joiner.poll() is None:
            joiner.kill()
        _, err = joiner.communicate()
    assert not listed, "the cluster listed a node holding the wrong key"
    assert joiner.returncode == 2, (joiner.returncode, err)
    assert "the cluster rejected this node's key" in err, err
    assert "Traceback" not in err, err
    # The cluster is unharmed: still one voter, still committing.
    assert _read_rows(keyed_node.address) == ROWS
    with dqlitepy.connect("app", servers=[keyed_node.address], timeout=10) as conn:
        conn.execute("INSERT INTO t VALUES (100, 'after')")
    conn.close()
    # The control: a joiner holding the right key is listed by the same probe within the
    # same 10 s of its start.
    started = time.monotonic()
    with (
        DqlitepyServer(tmp_path / "k", cluster_key=CLUSTER_KEY, join=[keyed_node.address]) as ok,
        dqlitepy.Client([keyed_node.address], timeout=5) as client,
    ):
        wait_until(
            lambda: ok.address in {n.address for n in client.cluster()},
            "the control joiner to be listed",
            timeout=max(0.0, started + 10 - time.monotonic()),
            interval=0.05,
        )


def test_a_node_with_the_right_key_still_joins(keyed_node: DqlitepyServer, tmp_path: Path) -> None:
    with DqlitepyServer(
        tmp_path / "joiner", cluster_key=CLUSTER_KEY, join=[keyed_node.address]
    ) as joiner:
        with dqlitepy.Client([keyed_node.address], timeout=5) as client:
            wait_until(
                lambda: joiner.address in {n.address for n in client.cluster()},
                "the joiner to be added",
                timeout=30,
                interval=0.1,
            )
        assert _read_rows(joiner.address) == ROWS


# -- the embedded node ----------------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys
    import dqlitepy
    with dqlitepy.connect("app.db") as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
    conn.close()
    print("ready", flush=True)
    sys.stdin.readline()
    conn = dqlitepy.connect("app.db")
    print(conn.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
    conn.close()
    """
)

_SECOND = textwrap.dedent(
    """
    import dqlitepy
    try:
        dqlitepy.connect("app.db")
    except dqlitepy.OperationalError as exc:
        print(f"refused: {exc}")
    else:
        print("opened")
    """
)


def test_the_embedded_node_locks_its_directory(tmp_path: Path) -> None:
    env = _env(DQLITEPY_DATA_DIR=str(tmp_path / "embedded"))
    env.pop("DQLITEPY_SERVERS", None)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "ready"
        second = subprocess.run(
            [sys.executable, "-c", _SECOND],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=30,
            check=False,
        )
        assert second.stdout.startswith("refused: "), (second.stdout, second.stderr)
        assert f"process {holder.pid}" in second.stdout
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "2"
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()


def test_a_node_in_this_process_locks_its_directory_until_closed(tmp_path: Path) -> None:
    first = dqlitepy.Node(f"@dqlitepy-lock-{os.getpid()}-1", tmp_path / "dir").start()
    try:
        with pytest.raises(RuntimeError, match=f"in use by process {os.getpid()}") as info:
            dqlitepy.Node(f"@dqlitepy-lock-{os.getpid()}-2", tmp_path / "dir")
        from dqlitepy.node import StartupRefused

        assert isinstance(info.value, StartupRefused)
        assert first.address in str(info.value)
    finally:
        first.close()
    with dqlitepy.Node(f"@dqlitepy-lock-{os.getpid()}-3", tmp_path / "dir") as again:
        with again.connect("x") as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        conn.close()


# -- the record, in process ------------------------------------------------------------------------


def test_the_record_holds_a_fingerprint_never_the_key(tmp_path: Path) -> None:
    from dqlitepy.server.datadir import DataDirectory, key_fingerprint

    key = CLUSTER_KEY.encode()
    directory = DataDirectory(tmp_path, address="127.0.0.1:1", cluster_key=key)
    try:
        assert directory.fresh and not directory.key_recorded
        directory.record_cluster("bootstrap")
        assert directory.key_recorded
    finally:
        directory.close()
    raw = (tmp_path / "cluster.json").read_bytes()
    assert key not in raw and key.hex().encode() not in raw
    assert key_fingerprint(key).encode() in raw
    assert key_fingerprint(key) != key_fingerprint(OTHER_KEY.encode())
    # LOCK is written only once a node serves.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.json"]


def test_an_empty_standalone_directory_may_become_replicated(tmp_path: Path) -> None:
    from dqlitepy.server.datadir import ClusterIdentityError, DataDirectory

    DataDirectory(tmp_path, address="127.0.0.1:1", cluster_key=None).close()
    directory = DataDirectory(tmp_path, address="127.0.0.1:1", cluster_key=CLUSTER_KEY.encode())
    try:
        assert directory.fresh
        directory.record_cluster("join")
    finally:
        directory.close()
    with pytest.raises(ClusterIdentityError, match="belongs to a replicated cluster"):
        DataDirectory(tmp_path, address="127.0.0.1:1", cluster_key=None)
    # Refused without a trace: the lock was released.
    DataDirectory(tmp_path, address="127.0.0.1:1", cluster_key=CLUSTER_KEY.encode()).close()


# -- a restart rebuilds the databases without deleting the last run's files first ---------------


def test_the_engine_sets_files_aside_and_keeps_the_first_copy(tmp_path: Path) -> None:
    from dqlitepy.engine import Engine

    engine = Engine(tmp_path / "databases")
    assert engine.set_aside() is None  # nothing to keep
    (engine.data_dir / "db-app.sqlite").write_bytes(b"last run")
    previous = engine.set_aside()
    assert previous == tmp_path / "databases.previous"
    assert (previous / "db-app.sqlite").read_bytes() == b"last run"
    assert list(engine.data_dir.iterdir()) == []
    # A start that died before its rebuild caught up: its partial files go, the copy stays.
    (engine.data_dir / "db-app.sqlite").write_bytes(b"partial rebuild")
    assert engine.set_aside() == previous
    assert (previous / "db-app.sqlite").read_bytes() == b"last run"
    assert list(engine.data_dir.iterdir()) == []
    engine.discard_previous()
    assert not previous.exists()


def _garbage_header(raft: Path) -> None:
    with (raft / "journal").open("r+b") as f:
        f.write(b"GARBAGE!")


def _truncated_header(raft: Path) -> None:
    os.truncate(raft / "journal", 5)


def _emptied_journal(raft: Path) -> None:
    # Once taken for a new, empty log: the node came up having lost its entries.
    os.truncate(raft / "journal", 0)


def _directory_for_journal(raft: Path) -> None:
    (raft / "journal").unlink()
    (raft / "journal").mkdir()


def _garbage_metadata(raft: Path) -> None:
    (raft / "journal.meta").write_bytes(b"\xa5" * 8192)


def _garbage_configuration(raft: Path) -> None:
    (raft / "initial-voters.cbor").write_bytes(b"not cbor at all")


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (_garbage_header, "journal is not a dqlitepy Raft journal"),
        (_truncated_header, "journal is not a dqlitepy Raft journal"),
        (_emptied_journal, "journal is missing or empty"),
        (_directory_for_journal, "journal is not a regular file"),
        (_garbage_metadata, "journal.meta: both metadata slots are damaged"),
        (_garbage_configuration, "initial-voters.cbor' cannot be read"),
    ],
)
def test_a_raft_journal_that_cannot_be_read_refuses_and_changes_nothing(
    keyed_node: DqlitepyServer, node_dir: Path, damage: Callable[[Path], None], named: str
) -> None:
    keyed_node.stop()
    raft = node_dir / "raft"
    saved = {p.name: p.read_bytes() for p in raft.iterdir() if p.is_file()}
    damage(raft)
    before = _snapshot(node_dir)
    # Its own address: under another one the member is refused before Raft is looked at.
    address = keyed_node.address
    process = subprocess.run(
        [sys.executable, "-m", "dqlitepy", "server", "-a", address, "-d", str(node_dir)],
        capture_output=True,
        text=True,
        env=_env(CLUSTER_KEY),
        timeout=30,
    )
    assert process.returncode == 2, process.stderr
    assert "Traceback" not in process.stderr, process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and named in errors[0] and "nothing was changed" in errors[0], errors
    assert str(raft) in errors[0], errors  # the file, by its full name
    # Nothing moved, nothing written: the databases are where they were, not set aside.
    assert _snapshot(node_dir) == before
    assert not (node_dir / "databases.previous").exists()
    for path in raft.iterdir():
        if path.is_dir():
            path.rmdir()
    for name, data in saved.items():
        (raft / name).write_bytes(data)
    keyed_node.start(timeout=30)
    assert _read_rows(keyed_node.address) == ROWS


# -- a stop request during a join -----------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_node_waiting_to_join_at_once(
    keyed_node: DqlitepyServer, tmp_path: Path, signum: signal.Signals
) -> None:
    # A "cluster" that accepts connections and never answers: the join waits on it.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    silent_address = f"127.0.0.1:{silent.getsockname()[1]}"
    data_dir = tmp_path / "joiner"
    address = f"127.0.0.1:{free_port()}"
    args = [sys.executable, "-m", "dqlitepy", "server", "-a", address, "-d", str(data_dir)]
    process = subprocess.Popen(
        [*args, "-j", silent_address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(CLUSTER_KEY),
    )
    try:
        # LOCK is written once the node serves, right before it starts joining.
        wait_until(lambda: (data_dir / "LOCK").exists(), "the joiner to serve", timeout=30)
        time.sleep(1.0)  # well inside the join, which waits 30 s for an answer
        assert process.poll() is None, process.communicate()
        asked = time.monotonic()
        process.send_signal(signum)
        try:
            _, err = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            pytest.fail(f"the node ignored {signum.name} for 15 s:\n{err}")
        took = time.monotonic() - asked
    finally:
        silent.close()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, (process.returncode, err)
    assert f"Stopped by {signum.name} while joining the cluster through {silent_address}" in err
    assert "Traceback" not in err, err
    assert took < 10, took  # about 0.1 s when idle; the join alone would take 30 s
    # The directory is fit for a later start: the same node joins a real cluster.
    with DqlitepyServer(
        data_dir, address, cluster_key=CLUSTER_KEY, join=[keyed_node.address]
    ) as joiner:
        with dqlitepy.Client([keyed_node.address], timeout=5) as client:
            wait_until(
                lambda: joiner.address in {n.address for n in client.cluster()},
                "the node to join after its interrupted start",
                timeout=30,
                interval=0.1,
            )
        assert _read_rows(joiner.address) == ROWS
