"""``python -m dqlitepy server``: defaults, signals, restarts, bad arguments, help and version."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dqlitepy_server import DqlitepyServer, free_port
from waiting import busy_threads, wait_until

import dqlitepy
from dqlitepy.testing._support import accepts
from dqlitepy.wire import (
    NEED_DATA,
    ClientConnection,
    OpenRequest,
    QuerySqlRequest,
    encode_message,
)

_REPO = Path(__file__).resolve().parents[2]
_DEFAULT_ADDRESS = "127.0.0.1:9001"
#: How long a signalled server may take to exit ("a couple of seconds").
_STOP_WITHIN = 3.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _dqlitepy(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dqlitepy", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=60,
        check=False,
    )


def _port_free(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as sock:
        try:
            sock.bind((host, int(port)))
        except OSError:
            return False
    return True


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[[str], DqlitepyServer]]:
    """``start_node(address)``: a ``dqlitepy server -a ADDRESS -d TMP/data`` process, started
    and accepting; every one is killed at teardown."""
    started: list[DqlitepyServer] = []

    def start(address: str) -> DqlitepyServer:
        node = DqlitepyServer(data_dir=tmp_path / "data", address=address)
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.close()


def _stop(node: DqlitepyServer, sig: int) -> tuple[int, float]:
    """Send ``sig``; return the exit status (negative if it had to be killed) and the time."""
    started = time.monotonic()
    status = node.stop(sig, timeout=10)
    return status, time.monotonic() - started


def _round_trip(address: str, database: str = "cli") -> None:
    conn = dqlitepy.connect(database, servers=[address], timeout=10)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] >= 1
    finally:
        conn.close()


# -- defaults --------------------------------------------------------------------------------------


def test_defaults_in_an_empty_directory(tmp_path: Path) -> None:
    """With no options it serves on 127.0.0.1:9001 and keeps its data in ./dqlitepy-data.

    The default address is checked only when port 9001 is free on this machine; otherwise
    the server runs with ``-a`` on a free port and only the default data directory is
    checked (the test prints which case it ran).
    """
    if _port_free(_DEFAULT_ADDRESS):
        address, args = _DEFAULT_ADDRESS, []
        print(f"checked the default address {_DEFAULT_ADDRESS}")
    else:
        address = f"127.0.0.1:{free_port()}"
        args = ["-a", address]
        print(f"port 9001 is in use here: checked the defaults with -a {address}")
    log_path = tmp_path.parent / f"{tmp_path.name}-server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dqlitepy", "server", *args],
            cwd=tmp_path,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def accepting() -> bool:
            assert process.poll() is None, log_path.read_text()
            return accepts(address)

        wait_until(
            accepting,
            lambda: f"the server to accept connections:\n{log_path.read_text()}",
            timeout=20,
            interval=0.05,
        )
        _round_trip(address)
        with dqlitepy.Client([address]) as admin:
            leader = admin.leader()
        assert leader is not None and leader.address == address
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0, log_path.read_text()
        assert time.monotonic() - started < _STOP_WITHIN
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert f"serving on {address}" in log_path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["dqlitepy-data"]
    assert any((tmp_path / "dqlitepy-data").rglob("*.sqlite"))


# -- signals -------------------------------------------------------------------------------------


def _raw(address: str) -> tuple[socket.socket, ClientConnection]:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    conn = ClientConnection()
    sock.sendall(conn.handshake())
    return sock, conn


def _call(sock: socket.socket, conn: ClientConnection, request: OpenRequest) -> object:
    """Send one request and read its response."""
    sock.sendall(conn.send(request))
    while (event := conn.next_event()) is NEED_DATA:
        conn.receive_data(sock.recv(65536))
    return event


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_server_while_clients_are_connected(
    start_node: Callable[[str], DqlitepyServer], sig: int
) -> None:
    address = f"127.0.0.1:{free_port()}"
    server = start_node(address)
    setup = dqlitepy.connect("busy", servers=[address])
    with setup:
        setup.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, s TEXT)")
        setup.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100000)"
            " INSERT INTO big SELECT i, printf('%0100d', i) FROM c"
        )
    setup.close()
    clients: list[socket.socket] = []
    writer = dqlitepy.connect("busy", servers=[address], isolation_level=None)
    try:
        # A client that connected and said nothing.
        host, _, port = address.rpartition(":")
        clients.append(socket.create_connection((host, int(port))))
        # A client in the middle of a write transaction.
        writer.execute("BEGIN")
        writer.execute("INSERT INTO big (s) VALUES ('uncommitted')")
        # A client in the middle of a large result it stopped reading.
        sock, conn = _raw(address)
        clients.append(sock)
        _call(sock, conn, OpenRequest("busy"))
        sock.sendall(conn.send(QuerySqlRequest(0, "SELECT * FROM big")))
        sock.recv(4096)
        # A client running a statement that would take minutes.
        sock, conn = _raw(address)
        clients.append(sock)
        sock.sendall(
            encode_message(OpenRequest("other"))
            + encode_message(
                QuerySqlRequest(
                    0,
                    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c"
                    " WHERE i < 3000000000) SELECT count(*) FROM c",
                )
            )
        )
        assert server.process is not None
        pid = server.process.pid
        wait_until(lambda: busy_threads(pid) >= 1, "the long statement to run")
        status, took = _stop(server, sig)
        assert status == 0, server.log()
        assert took < _STOP_WITHIN, server.log()
        assert f"signal {sig}: shutting down" in server.log()
        for sock in clients:
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(1 << 20):
                    pass
    finally:
        for sock in clients:
            sock.close()
        with contextlib.suppress(dqlitepy.Error):
            writer.close()
    # Started again, the committed rows are there and the open transaction is not.
    server = start_node(address)
    conn = dqlitepy.connect("busy", servers=[address])
    try:
        assert conn.execute("SELECT count(*), max(id) FROM big").fetchone() == (100000, 100000)
    finally:
        conn.close()
    assert _stop(server, sig)[0] == 0


def test_data_persists_across_restarts(start_node: Callable[[str], DqlitepyServer]) -> None:
    address = f"127.0.0.1:{free_port()}"
    server = start_node(address)
    rows = [(i, f"row {i}", i / 4, bytes([i % 256]) * 3) for i in range(1, 301)]
    conn = dqlitepy.connect("persist", servers=[address])
    with conn:
        conn.execute("CREATE TABLE p (i INTEGER PRIMARY KEY, s TEXT, r REAL, b BLOB)")
        conn.executemany("INSERT INTO p VALUES (?, ?, ?, ?)", rows)
    conn.close()
    with dqlitepy.Client([address]) as admin:
        first = admin.leader()
    assert first is not None
    assert _stop(server, signal.SIGTERM)[0] == 0
    # Again, on another port: the data and the node's id stay with the directory.
    for _ in range(2):
        address = f"127.0.0.1:{free_port()}"
        server = start_node(address)
        conn = dqlitepy.connect("persist", servers=[address])
        try:
            assert conn.execute("SELECT * FROM p ORDER BY i").fetchall() == rows
            with conn:
                conn.execute("UPDATE p SET s = s || '+' WHERE i = 1")
        finally:
            conn.close()
        with dqlitepy.Client([address]) as admin:
            leader = admin.leader()
        assert leader is not None and leader.id == first.id and leader.address == address
        assert _stop(server, signal.SIGINT)[0] == 0
        rows[0] = (1, rows[0][1] + "+", *rows[0][2:])


# -- bad arguments, help, version -----------------------------------------------------------------


@pytest.fixture
def taken_address() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("nonsense", "invalid node address 'nonsense'"),
        ("127.0.0.1", "invalid node address '127.0.0.1'"),
        (":9001", "invalid node address ':9001'"),
        ("127.0.0.1:99999", "invalid node address '127.0.0.1:99999'"),
        ("@", "invalid abstract socket address '@'"),
        ("no-such-host.invalid:9001", "cannot start node on no-such-host.invalid:9001"),
        ("192.0.2.1:9001", "Cannot assign requested address"),
        ("taken", "Address already in use"),
    ],
)
def test_bad_address_exits_1_with_a_message(
    tmp_path: Path, taken_address: str, address: str, message: str
) -> None:
    if address == "taken":
        address = taken_address
    result = _dqlitepy("server", "-a", address, "-d", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 1, result
    assert result.stderr.startswith(f"Error: cannot start node on {address}: "), result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_unusable_data_dir_exits_1(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    address = f"127.0.0.1:{free_port()}"
    result = _dqlitepy("server", "-a", address, "-d", str(blocker / "data"), cwd=tmp_path)
    assert result.returncode == 1, result
    assert result.stderr.startswith(f"Error: cannot start node on {address}: "), result.stderr
    assert "Traceback" not in result.stderr


def test_help(tmp_path: Path) -> None:
    result = _dqlitepy("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: dqlitepy")
    assert "server" in result.stdout and "shell" in result.stdout
    result = _dqlitepy("server", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: dqlitepy server")
    for option in ("--address", "--data-dir", "--join", "127.0.0.1:9001", "./dqlitepy-data"):
        assert option in result.stdout
    assert list(tmp_path.iterdir()) == []  # --help starts nothing and creates nothing


def test_version(tmp_path: Path) -> None:
    result = _dqlitepy("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == dqlitepy.__version__
    assert dqlitepy.__version__[0].isdigit()


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for args in ((), ("server", "--no-such-option"), ("no-such-command",)):
        result = _dqlitepy(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result)
        assert result.stderr.startswith("usage: dqlitepy"), result.stderr
