"""A node's figures in process: ``Node.metrics()``, ``/metrics`` parsed, the health endpoints,
and what strangers and operator mistakes do to the metrics port.

Nodes run in this process on loopback (``Node(metrics_address="127.0.0.1:0")``); the
cluster, scraped during a workload, is ``test_metrics_cluster.py``.
"""

from __future__ import annotations

import math
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dqlitepy_server import free_port
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until

import dqlitepy
from dqlitepy.replication.stats import Histogram
from dqlitepy.server.metrics import (
    MAX_CONNECTIONS,
    MetricsAddressRefused,
    parse_metrics_address,
)
from dqlitepy.server.stats import INVALID, OUTCOMES, REQUEST_TYPES, RequestStats

KEY = b"a cluster key for the metrics tests"


def _get(address: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(f"http://{address}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def _samples(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = _get(address, "/metrics")
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


@pytest.fixture
def node(tmp_path: Path) -> Iterator[dqlitepy.Node]:
    with dqlitepy.Node("127.0.0.1:0", tmp_path / "data", metrics_address="127.0.0.1:0") as node:
        yield node


def test_node_metrics_and_the_scrape_say_the_same(node: dqlitepy.Node) -> None:
    address = node.metrics_address
    assert address is not None and not address.endswith(":0")
    conn = node.connect("app.db")
    try:
        conn.execute("CREATE TABLE t (x)")
        for i in range(20):
            conn.execute("INSERT INTO t VALUES (?)", (i,))
        conn.commit()
        with pytest.raises(dqlitepy.OperationalError):
            conn.execute("SELECT * FROM no_such_table")
        assert node.metrics()["connections"] == 1
    finally:
        conn.close()

    figures = wait_until(
        lambda: (m := node.metrics())["connections"] == 0 and m, "the connection to close"
    )
    assert figures["node"] == {"id": node.id, "address": node.address, "mode": "standalone"}
    assert figures["raft"] is None and figures["commits"] == 0
    exec_sql = figures["requests"]["exec_sql"]
    assert set(exec_sql) == set(OUTCOMES)
    assert exec_sql["ok"] >= 22
    assert figures["requests"]["query_sql"]["error"] == 1  # the unknown table
    for kind, outcomes in figures["requests"].items():
        latency = figures["request_seconds"][kind]
        assert latency["count"] == sum(outcomes.values())
        assert latency["buckets"][-1] == (math.inf, latency["count"])
        counts = [count for _, count in latency["buckets"]]
        assert counts == sorted(counts)  # cumulative
        assert latency["sum"] > 0
    size = figures["databases"]["app.db"]
    assert size["file"] + size["wal"] > 0

    # The scrape, parsed by prometheus_client, carries the same figures.
    samples = _samples(address)
    for outcome, count in exec_sql.items():
        key = ("dqlitepy_requests_total", (("outcome", outcome), ("type", "exec_sql")))
        assert samples[key] == count
    histogram = ("dqlitepy_request_duration_seconds_count", (("type", "exec_sql"),))
    assert samples[histogram] == sum(exec_sql.values())
    labels = (("address", node.address), ("id", f"{node.id:x}"), ("mode", "standalone"))
    assert samples[("dqlitepy_node_info", labels)] == 1
    assert samples[("dqlitepy_client_connections", ())] == 0
    assert samples[("dqlitepy_database_size_bytes", (("database", "app.db"), ("file", "main")))]
    assert ("process_open_fds", ()) in samples  # the process' own figures too
    assert not [name for name, _ in samples if name.startswith("dqlitepy_raft_")]


def test_health_endpoints_and_formats(node: dqlitepy.Node) -> None:
    address = node.metrics_address
    assert address is not None
    assert _get(address, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    assert _get(address, "/readyz") == (200, "text/plain; charset=utf-8", "ready\n")
    status, content_type, body = _get(
        address, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    status, content_type, _ = _get(address, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert _get(address, "/nothing")[0] == 404
    head = urllib.request.Request(f"http://{address}/healthz", method="HEAD")
    with urllib.request.urlopen(head, timeout=10) as answer:
        assert answer.status == 200 and answer.read() == b""


def test_a_replicated_node_reports_raft(tmp_path: Path) -> None:
    with dqlitepy.Node(
        "127.0.0.1:0", tmp_path / "data", cluster_key=KEY, metrics_address="127.0.0.1:0"
    ) as node:
        conn = node.connect("app.db", leader_timeout=30)
        try:
            conn.execute("CREATE TABLE t (x)")
            for i in range(5):
                conn.execute("INSERT INTO t VALUES (?)", (i,))
                conn.commit()
        finally:
            conn.close()
        figures = node.metrics()
        raft = figures["raft"]
        assert raft is not None and figures["node"]["mode"] == "replicated"
        assert (raft["state"], raft["role"], raft["leader"]) == ("leader", "voter", node.address)
        assert raft["elections_won"] >= 1 and raft["term"] >= 1
        assert figures["commits"] >= 6
        assert raft["applied_index"] >= raft["commit_index"] - 1 >= figures["commits"]
        assert raft["batch_entries"]["count"] >= 6
        assert raft["journal_fsync_seconds"]["count"] >= 6
        assert raft["peers"] == {}  # no one to replicate to
        assert set(raft["snapshots"]) == {"written", "installed"}
        address = node.metrics_address
        assert address is not None
        assert _get(address, "/readyz")[:2] == (200, "text/plain; charset=utf-8")
        samples = _samples(address)
        assert samples[("dqlitepy_raft_state", (("state", "leader"),))] == 1
        assert samples[("dqlitepy_raft_leader_info", (("address", node.address),))] == 1
        assert samples[("dqlitepy_commits_total", ())] >= 6
    with pytest.raises(OSError):  # closing the node closed its metrics port
        socket.create_connection(_host_port(address), timeout=2).close()


def _host_port(address: str) -> tuple[str, int]:
    host, port = parse_metrics_address(address)
    return host, port


def test_strangers_and_garbage_harm_nothing(node: dqlitepy.Node) -> None:
    address = node.metrics_address
    assert address is not None
    host, port = _host_port(address)
    garbage = [
        b"\x00\xff\x16\x03\x01" * 100 + b"\r\n\r\n",  # binary, a TLS hello's start
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",  # a request line past the limit
        b"POST /metrics HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /../../etc/passwd HTTP/1.0\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",  # too many headers
    ]
    for payload in garbage:
        with socket.create_connection((host, port), timeout=10) as sock:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                answer = sock.recv(65536)
            except ConnectionResetError:
                # Closed with our bytes unread: the kernel resets instead of a FIN.
                answer = b""
            # Closed, or an error status: never a figure, never a crash.
            assert answer == b"" or answer.startswith((b"HTTP/1.0 4", b"HTTP/1.0 5")), answer
    # Past MAX_CONNECTIONS idle connections, a newcomer is closed at once.
    held = [socket.create_connection((host, port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:

        def refused() -> bool:
            with socket.create_connection((host, port), timeout=10) as extra:
                extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                return extra.recv(1024) == b""

        wait_until(refused, "a connection past the limit to be closed")
    finally:
        for sock in held:
            sock.close()
    # And the endpoint serves again.
    wait_until(lambda: _get(address, "/healthz")[0] == 200, "the endpoint to serve again")
    assert _get(address, "/metrics")[0] == 200


def test_a_busy_metrics_port_stops_the_node_before_it_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        address = f"127.0.0.1:{free_port()}"
        node = dqlitepy.Node(address, tmp_path / "data", metrics_address=busy)
        with pytest.raises(MetricsAddressRefused, match=f"cannot serve metrics on {busy}: "):
            node.start()
        assert isinstance(MetricsAddressRefused("x"), dqlitepy.node.StartupRefused)
        with pytest.raises(OSError):  # the node never listened
            socket.create_connection(_host_port(address), timeout=2).close()
    # Nothing is held: the same directory starts at once.
    with dqlitepy.Node(address, tmp_path / "data") as again:
        assert again.metrics_address is None


@pytest.mark.parametrize(
    "address", ["nonsense", "@abstract", "127.0.0.1", "127.0.0.1:99999", ":9100", ""]
)
def test_bad_metrics_addresses_are_refused(tmp_path: Path, address: str) -> None:
    with pytest.raises(ValueError, match="invalid metrics address"):
        dqlitepy.Node("127.0.0.1:0", tmp_path / "data", metrics_address=address)
    assert parse_metrics_address("[::1]:0") == ("::1", 0)


def test_counting_primitives() -> None:
    histogram = Histogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 3.0):
        histogram.observe(value)
    assert histogram.data() == {
        "buckets": [(1.0, 2), (2.0, 3), (math.inf, 4)],
        "count": 4,
        "sum": 6.0,
    }
    stats = RequestStats()
    one, two = stats.opened(), stats.opened()
    one.record(0, 0, 0.001)
    two.record(0, 1, 0.002)
    two.record(INVALID, 4, 0.0)
    stats.closed(one)  # a closed connection's figures stay in the total
    requests, latency = stats.figures()
    assert requests == {
        REQUEST_TYPES[0]: dict(zip(OUTCOMES, [1, 1, 0, 0, 0], strict=True)),
        "invalid": dict(zip(OUTCOMES, [0, 0, 0, 0, 1], strict=True)),
    }
    assert latency[REQUEST_TYPES[0]]["count"] == 2
