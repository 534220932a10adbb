"""The node's monitoring endpoint: ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP.

``dqlitepy server --metrics-address HOST:PORT`` (``Node(metrics_address=...)``)
serves, on threads of its own:

- ``/metrics``: the node's figures in Prometheus' text format (OpenMetrics when
  the scraper asks for it), rendered by ``prometheus_client`` from
  :class:`~dqlitepy.server.exposition.NodeCollector`, with the process' own
  (CPU, memory, descriptors);
- ``/healthz``: 200 while the node serves, 503 once it is closing;
- ``/readyz``: 200 once a leader is known and this node has applied every entry
  the leader had committed when the request arrived (the node asks the leader:
  ``replication/raft/remote.py``), 503 with the reason otherwise, within
  :data:`READY_TIMEOUT`.

The port is open to whoever can reach it, so it is built to be harmless to a
stranger: GET and HEAD only, on these paths; HTTP/1.0 (one request per
connection); :data:`MAX_CONNECTIONS` connections at once, newcomers past that
are closed at once; each connection has :data:`CONNECTION_TIMEOUT` seconds to
send its request and take the answer; what it sends is parsed by the standard
library's ``http.server``, whose errors are answered (400) and logged at debug
level only.  Nothing served changes anything.  The figures do name the
databases and the members: bind it where only the monitoring can reach it.

``prometheus_client`` is optional (``pip install dqlitepy[metrics]``): the
node checks for it when constructed with a metrics address
(:class:`MetricsUnavailable`), and it is imported only then.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from ..wire.address import parse_node_address
from .datadir import StartupRefused
from .stats import NodeMetrics

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "CONNECTION_TIMEOUT",
    "MAX_CONNECTIONS",
    "READY_TIMEOUT",
    "MetricsAddressRefused",
    "MetricsServer",
    "MetricsUnavailable",
    "parse_metrics_address",
    "require_prometheus_client",
]

log = logging.getLogger("dqlitepy.server")

#: How long ``/readyz`` may take to find out (a follower asks the leader).
READY_TIMEOUT: Final = 2.0
#: Connections served at once; the next ones are closed without an answer.
MAX_CONNECTIONS: Final = 16
#: Seconds a connection may take to send its request, and to take each answer.
CONNECTION_TIMEOUT: Final = 10.0

_TEXT = "text/plain; charset=utf-8"


class MetricsUnavailable(StartupRefused):
    """A metrics address was given, but ``prometheus_client`` is not installed."""


class MetricsAddressRefused(StartupRefused):
    """The metrics address cannot be served (in use, not this host's...): nothing started."""


def require_prometheus_client() -> None:
    """Check that ``prometheus_client`` can be imported.

    Raises:
        MetricsUnavailable: it cannot; the message says how to install it.
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise MetricsUnavailable(
            "serving metrics needs prometheus_client: pip install dqlitepy[metrics]"
        ) from exc


def parse_metrics_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[V6]:PORT`` (port 0 picks a free one) into host and port.

    Raises:
        ValueError: anything else, including an ``@abstract`` socket (Prometheus
            scrapes over TCP).
    """
    try:
        parsed = parse_node_address(address)
    except ValueError:
        parsed = None
    if parsed is None or parsed.host is None:
        raise ValueError(
            f"invalid metrics address {address!r}: expected HOST:PORT, such as 127.0.0.1:9101"
        )
    return parsed.host, parsed.port


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` (see the module docstring).

    The address is bound at construction, so that a busy port is known before
    the node starts anything; :meth:`start` serves, :meth:`close` stops.

    Args:
        address: ``HOST:PORT`` to listen on.
        metrics: the node's figures (``NodeServer.metrics``).
        ready: None if the node is ready, else why not; given a timeout.
        healthy: whether the node still serves.

    Raises:
        MetricsUnavailable: ``prometheus_client`` is not installed.
        MetricsAddressRefused: the address cannot be bound.
        ValueError: the address is not ``HOST:PORT``.
    """

    def __init__(
        self,
        address: str,
        metrics: Callable[[], NodeMetrics],
        ready: Callable[[float], str | None],
        healthy: Callable[[], bool],
    ) -> None:
        require_prometheus_client()
        host, port = parse_metrics_address(address)
        self._registry = _registry(metrics)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = _HTTPServer6 if family == socket.AF_INET6 else _HTTPServer
        try:
            self._httpd = server_class((host, port), _Handler)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise MetricsAddressRefused(f"cannot serve metrics on {address}: {reason}") from exc
        self._httpd.endpoints = _Endpoints(self._registry, ready, healthy)
        bound = self._httpd.server_address[1]
        #: Where it serves (the real port once bound).
        self.address = f"[{host}]:{bound}" if family == socket.AF_INET6 else f"{host}:{bound}"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve on a thread of its own."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.25},
            name=f"dqlitepy-metrics-{self.address}",
            daemon=True,
        )
        self._thread.start()
        log.info("serving metrics on http://%s/metrics", self.address)

    def close(self) -> None:
        """Stop serving and close the port (requests being answered finish on their own)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._httpd.shutdown()  # returns once serve_forever has
            thread.join(timeout=5)
        self._httpd.server_close()


def _registry(metrics: Callable[[], NodeMetrics]) -> CollectorRegistry:
    """A registry of this node's figures and of the process' (its own: a process may run
    several nodes)."""
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )

    from .exposition import NodeCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(metrics))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class _Endpoints:
    """What the three paths answer: ``(status, content type, body)``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[float], str | None],
        healthy: Callable[[], bool],
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._healthy = healthy

    def answer(self, path: str, accept: str | None) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return self._scrape(accept)
        if path == "/healthz":
            if self._healthy():
                return 200, _TEXT, b"ok\n"
            return 503, _TEXT, b"shutting down\n"
        if path == "/readyz":
            reason = self._ready(READY_TIMEOUT)
            if reason is None:
                return 200, _TEXT, b"ready\n"
            return 503, _TEXT, f"not ready: {reason}\n".encode()
        if path == "/":
            return 200, _TEXT, b"dqlitepy node: /metrics /healthz /readyz\n"
        return 404, _TEXT, b"not found: try /metrics, /healthz or /readyz\n"

    def _scrape(self, accept: str | None) -> tuple[int, str, bytes]:
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        try:
            return 200, content_type, encoder(self._registry)
        except Exception:
            # A bug in reading a figure must not look like a node that is down.
            log.exception("collecting the node's metrics failed")
            return 500, _TEXT, b"collecting the metrics failed (see the node's log)\n"


class _HTTPServer(ThreadingHTTPServer):
    """The standard threaded HTTP server, bounded (see the module docstring)."""

    daemon_threads = True
    # Never share the port with another process (SO_REUSEPORT): a second node given the
    # same address must fail to start, not split the scrapes.
    allow_reuse_port = False
    endpoints: _Endpoints

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's FQDN up, a DNS query that may
        # hang; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: this one gets nothing
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up or sent garbage: nothing for the node's operator.
        log.debug("metrics request from %s failed", client_address, exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """GET and HEAD of the three paths; everything else is the standard library's answer."""

    server: _HTTPServer
    timeout = CONNECTION_TIMEOUT
    server_version = "dqlitepy"
    sys_version = ""
    # Errors (a malformed request, a method other than GET or HEAD) in a line of text, with
    # a status line even when the request line was garbage (no HTTP/0.9 answers).
    default_request_version = "HTTP/1.0"
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = _TEXT

    def do_GET(self) -> None:  # http.server's name
        self._serve(body=True)

    def do_HEAD(self) -> None:  # http.server's name
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        path = urlsplit(self.path).path
        status, content_type, payload = self.server.endpoints.answer(path, self.headers["Accept"])
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # http.server's signature
        log.debug("metrics endpoint: %s: %s", self.address_string(), format % args)
