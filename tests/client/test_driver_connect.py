"""Driver: the ways to name the servers, leader discovery, and failing to connect."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dqlitepy_server import DqlitepyServer

import dqlitepy
from dqlitepy.client import dbapi

pytestmark = pytest.mark.dqlite

Connect = Callable[..., dqlitepy.Connection]


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def blackhole() -> Iterator[str]:
    """The address of a listener that accepts TCP connections (backlog) but never answers,
    like a frozen node."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def closing_conn(conn: dqlitepy.Connection) -> Iterator[dqlitepy.Connection]:
    try:
        yield conn
    finally:
        conn.close()


def _leader_and_followers(servers: list[str]) -> tuple[str, list[str]]:
    with dqlitepy.Client(servers) as client:
        leader = client.leader()
    assert leader is not None
    return leader.address, [s for s in servers if s != leader.address]


# -- the forms of connect() ----------------------------------------------------------------------


def test_servers_list(connect: Connect, servers: list[str]) -> None:
    conn = connect(servers=list(servers))
    assert conn.execute("SELECT 1 + 1").fetchone() == (2,)


def test_servers_comma_separated_string(connect: Connect, servers: list[str]) -> None:
    conn = connect(servers=",".join(servers))
    assert conn.execute("SELECT 'x'").fetchone() == ("x",)


def test_url_names_servers_and_database(connect: Connect, servers: list[str], db_name: str) -> None:
    url = "dqlite://" + ",".join(servers) + "/" + db_name
    with closing_conn(dqlitepy.connect(url)) as by_url:
        by_url.execute("CREATE TABLE t (x)")
        by_url.execute("INSERT INTO t VALUES (42)")
        by_url.commit()
    # The URL's database is the same one a servers= connection with that name opens.
    assert connect().execute("SELECT x FROM t").fetchall() == [(42,)]


def test_url_database_name_is_percent_decoded(
    connect: Connect, servers: list[str], db_name: str
) -> None:
    url = "dqlite://" + ",".join(servers) + "/" + db_name + "%20x"
    with closing_conn(dqlitepy.connect(url)) as by_url:
        by_url.execute("CREATE TABLE t (x)")
    conn = connect(db_name + " x")
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]


def test_servers_from_environment(
    monkeypatch: pytest.MonkeyPatch, servers: list[str], db_name: str
) -> None:
    monkeypatch.setenv("DQLITEPY_SERVERS", " , ".join(servers))
    with closing_conn(dqlitepy.connect(db_name)) as conn:
        assert conn.execute("SELECT 7").fetchone() == (7,)


def test_explicit_servers_win_over_environment(
    monkeypatch: pytest.MonkeyPatch, servers: list[str], db_name: str
) -> None:
    # A nonsense environment is never looked at when the URL names servers.
    monkeypatch.setenv("DQLITEPY_SERVERS", "127.0.0.1:1")
    url = "dqlite://" + ",".join(servers) + "/" + db_name
    with closing_conn(dqlitepy.connect(url, leader_timeout=5)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_path_like_and_bytes_database_names(connect: Connect, db_name: str) -> None:
    connect(Path(db_name)).execute("CREATE TABLE t (x)")
    conn = connect(os.fsencode(db_name))
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]


def test_uri_file_name(connect: Connect, db_name: str) -> None:
    connect(db_name).execute("CREATE TABLE t (x)")
    conn = connect(f"file:{db_name}?mode=rw", uri=True)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]


def test_factory_subclass(connect: Connect) -> None:
    class MyConnection(dqlitepy.Connection):
        pass

    conn = connect(factory=MyConnection)
    assert type(conn) is MyConnection
    assert conn.execute("SELECT 1").fetchone() == (1,)


# -- refusing to connect -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "dqlite://",
        "dqlite:///db",
        "dqlite://127.0.0.1:9001",
        "dqlite://127.0.0.1:9001/",
        "dqlite://,/db",
        "dqlite://no-port-here/db",
        "dqlite://127.0.0.1:notaport/db",
        # A dqlite URL with a slash or the colon missing used to become an embedded database
        # named after the URL.
        "dqlite:/127.0.0.1:9001/app.db",
        "dqlite//127.0.0.1:9001/app.db",
        "dqlite:127.0.0.1:9001/app.db",
        "dqlite:",
        "DQLITE:/127.0.0.1:9001/app.db",
        # Blanks, as in a padded configuration value.
        " dqlite://127.0.0.1:9001/app.db",
        "dqlite ://127.0.0.1:9001/app.db",
        # Other URLs are no database names either (the second is SQLAlchemy's form).
        "http://127.0.0.1:9001/app.db",
        "sqlite+dqlitepy://127.0.0.1:9001/app.db",
    ],
)
def test_bad_url_is_programming_error(
    url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Without servers configured, a name that is not refused goes to the embedded node: keep
    # whatever it would create out of the working tree.
    monkeypatch.delenv("DQLITEPY_SERVERS", raising=False)
    monkeypatch.setenv("DQLITEPY_DATA_DIR", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(dqlitepy.ProgrammingError) as info:
        dqlitepy.connect(url, leader_timeout=10)
    assert time.monotonic() - started < 1.0  # refused at once, not after leader_timeout
    assert repr(url) in str(info.value)


def test_url_scheme_is_case_insensitive(servers: list[str], db_name: str) -> None:
    with closing_conn(dqlitepy.connect("DQLITE://" + ",".join(servers) + "/" + db_name)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    "form",
    [
        "{}.db",
        "dir/{}.db",
        "{}.db:v2",  # a colon late in the name is no scheme
        "c:/{}.db",  # nor is a drive letter
        "file:{}.db",  # without uri=True, sqlite3 takes this as a file name too
    ],
)
def test_names_that_are_no_urls_stay_database_names(
    connect: Connect, db_name: str, form: str, request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.params["servers"] == "dqlite" and ("/" in form or "file:" in form):
        # The driver passes such a name on unchanged; C dqlite then takes a slash as a path
        # and "file:" as an SQLite URI (it opens with SQLITE_OPEN_URI).
        pytest.skip("C dqlite gives slashes and colons in names a meaning of its own")
    name = form.format(db_name)
    connect(name).execute("CREATE TABLE t (x)")
    assert connect(name).execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]


def test_bad_server_address_is_programming_error(db_name: str) -> None:
    started = time.monotonic()
    with pytest.raises(dqlitepy.ProgrammingError):
        dqlitepy.connect(db_name, servers=["localhost"], leader_timeout=10)
    assert time.monotonic() - started < 1.0


def test_no_servers_is_operational_error(monkeypatch: pytest.MonkeyPatch, db_name: str) -> None:
    # An explicitly empty list; (with nothing configured at all, dqlitepy.connect() uses the
    # embedded node, which the DB-API layer's own connect() does not know about).
    monkeypatch.delenv("DQLITEPY_SERVERS", raising=False)
    with pytest.raises(dqlitepy.OperationalError):
        dqlitepy.connect(db_name, servers=[])
    with pytest.raises(dqlitepy.OperationalError):
        dqlitepy.connect(db_name, servers="")
    with pytest.raises(dqlitepy.OperationalError):
        dbapi.connect(db_name)


def test_unreachable_servers_fail_within_leader_timeout(blackhole: str, db_name: str) -> None:
    refused = f"127.0.0.1:{_unused_port()}"
    started = time.monotonic()
    with pytest.raises(dqlitepy.OperationalError) as info:
        dqlitepy.connect(
            db_name, servers=[refused, blackhole], leader_timeout=1.0, attempt_timeout=0.3
        )
    elapsed = time.monotonic() - started
    assert isinstance(info.value, dqlitepy.NoLeaderError)
    assert 0.9 <= elapsed < 3.0, elapsed


def test_every_server_refusing_fails_within_timeout(db_name: str) -> None:
    refused = [f"127.0.0.1:{_unused_port()}" for _ in range(3)]
    started = time.monotonic()
    with pytest.raises(dqlitepy.NoLeaderError) as info:
        # leader_timeout keeps its 30 s default: with nobody listening, `timeout` decides.
        dqlitepy.connect(db_name, servers=refused, timeout=1.0)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.0, elapsed
    assert "refused" in str(info.value)
    assert info.value.outcome == "not run"


def test_a_server_that_starts_within_timeout_is_found(db_name: str) -> None:
    # Refusals alone end the search only after `timeout`: a node that comes up (a restart)
    # before then is still found.
    node = DqlitepyServer()
    starter = threading.Timer(0.5, node.start)
    starter.start()
    try:
        with closing_conn(dqlitepy.connect(db_name, servers=[node.address], timeout=30)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        starter.join()
        node.close()


# -- leader discovery ----------------------------------------------------------------------------


def test_follower_address_alone_reaches_the_leader(connect: Connect, servers: list[str]) -> None:
    if len(servers) < 2:
        pytest.skip("a single-node backend has no follower (the cluster backends cover this)")
    _, followers = _leader_and_followers(servers)
    conn = connect(servers=[followers[0]])
    # Only the leader executes writes: a follower would answer "not leader".
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_silent_first_server_does_not_eat_the_budget(
    connect: Connect, servers: list[str], blackhole: str
) -> None:
    started = time.monotonic()
    conn = connect(servers=[blackhole, *servers], attempt_timeout=0.5, leader_timeout=20)
    elapsed = time.monotonic() - started
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert elapsed < 2.0, elapsed


def test_refusing_first_server_is_skipped_at_once(connect: Connect, servers: list[str]) -> None:
    started = time.monotonic()
    conn = connect(servers=[f"127.0.0.1:{_unused_port()}", *servers], leader_timeout=20)
    assert time.monotonic() - started < 1.0
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_transaction_survives_descriptors_past_fd_setsize() -> None:
    """The idle check before each request works on descriptors past 1024 (select() cannot)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with DqlitepyServer() as node:
            conn = dqlitepy.connect("fds", servers=[node.address])
            try:
                conn.execute("CREATE TABLE t (x)")
                conn.execute("INSERT INTO t VALUES (1)")
                conn.execute("INSERT INTO t VALUES (2)")  # inside the implicit transaction
                conn.commit()
                assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
            finally:
                conn.close()
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
