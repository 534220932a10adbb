"""Start and manage a real dqlite cluster of ``dqlite-demo`` processes on loopback.

The tests use the programs of Debian's ``go-dqlite`` package as the reference implementation:

* ``dqlite-demo -a API -d DB -D DIR [-j DB,...]`` is a real C dqlite node (libdqlite through
  go-dqlite's ``app`` package). It keeps its data in ``DIR/<DB address>``, serves the dqlite wire
  protocol on ``DB`` and a small HTTP key/value API on ``API``. The API listener is opened only
  after ``app.Ready()`` returned and the demo database was opened and its schema created, so an
  accepting API port means "this node joined and the cluster has a leader". The app promotes
  joining nodes to voters until there are three.
* ``dqlite -s DB,DB,... DATABASE COMMAND`` is the Go shell. It looks for the leader with no
  deadline of its own (it retries forever, even when every server is down), so every call here
  runs under a subprocess timeout. ``.leader`` prints the leader's address (or nothing),
  ``.cluster`` prints one ``<hex id>|<address>|<role>`` line per node. The SQL argument is split
  on ``;`` and only statements starting with ``SELECT`` print rows.

Nothing here is specific to pytest; ``tests/conftest.py`` wraps it in fixtures.

Example::

    with DqliteDemoCluster() as cluster:
        cluster.start(3)
        print(cluster.leader())
        cluster.kill(cluster.leader())
        print(cluster.leader())  # a new leader among the other two nodes
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import pytest

from dqlitepy.testing._support import accepts, process_state

__all__ = [
    "require_go_shell",
    "DQLITE_DEMO",
    "DQLITE_SHELL",
    "ClusterError",
    "DqliteDemoCluster",
    "Member",
]

DQLITE_DEMO = "/usr/bin/dqlite-demo"
DQLITE_SHELL = "/usr/bin/dqlite"

# The demo app opens this database and creates a table in it at startup.
_DEMO_DATABASE = "demo"
# go-dqlite's app keeps this many voters; further nodes become standbys and spares.
_APP_VOTERS = 3
# One Go shell call normally takes ~10-20 ms. It can hang far longer: while there is no leader
# it retries forever, and it waits up to 15 s (go-dqlite's attempt timeout) on a node that
# accepts TCP connections but does not answer (SIGSTOPped). Polls kill it after this long.
_SHELL_ATTEMPT_TIMEOUT = 2.0
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 30
# Messages in a node's output meaning "the port picked for it was taken meanwhile".
_BIND_ERRORS = ("address already in use", "failed to set bind address")
_MAX_PORT_ATTEMPTS = 3
_LOGS_HEADER = "--- last lines of"

# Every port handed out by this process, so that two clusters (or a restarted node and a new
# cluster) never get the same port even after the first owner closed it.
_allocated_ports: set[int] = set()
_ports_lock = threading.Lock()

_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    """A dqlite-demo cluster could not be started, reached or cleaned up in time."""


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """One line of the Go shell's ``.cluster`` output."""

    id: int
    address: str
    role: str  # "voter", "standby" or "spare"


@dataclasses.dataclass(slots=True)
class _Node:
    address: str  # the -d address: dqlite wire protocol and Raft
    api_address: str  # the -a address: the demo's HTTP API
    data_dir: Path  # the -D directory; the node keeps its files in data_dir / address
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    stopped: bool = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def require_go_shell() -> None:
    """Skip the test if DQLITEPY_NO_DQLITE=1, else fail it if the Go shell is missing.

    As conftest.py does for dqlite-demo: nothing is skipped silently.
    """
    if os.environ.get("DQLITEPY_NO_DQLITE") == "1":
        pytest.skip("DQLITEPY_NO_DQLITE=1: tests that need the Go dqlite shell are skipped")
    if not os.access(DQLITE_SHELL, os.X_OK):
        pytest.fail(f"{DQLITE_SHELL} not found: install Debian's go-dqlite package", pytrace=False)


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct loopback TCP ports that were free a moment ago.

    Each port comes from binding port 0; all sockets stay open until every port is chosen so the
    kernel cannot hand the same one out twice, and ports already given out by this process are
    refused. Another process can still take a port before the node binds it: callers retry.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        with _ports_lock:
            for _ in range(count * 20):
                if len(ports) == count:
                    break
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
                if port not in _allocated_ports:
                    _allocated_ports.add(port)
                    ports.append(port)
            if len(ports) != count:
                raise ClusterError(f"could not find {count} free loopback ports")
    finally:
        for sock in held:
            sock.close()
    return ports


def _set_pdeathsig() -> None:
    """In the child, before exec: get SIGKILL when the parent dies, so no node outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    text = data.decode("utf-8", errors="replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


class DqliteDemoCluster:
    """A cluster of ``dqlite-demo`` processes on 127.0.0.1, with temporary data directories.

    Use it as a context manager (or call :meth:`close`): every process it started is killed and
    waited for, and the data directories are removed. Every wait is bounded.

    Nodes are identified by their dqlite address (the ``-d`` address, ``"127.0.0.1:PORT"``), the
    address clients and the Go shell connect to.
    """

    def __init__(
        self,
        *,
        demo: str = DQLITE_DEMO,
        shell: str = DQLITE_SHELL,
        verbose: bool = True,
    ) -> None:
        """Prepare a cluster; nothing runs until :meth:`start`.

        Args:
            demo: path of the ``dqlite-demo`` program.
            shell: path of the Go ``dqlite`` shell.
            verbose: pass ``-v`` to the nodes, so their logs say more.
        """
        self._demo = demo
        self._shell = shell
        self._verbose = verbose
        self._nodes: list[_Node] = []
        self._base_dir: Path | None = None
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, n: int = 3, *, timeout: float = 60.0) -> None:
        """Start ``n`` nodes and wait until the cluster is formed (see :meth:`wait_ready`).

        The first node starts alone; the others join it (``-j``) one after the other. If
        anything fails or ``timeout`` seconds pass, every process is killed, the directories
        are removed and :class:`ClusterError` is raised with the tail of the nodes' logs.
        """
        if n < 1:
            raise ValueError(f"a cluster needs at least one node, not {n!r}")
        if self._started or self._closed:
            raise ClusterError("cluster already started or closed; use a new DqliteDemoCluster")
        self._started = True
        deadline = time.monotonic() + timeout
        try:
            self._base_dir = Path(tempfile.mkdtemp(prefix="dqlitepy-cluster-"))
            first = self._new_node(0)
            self._bring_up(first, [], deadline, keep_db_port=False)
            # The others join the first one, one after the other: concurrent joins collide
            # (one membership change at a time) and the loser retries only a second later.
            for i in range(1, n):
                self._bring_up(self._new_node(i), [first.address], deadline, keep_db_port=False)
            self.wait_ready(max(0.0, deadline - time.monotonic()))
        except BaseException as exc:
            logs = self._logs_report()
            with contextlib.suppress(ClusterError):  # the start failure is the error to report
                self.close()
            if isinstance(exc, ClusterError) and _LOGS_HEADER not in str(exc):
                raise ClusterError(f"{exc}\n{logs}") from exc
            raise

    def close(self) -> None:
        """Kill every node process (SIGKILL), wait for them and remove the data directories.

        Safe to call more than once and on a cluster that never started.
        """
        if self._closed:
            return
        self._closed = True
        leftovers: list[str] = []
        for node in self._nodes:
            process = node.process
            if process is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # also ends a SIGSTOPped process
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                leftovers.append(f"{node.address} (pid {process.pid})")
            else:
                node.process = None
        if self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
        if leftovers:
            raise ClusterError(f"dqlite-demo processes did not exit: {', '.join(leftovers)}")

    def __enter__(self) -> DqliteDemoCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- inspection --------------------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """The dqlite (``-d``) addresses of all nodes, in start order, running or not."""
        return [node.address for node in self._nodes]

    @property
    def servers(self) -> str:
        """The addresses of the running nodes joined by commas, as ``dqlite -s`` wants them."""
        return ",".join(self._live_addresses())

    @property
    def pids(self) -> dict[str, int]:
        """Address → pid of every node process that is running (stopped ones included)."""
        return {
            node.address: node.process.pid
            for node in self._nodes
            if node.process is not None and node.running
        }

    def log_path(self, address: str) -> Path:
        """The file holding the node's stdout and stderr (kept across restarts)."""
        return self._node(address).log_path

    def shell(
        self,
        command: str,
        *,
        database: str = _DEMO_DATABASE,
        format: str = "tabular",
        timeout: float = 30.0,
        servers: list[str] | None = None,
    ) -> str:
        """Run one Go shell command (SQL or ``.leader``, ``.cluster``, …) and return its output.

        The output has its trailing newline removed. The shell splits ``command`` on ``;`` and
        prints rows only for statements starting with ``SELECT``. Nothing is retried: a write
        that timed out may or may not have happened.

        Raises:
            ClusterError: the shell failed (message = its stderr) or took longer than
                ``timeout`` seconds (it waits forever for a leader otherwise).
        """
        targets = servers if servers is not None else self._live_addresses()
        if not targets:
            raise ClusterError("no running dqlite node to send a shell command to")
        argv = [self._shell, "-s", ",".join(targets), "-f", format, database, command]
        try:
            result = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"dqlite shell timed out after {timeout}s: {command!r}") from exc
        if result.returncode != 0:
            # The shell prints "Error: …" followed by its usage text; keep the first line.
            stderr = result.stderr.decode(errors="replace").strip()
            message = stderr.splitlines()[0] if stderr else f"exit status {result.returncode}"
            raise ClusterError(f"dqlite shell failed on {command!r}: {message}")
        return result.stdout.decode(errors="replace").rstrip("\n")

    def members(self, *, timeout: float = 10.0) -> list[Member]:
        """The cluster configuration as the leader reports it (``.cluster``)."""
        members = []
        for line in self.shell(".cluster", timeout=timeout).splitlines():
            node_id, address, role = line.split("|")
            members.append(Member(int(node_id, 16), address, role))
        return members

    def leader(self, *, timeout: float = 30.0) -> str:
        """The leader's address according to the Go shell (``.leader``).

        Asks the running, not-stopped nodes, again and again until one answers with an address
        (during an election there is none), for at most ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClusterError(f"no leader known after {timeout}s: {last_error}")
            try:
                leader = self.shell(".leader", timeout=min(remaining, _SHELL_ATTEMPT_TIMEOUT))
            except ClusterError as exc:
                last_error = str(exc)
            else:
                if leader:
                    return leader
                last_error = ".leader printed nothing"
            time.sleep(_POLL_INTERVAL)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ``.cluster`` lists every node and the voters are all there.

        With up to three nodes every node must be a voter; with more, the demo app keeps three
        voters and the rest are standbys or spares, so three voters are required.

        Raises:
            ClusterError: a node that should be running died, or ``timeout`` passed.
        """
        deadline = time.monotonic() + timeout
        expected = {node.address for node in self._nodes}
        voters_needed = min(len(expected), _APP_VOTERS)
        last = "no answer yet"
        while True:
            for node in self._nodes:
                if node.process is not None and not node.running:
                    raise ClusterError(
                        f"dqlite node {node.address} exited with status "
                        f"{node.process.returncode}\n{self._logs_report()}"
                    )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClusterError(f"cluster not ready after {timeout}s; last .cluster: {last}")
            try:
                members = self.members(timeout=min(remaining, _SHELL_ATTEMPT_TIMEOUT))
            except ClusterError as exc:
                last = str(exc)
            else:
                last = repr(members)
                voters = [m for m in members if m.role == "voter"]
                if {m.address for m in members} == expected and len(voters) == voters_needed:
                    return
            time.sleep(_POLL_INTERVAL)

    # -- fault injection ---------------------------------------------------------------------

    def kill(self, address: str, *, timeout: float = 10.0) -> None:
        """SIGKILL one node and wait for it to exit. Its data directory stays for restart."""
        node = self._node(address)
        process = node.process
        if process is None:
            raise ClusterError(f"dqlite node {address!r} is not running")
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"dqlite node {address!r} did not exit after SIGKILL") from exc
        node.process = None
        node.stopped = False

    def stop(self, address: str, *, timeout: float = 5.0) -> None:
        """Freeze one node with SIGSTOP (its sockets stay open but nothing answers)."""
        node = self._running_node(address)
        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP)
        node.stopped = True
        self._wait_state(node.process.pid, stopped=True, timeout=timeout)

    def cont(self, address: str, *, timeout: float = 5.0) -> None:
        """Resume a node frozen by :meth:`stop` (SIGCONT)."""
        node = self._running_node(address)
        assert node.process is not None
        node.process.send_signal(signal.SIGCONT)
        node.stopped = False
        self._wait_state(node.process.pid, stopped=False, timeout=timeout)

    def restart(self, address: str, *, timeout: float = 30.0) -> None:
        """Start a node again with its old directory and address, joining the other nodes.

        A node that is still running is killed first. Returns once the node's API port accepts
        connections, i.e. it rejoined and the cluster has a leader.
        """
        node = self._node(address)
        if node.process is not None:
            self.kill(address)
        deadline = time.monotonic() + timeout
        join = [other.address for other in self._nodes if other is not node]
        try:
            self._bring_up(node, join, deadline, keep_db_port=True)
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n{self._logs_report([node])}") from exc

    # -- internals ---------------------------------------------------------------------------

    def _node(self, address: str) -> _Node:
        for node in self._nodes:
            if node.address == address:
                return node
        raise KeyError(f"no dqlite node {address!r} in this cluster")

    def _running_node(self, address: str) -> _Node:
        node = self._node(address)
        if not node.running:
            raise ClusterError(f"dqlite node {address!r} is not running")
        return node

    def _live_addresses(self) -> list[str]:
        return [node.address for node in self._nodes if node.running and not node.stopped]

    def _new_node(self, index: int) -> _Node:
        assert self._base_dir is not None
        data_dir = self._base_dir / f"node{index}"
        data_dir.mkdir()
        api_port, db_port = _free_ports(2)
        node = _Node(
            address=f"127.0.0.1:{db_port}",
            api_address=f"127.0.0.1:{api_port}",
            data_dir=data_dir,
            log_path=data_dir / "dqlite-demo.log",
        )
        self._nodes.append(node)
        return node

    def _bring_up(
        self,
        node: _Node,
        join: list[str],
        deadline: float,
        *,
        keep_db_port: bool,
    ) -> None:
        """Start ``node`` and wait until it is up.

        A port can be taken by someone else between choosing and binding it; then the node
        exits at once saying so, and it is started again on new ports (only a new API port if
        the DB address is the node's identity, as on a restart).
        """
        for attempt in range(1, _MAX_PORT_ATTEMPTS + 1):
            self._spawn(node, join)
            try:
                self._wait_node_up(node, deadline)
                return
            except ClusterError:
                process = node.process
                if process is None or process.poll() is None or attempt == _MAX_PORT_ATTEMPTS:
                    raise
                if not any(e in _tail(node.log_path).lower() for e in _BIND_ERRORS):
                    raise
                node.process = None
            if keep_db_port:
                (api_port,) = _free_ports(1)
            else:
                api_port, db_port = _free_ports(2)
                node.address = f"127.0.0.1:{db_port}"
            node.api_address = f"127.0.0.1:{api_port}"

    def _spawn(self, node: _Node, join: list[str]) -> None:
        argv = [self._demo, "-a", node.api_address, "-d", node.address, "-D", str(node.data_dir)]
        if join:
            argv += ["-j", ",".join(join)]
        if self._verbose:
            argv.append("-v")
        on_main_thread = threading.current_thread() is threading.main_thread()
        with node.log_path.open("ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            node.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Parent-death signals are per thread: only safe from the main thread.
                preexec_fn=_set_pdeathsig if on_main_thread else None,
            )
        node.stopped = False

    def _wait_node_up(self, node: _Node, deadline: float) -> None:
        """Wait until the node's API port accepts connections (see the module docstring)."""
        address = node.address
        while True:
            process = node.process
            if process is None or process.poll() is not None:
                status = None if process is None else process.returncode
                raise ClusterError(f"dqlite node {address} exited with status {status}")
            if accepts(node.api_address):
                return
            if time.monotonic() >= deadline:
                raise ClusterError(f"dqlite node {address} did not come up in time")
            time.sleep(_POLL_INTERVAL)

    @staticmethod
    def _wait_state(pid: int, *, stopped: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = process_state(pid)
            if state is None or (state == "T") == stopped:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(f"process {pid} still in state {state!r} after {timeout}s")
            time.sleep(0.01)

    def _logs_report(self, nodes: list[_Node] | None = None) -> str:
        chosen = self._nodes if nodes is None else nodes
        parts = [
            f"{_LOGS_HEADER} {node.log_path} ({node.address}) ---\n{_tail(node.log_path)}"
            for node in chosen
        ]
        return "\n".join(parts)
