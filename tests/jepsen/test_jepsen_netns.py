"""The partition machinery of :mod:`jepsen.netns`: namespaces, the bridge, blackholes, cleanup.

Needs root and iproute2's ``ip``; without them these tests fail, unless ``DQLITEPY_NO_NETNS=1``
says to skip them (like the partition tests they support).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from jepsen import netns
from jepsen.netns import NETNS_SKIP_ENV, Network, netns_problem

PORT = 9555
_SERVE = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hi")
    c.close()
"""
_DIAL = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as c:
        print(c.recv(2).decode())
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.fixture
def network() -> Iterator[Network]:
    problem = netns_problem()
    if problem is not None:
        if os.environ.get(NETNS_SKIP_ENV) == "1":
            pytest.skip(f"{NETNS_SKIP_ENV}=1: {problem}")
        pytest.fail(f"{problem}, or set {NETNS_SKIP_ENV}=1 to skip", pytrace=False)
    with Network(3) as net:
        yield net


def _dial_from(net: Network, i: int, address: str) -> str:
    done = subprocess.run(
        [*net.prefix(i), sys.executable, "-c", _DIAL, address, str(PORT)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip() or done.stderr.strip()


def _dial_from_root(address: str) -> str:
    try:
        with socket.create_connection((address, PORT), timeout=1) as c:
            return c.recv(2).decode()
    except OSError as exc:
        return type(exc).__name__


def test_partitions_cut_nodes_off_from_each_other_but_never_from_the_clients(
    network: Network,
) -> None:
    target = network.address(1)
    server = subprocess.Popen(
        [*network.prefix(1), sys.executable, "-c", _SERVE, target, str(PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert _dial_from(network, 0, target) == "hi"
        assert _dial_from_root(target) == "hi"

        network.isolate(1)
        assert network.blocked == {(0, 1), (1, 2)}
        # Dropped silently: the connection attempt hangs until its timeout.
        began = time.monotonic()
        assert _dial_from(network, 0, target) == "TimeoutError"
        assert time.monotonic() - began >= 0.9
        assert _dial_from(network, 2, target) == "TimeoutError"
        assert _dial_from_root(target) == "hi"

        network.heal()
        assert network.blocked == set()
        assert _dial_from(network, 0, target) == "hi"

        # A bridge: 0 and 2 cannot talk, both still reach 1.
        network.block(0, 2)
        assert _dial_from(network, 0, target) == "hi"
        assert _dial_from(network, 2, target) == "hi"
        # Nothing listens on node 0: refused if reachable, silence when cut off.
        assert _dial_from(network, 1, network.address(0)) == "ConnectionRefusedError"
        assert _dial_from(network, 2, network.address(0)) == "TimeoutError"
    finally:
        server.kill()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()


def test_close_removes_every_namespace_and_link() -> None:
    problem = netns_problem()
    if problem is not None:
        if os.environ.get(NETNS_SKIP_ENV) == "1":
            pytest.skip(f"{NETNS_SKIP_ENV}=1: {problem}")
        pytest.fail(f"{problem}, or set {NETNS_SKIP_ENV}=1 to skip", pytrace=False)
    net = Network(3).create()
    tag = net.tag
    net.block(0, 1)
    net.close()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tag not in links and tag not in spaces


def test_a_failed_create_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = netns_problem()
    if problem is not None:
        if os.environ.get(NETNS_SKIP_ENV) == "1":
            pytest.skip(f"{NETNS_SKIP_ENV}=1: {problem}")
        pytest.fail(f"{problem}, or set {NETNS_SKIP_ENV}=1 to skip", pytrace=False)
    net = Network(3)
    real_ip = netns._ip
    calls = 0

    def failing_ip(*args: str) -> str:
        nonlocal calls
        if args[:2] == ("netns", "add"):
            calls += 1
            if calls == 2:
                raise netns.NetworkError("injected failure")
        return real_ip(*args)

    monkeypatch.setattr(netns, "_ip", failing_ip)
    with pytest.raises(netns.NetworkError, match="injected"):
        net.create()
    monkeypatch.undo()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert net.tag not in links and net.tag not in spaces


def test_what_is_missing_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in (netns_problem() or "")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "iproute2" in (netns_problem() or "")
