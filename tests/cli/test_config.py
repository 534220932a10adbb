"""``dqlitepy server`` options from flags, ``DQLITEPY_*`` variables and a TOML config file.

Most tests run the command line in this process (``dqlitepy.cli.main``) with
``--print-config`` or a mistake, which return before anything starts: they are fast and
start nothing.  Two run real processes: a node configured by a file and variables alone,
checked on the wire (its address, its limits, where its data goes), with ``--print-config``
beside it while it holds its data directory; and a bad file, which must exit 2 having
created nothing.

The precedence test is driven by :data:`SERVER_OPTIONS`: an option added to the table is
tested three ways, and must be documented in ``docs/configuration.md``, without a new test.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dqlitepy_server import free_port
from raw_client import Raw
from waiting import wait_until

import dqlitepy
from dqlitepy.cli import main
from dqlitepy.cli.config import ConfigError, Option, resolve
from dqlitepy.cli.kinds import ADDRESSES, PATH, SIZE, TEXT
from dqlitepy.cli.server_options import SERVER_OPTIONS
from dqlitepy.testing._support import accepts
from dqlitepy.wire import (
    PROTOCOL_VERSION,
    ClientConnection,
    FailureResponse,
    LeaderRequest,
    ServerResponse,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

_REPO = Path(__file__).resolve().parents[2]
_KEY = "configured-cluster-key-0123456789"


@pytest.fixture(autouse=True)
def _no_dqlitepy_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing of the caller's environment or working directory leaks in."""
    for name in list(os.environ):
        if name.startswith("DQLITEPY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _server(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``dqlitepy server ARGS`` in this process: its status, stdout and stderr."""
    try:
        status = main(["server", *args])
    except SystemExit as exc:  # argparse's usage errors
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def _printed(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict[str, Any], str]:
    """``--print-config``'s values (it is TOML) and its whole text."""
    status, out, err = _server(capsys, "--print-config", *args)
    assert status == 0, err
    assert err == ""
    return tomllib.loads(out), out


def _source(out: str, name: str) -> str:
    """The source ``--print-config`` gives for ``name`` (its line's comment)."""
    for line in out.splitlines():
        match = re.match(rf"^#? ?{re.escape(name)}( = |: ).*?  +# (.*)$", line)
        if match:
            return match.group(2)
    raise AssertionError(f"no line for {name!r} in:\n{out}")


# -- every option, three ways --------------------------------------------------------------------


def _samples(option: Option) -> tuple[str, str, list[str]]:
    """A value for the file (TOML), the environment (text) and the command line (arguments),
    each differing from the next and from the default."""
    kind, flag = option.kind, option.flag
    if kind.switch:
        # Two values only: the file's and the flag's differ from the default, the variable's
        # from both.
        x = not option.default
        return str(x).lower(), str(not x).lower(), [flag if x else f"--no-{option.name}"]
    texts: dict[int, tuple[str, str, str]] = {
        id(TEXT): ("h1:1", "h2:2", "h3:3"),
        id(PATH): ("/p/file", "/p/env", "/p/flag"),
        id(ADDRESSES): ("a:1", "b:2,c:3", "d:4"),
        id(SIZE): ("1K", "2M", "3G"),
    }
    if id(kind) in texts:
        file, env, arg = texts[id(kind)]
        return f'"{file}"', env, [flag, arg]
    if kind.expected.startswith("HOST:PORT"):
        return '"127.0.0.1:9101"', "127.0.0.1:9102", [flag, "127.0.0.1:9103"]
    if kind.expected.endswith("integer"):
        return "5", "6", [flag, "7"]
    if kind.expected.startswith("a number of seconds"):
        return "1.5", "2.5", [flag, "3.5"]
    raise AssertionError(f"{option.name}: no sample values for {kind.expected!r}: add some")


_SETTABLE = [o for o in SERVER_OPTIONS if o.in_file and o.on_command_line]


@pytest.mark.parametrize("option", _SETTABLE, ids=lambda o: o.name)
def test_every_option_is_a_flag_a_variable_and_a_file_key(
    option: Option,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    variable = option.env_var
    assert variable == "DQLITEPY_" + option.name.upper().replace("-", "_")
    file_toml, env_text, flag_args = _samples(option)
    config = tmp_path / "node.toml"
    config.write_text(f"{option.name} = {file_toml}\n")
    monkeypatch.setenv(variable, env_text)

    def effective(*args: str) -> tuple[Any, str]:
        values, out = _printed(capsys, *args)
        # As printed (TOML); absent: a comment, "not set".
        return values.get(option.name), _source(out, option.name)

    from_flag = effective("--config", str(config), *flag_args)
    from_env = effective("--config", str(config))
    monkeypatch.delenv(variable)
    from_file = effective("--config", str(config))
    default = effective()
    assert [source for _, source in (from_flag, from_env, from_file, default)] == [
        f"flag {option.flag}",
        f"env {variable}",
        f"file {config}",
        "default",
    ]
    assert from_flag[0] != from_env[0] != from_file[0] != default[0]
    if option.default is None and not option.kind.switch:
        assert default[0] is None
    else:
        assert default[0] == tomllib.loads(f"v = {option.kind.toml(option.default)}")["v"]


def test_print_config_is_a_config_file_with_the_same_effect(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DQLITEPY_MAX_MESSAGE_SIZE", "1M")
    monkeypatch.setenv("DQLITEPY_JOIN", "10.0.0.1:9001,10.0.0.2:9001")
    first, out = _printed(
        capsys, "-a", "0.0.0.0:9001", "--advertise", "10.0.0.3:9001", "--no-read-lease"
    )
    saved = tmp_path / "saved.toml"
    saved.write_text(out)
    monkeypatch.delenv("DQLITEPY_MAX_MESSAGE_SIZE")
    monkeypatch.delenv("DQLITEPY_JOIN")
    again, out = _printed(capsys, "--config", str(saved))
    assert again == first
    assert first["max-message-size"] == "1M" and first["read-lease"] is False
    assert _source(out, "advertise") == f"file {saved}"
    assert _source(out, "voters") == f"file {saved}"  # defaults too: a complete file
    assert f"# config file {saved} (from flag --config)" in out


def test_relative_paths_in_a_file_are_relative_to_the_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "node.toml").write_text('data-dir = "data"\ntls-cert = "../certs/node.crt"\n')
    monkeypatch.setenv("DQLITEPY_CONFIG", "etc/node.toml")  # itself relative to the cwd
    values, out = _printed(capsys)
    assert values["data-dir"] == str(etc.resolve() / "data")
    assert values["tls-cert"] == str(tmp_path.resolve() / "certs" / "node.crt")
    assert "# config file etc/node.toml (from env DQLITEPY_CONFIG)" in out
    # From a flag or a variable, a relative path is the shell's: the working directory's.
    monkeypatch.setenv("DQLITEPY_TLS_CERT", "node.crt")
    # --print-config shows them absolute, so that its output means the same anywhere.
    values, _ = _printed(capsys, "-d", "here")
    assert values["data-dir"] == os.path.abspath("here")
    assert values["tls-cert"] == os.path.abspath("node.crt")


def test_a_command_may_read_a_nodes_file_for_some_of_its_options(tmp_path: Path) -> None:
    # How a command that needs the node's data directory (a backup) reads the node's file.
    config = tmp_path / "node.toml"
    config.write_text('data-dir = "data"\nmax-connections = 5\n')
    some = [o for o in SERVER_OPTIONS if o.name == "data-dir"]
    args = argparse.Namespace(config=str(config))
    with pytest.raises(ConfigError, match="unknown key 'max-connections'"):
        resolve(some, args, {})
    found = resolve(some, args, {}, file_options=SERVER_OPTIONS)
    assert found["data-dir"] == str(tmp_path.resolve() / "data")


# -- secrets -------------------------------------------------------------------------------------


def test_the_cluster_key_is_never_printed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values, out = _printed(capsys)
    assert "# cluster-key: not set" in out
    monkeypatch.setenv("DQLITEPY_CLUSTER_KEY", _KEY)
    values, out = _printed(capsys)
    assert _KEY not in out and "cluster-key" not in values
    assert "# cluster-key: set (from env DQLITEPY_CLUSTER_KEY); its value is never shown" in out
    # A key file in the config file loses to the key in the environment: shown as unused.
    config = tmp_path / "node.toml"
    config.write_text('cluster-key-file = "/etc/dqlitepy/key"\n')
    values, out = _printed(capsys, "--config", str(config))
    assert "cluster-key-file" not in values
    assert _source(out, "cluster-key-file") == (
        f"file {config}; not used: cluster-key from env DQLITEPY_CLUSTER_KEY takes precedence"
    )
    # A key file given as a flag wins over it.
    values, out = _printed(capsys, "-k", "/run/key")
    assert values["cluster-key-file"] == "/run/key" and _KEY not in out
    assert (
        "# cluster-key: set (from env DQLITEPY_CLUSTER_KEY); not used: cluster-key-file from "
        "flag --cluster-key-file takes precedence; its value is never shown"
    ) in out
    # Both from the environment: which one was meant is unknowable.
    monkeypatch.setenv("DQLITEPY_CLUSTER_KEY_FILE", "/run/key")
    status, out, err = _server(capsys, "--print-config")
    assert status == 2 and out == ""
    assert err == (
        "Error: env DQLITEPY_CLUSTER_KEY_FILE and env DQLITEPY_CLUSTER_KEY both set the "
        "cluster key: keep one\n"
    )
    assert _KEY not in err


def test_the_cluster_key_cannot_be_written_in_the_file_or_given_as_a_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'cluster-key = "{_KEY}"\n')
    status, _, err = _server(capsys, "--config", str(config), "--print-config")
    assert status == 2
    assert err == (
        f"Error: config file {config}: key 'cluster-key' cannot be set in a file "
        "(use DQLITEPY_CLUSTER_KEY)\n"
    )
    assert _KEY not in err
    status, _, err = _server(capsys, "--cluster-key", _KEY)
    assert status == 2 and "unrecognized arguments" in err


def test_an_unreadable_key_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-key"
    status, _, err = _server(capsys, "-k", str(missing), "-d", str(tmp_path / "data"))
    assert status == 2
    assert err == f"Error: cannot read the cluster key file {missing}: No such file or directory\n"
    empty = tmp_path / "empty-key"
    empty.write_text("\n")
    status, _, err = _server(capsys, "-k", str(empty), "-d", str(tmp_path / "data"))
    assert (status, err) == (2, f"Error: the cluster key file {empty} is empty\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-key"]


# -- mistakes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        ('data_dir = "x"\n', ["unknown key 'data_dir'; did you mean 'data-dir'?"]),
        ("max-conections = 5\n", ["unknown key 'max-conections'; did you mean 'max-connections'?"]),
        ("[server]\naddress = 'x:1'\n", ["unknown key 'server'"]),
        (
            'max-connections = "10"\n',
            ["key 'max-connections': expected a positive integer, got '10'"],
        ),
        ("voters = true\n", ["key 'voters': expected a positive integer, got True"]),
        ("standbys = -1\n", ["key 'standbys': expected a non-negative integer, got -1"]),
        ("idle-timeout = -1\n", ["key 'idle-timeout': expected a number of seconds (0: never)"]),
        ("request-timeout = 0\n", ["key 'request-timeout': expected a number of seconds above 0"]),
        ('max-message-size = "64Q"\n', ["key 'max-message-size': expected a byte count"]),
        ("verbose = 1\n", ["key 'verbose': expected a boolean"]),
        ('trust-loopback-admin = "maybe"\n', ["key 'trust-loopback-admin': expected true, false"]),
        ("join = [1, 2]\n", ["key 'join': expected a list of addresses"]),
        ('address = ""\n', ["key 'address': expected a string, got ''"]),
        ("address = = 1\n", ["not valid TOML: Invalid value (at line 1, column 11)"]),
        (
            'data_dir = "x"\nvoters = 0\n',
            ["unknown key 'data_dir'", "key 'voters': expected a positive integer, got 0"],
        ),
    ],
)
def test_a_bad_config_file_exits_2_naming_the_file_and_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, errors: list[str]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(text)
    for extra in ([], ["--print-config"]):
        status, out, err = _server(capsys, "--config", str(config), *extra)
        assert status == 2 and out == ""
        lines = err.splitlines()
        assert len(lines) == len(errors), err
        for line, expected in zip(lines, errors, strict=True):
            assert line.startswith(f"Error: config file {config}: {expected}"), err
    assert [p.name for p in tmp_path.iterdir()] == ["node.toml"]  # nothing created


def test_an_unreadable_config_file_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    status, _, err = _server(capsys, "--config", "missing.toml")
    assert status == 2
    assert err == "Error: cannot read config file missing.toml: No such file or directory\n"
    monkeypatch.setenv("DQLITEPY_CONFIG", str(tmp_path))
    status, _, err = _server(capsys)
    assert (status, err) == (2, f"Error: cannot read config file {tmp_path}: Is a directory\n")
    (tmp_path / "binary.toml").write_bytes(b"address = '\xff'\n")
    status, _, err = _server(capsys, "--config", "binary.toml", "--print-config")
    assert status == 2 and err.startswith("Error: config file binary.toml: not valid TOML")


def test_bad_environment_variables_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DQLITEPY_MAX_CONNECTIONS", "many")
    monkeypatch.setenv("DQLITEPY_VERBOSE", "perhaps")
    monkeypatch.setenv("DQLITEPY_ADVERTISE", "")  # empty: unset, as the shell's X= means
    # Checked even though a flag overrides the variable: a mistake is reported before it bites.
    status, out, err = _server(capsys, "--print-config", "--max-connections", "5")
    assert status == 2 and out == ""
    assert err == (
        "Error: environment variable DQLITEPY_MAX_CONNECTIONS='many': expected a positive "
        "integer\n"
        "Error: environment variable DQLITEPY_VERBOSE='perhaps': expected a boolean (true or "
        "false; in a variable also 1/0, yes/no, on/off)\n"
    )


def test_bad_flags_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _server(capsys, "--max-message-size", "lots")
    assert status == 2
    assert err.startswith("usage: dqlitepy server")
    assert "argument --max-message-size: expected a byte count" in err


def test_the_shell_needs_servers_from_s_or_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["shell", "db", "SELECT 1"]) == 2
    assert capsys.readouterr().err == (
        "Error: no servers: give -s ADDR[,ADDR...] or set DQLITEPY_SERVERS\n"
    )
    monkeypatch.setenv("DQLITEPY_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("DQLITEPY_CLUSTER_KEY", _KEY)
    monkeypatch.setenv("DQLITEPY_CLUSTER_KEY_FILE", "/run/key")
    assert main(["shell", "db", ".leader"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "Error: env DQLITEPY_CLUSTER_KEY_FILE and env DQLITEPY_CLUSTER_KEY both set the cluster "
        "key: keep one\n"
    )


# -- the documentation ---------------------------------------------------------------------------


def test_every_option_is_documented() -> None:
    page = (_REPO / "docs" / "configuration.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ")]
    for option in SERVER_OPTIONS:
        assert option.env_var is not None
        row = next((r for r in rows if f"`{option.env_var}`" in r), None)
        assert row is not None, f"docs/configuration.md has no row for {option.env_var}"
        if option.on_command_line:
            assert f"`{option.flag}`" in row, row
        if option.in_file:
            assert f"`{option.name}`" in row, row
        if option.default is not None and option.default != []:
            assert f"`{option.kind.text(option.default)}`" in row, row
    for variable in ("DQLITEPY_CONFIG", "DQLITEPY_SERVERS", "DQLITEPY_DATA_DIR"):
        assert f"`{variable}`" in page
    for name in ("server.md", "configuration.md"):
        index = (_REPO / "docs" / "index.md").read_text()
        assert name in index
    assert "configuration.md" in (_REPO / "docs" / "server.md").read_text()


# -- real processes ------------------------------------------------------------------------------


def _env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DQLITEPY_")}
    env["PYTHONPATH"] = str(_REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(variables)
    return env


def _failure_after_header(address: str, words: int) -> FailureResponse:
    """Announce an EXEC_SQL body of ``words`` words; the FAILURE the node answers with."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(PROTOCOL_VERSION.to_bytes(8, "little"))
        sock.sendall(words.to_bytes(4, "little") + bytes([8, 0, 0, 0]))
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    conn = ClientConnection()
    conn.handshake()
    conn.send(LeaderRequest())
    conn.receive_data(bytes(received))
    event = conn.next_event()
    assert isinstance(event, FailureResponse), event
    return event


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, killed (by PID) at teardown if still running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_a_node_configured_by_a_file_and_variables_alone(
    tmp_path: Path,
    node_process: list[subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    run.mkdir()
    address = f"127.0.0.1:{free_port()}"
    config = etc / "node.toml"
    config.write_text(
        f'address = "{address}"\n'
        'data-dir = "data"  # relative to this file\n'
        'max-message-size = "64K"\n'
        'request-memory = "1M"\n'
        "idle-timeout = 30\n"
    )
    # No flag at all: the file is named by a variable, and a variable overrides the file.
    env = _env(DQLITEPY_CONFIG=str(config), DQLITEPY_IDLE_TIMEOUT="1")
    log_path = tmp_path / "node.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dqlitepy", "server"],
            cwd=run,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    node_process.append(process)

    def accepting() -> bool:
        assert process.poll() is None, log_path.read_text()
        return accepts(address)

    wait_until(accepting, lambda: f"the node on {address}:\n{log_path.read_text()}", timeout=30)

    # --print-config beside the running node, whose data directory is locked: exits 0.
    printed = subprocess.run(
        [sys.executable, "-m", "dqlitepy", "server", "--print-config"],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stderr == ""
    assert _source(printed.stdout, "address") == f"file {config}"
    assert _source(printed.stdout, "idle-timeout") == "env DQLITEPY_IDLE_TIMEOUT"
    assert f'data-dir = "{etc.resolve() / "data"}"' in printed.stdout

    # The shell finds the node through DQLITEPY_SERVERS (here, in this process).
    monkeypatch.setenv("DQLITEPY_SERVERS", address)
    assert main(["shell", "cfg", "CREATE TABLE t (x); INSERT INTO t VALUES (42)"]) == 0
    assert main(["shell", "cfg", "SELECT x FROM t"]) == 0
    assert capsys.readouterr().out == "42\n"
    # Its data is where the file said, relative to the file, not to the working directory.
    assert list((etc / "data" / "databases").glob("*cfg*.sqlite"))
    assert list(run.iterdir()) == []

    # Its limits: the file's message size, the variable's idle timeout.
    failure = _failure_after_header(address, (64 * 1024 + 8) // 8)
    assert failure.message == (
        "message of 65544 bytes exceeds the limit of 65536 bytes (--max-message-size)"
    )
    raw = Raw(address)
    try:
        started = time.monotonic()
        assert isinstance(raw.call(LeaderRequest()), ServerResponse)
        raw.sock.settimeout(10)
        assert raw.sock.recv(1) == b""  # closed, quietly
        assert 0.9 < time.monotonic() - started < 8
    finally:
        raw.close()
    conn = dqlitepy.connect("cfg", servers=[address])
    try:
        assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
    finally:
        conn.close()
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0, log_path.read_text()
    assert f"serving on {address}" in log_path.read_text()


def test_a_bad_config_file_starts_nothing(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = tmp_path / "node.toml"
    config.write_text(f'address = "{address}"\ndata-dir = "data"\nmax-connections = "ten"\n')
    result = subprocess.run(
        [sys.executable, "-m", "dqlitepy", "server"],
        cwd=tmp_path,
        env=_env(DQLITEPY_CONFIG=str(config)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: config file {config}: key 'max-connections': expected a positive integer, "
        "got 'ten'\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["node.toml"]
    assert not accepts(address)
