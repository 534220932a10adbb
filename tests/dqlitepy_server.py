"""Run ``dqlitepy server`` processes on loopback for tests.

Each node is a separate ``python -m dqlitepy server`` process on a free port with
its own temporary data directory, stopped by PID at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from ssl import SSLContext
from types import TracebackType

import dqlitepy

__all__ = ["CLUSTER_KEY", "DqlitepyCluster", "DqlitepyServer", "free_port"]

_REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


class DqlitepyServer:
    """One ``dqlitepy server`` process.

    Args:
        data_dir: its data directory (a temporary one, removed at close, if None).
        address: where it is dialled (a free loopback port if None): where it listens,
            or, with ``listen``, the address it advertises.
        cluster_key: the cluster key (replication) or None (a single node).
        join: addresses to join through.
        options: more ``dqlitepy server`` options.
        prefix: a command the server runs under, such as ``["ip", "netns", "exec", NS]``;
            it must exec the server (not fork it), so that signals reach the server.
        listen: where it listens (``-a``), when not ``address``: it then runs with
            ``--advertise ADDRESS``.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        address: str | None = None,
        *,
        cluster_key: str | None = None,
        join: list[str] | None = None,
        options: list[str] | None = None,
        prefix: list[str] | None = None,
        listen: str | None = None,
    ) -> None:
        self.listen = listen
        self.cluster_key = cluster_key
        self.join = list(join or [])
        self.options = list(options or [])
        self.prefix = list(prefix or [])
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="dqlitepy-node-"))
        self.address = address or f"127.0.0.1:{free_port()}"
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> DqlitepyServer:
        """Start the process and wait until it accepts connections."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(_REPO) + os.pathsep + env.get("PYTHONPATH", "")
        # The caller's key and config file (docs/configuration.md) are not the test's.
        for variable in ("DQLITEPY_CLUSTER_KEY", "DQLITEPY_CLUSTER_KEY_FILE", "DQLITEPY_CONFIG"):
            env.pop(variable, None)
        if self.cluster_key is not None:
            env["DQLITEPY_CLUSTER_KEY"] = self.cluster_key
        join = ["-j", ",".join(self.join)] if self.join else []
        where = ["-a", self.address] if self.listen is None else ["-a", self.listen]
        if self.listen is not None:
            where += ["--advertise", self.address]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    "dqlitepy",
                    "server",
                    *where,
                    "-d",
                    str(self.data_dir),
                    *join,
                    *self.options,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while not _accepts(self.address):
            if self.process.poll() is not None:
                raise RuntimeError(f"dqlitepy server exited early:\n{self.log()}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"dqlitepy server did not start in {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        """The process's output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` and wait for the exit; returns the exit status."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self.process = None
        return process.returncode

    def close(self) -> None:
        """Kill the process if it runs and remove a temporary data directory."""
        self.stop(signal.SIGKILL)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> DqlitepyServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


CLUSTER_KEY = "test-cluster-key-0123456789abcdef"


class DqlitepyCluster:
    """Three ``dqlitepy server`` processes: the first bootstraps, the others --join it.

    Args:
        size: how many nodes.
        options: more ``dqlitepy server`` options for every node (``--tls-cert``...).
        ssl: the client TLS context the helpers below connect with.
        data_dirs: each node's data directory (the caller's to remove), instead of
            directories under a temporary root; a node's log is written beside its
            directory (``<dir>.log``), so the directory may be a mount point.
        addresses: each node's address (free loopback ports if None).
        listen: each node's listening address, when not its address (which it then
            advertises).
    """

    def __init__(
        self,
        size: int = 3,
        *,
        options: list[str] | None = None,
        ssl: SSLContext | None = None,
        data_dirs: Sequence[Path] | None = None,
        addresses: Sequence[str] | None = None,
        listen: Sequence[str] | None = None,
    ) -> None:
        if data_dirs is not None and len(data_dirs) != size:
            raise ValueError(f"{len(data_dirs)} data directories for {size} nodes")
        self.root = Path(tempfile.mkdtemp(prefix="dqlitepy-cluster-"))
        self.ssl = ssl
        self.nodes: list[DqlitepyServer] = []
        try:
            for i in range(size):
                join = [self.nodes[0].address] if self.nodes else None
                data_dir = data_dirs[i] if data_dirs is not None else self.root / f"node{i}"
                node = DqlitepyServer(
                    data_dir,
                    None if addresses is None else addresses[i],
                    cluster_key=CLUSTER_KEY,
                    join=join,
                    options=options,
                    listen=None if listen is None else listen[i],
                )
                self.nodes.append(node)
                node.start(timeout=60)
        except BaseException:
            self.close()  # the nodes started so far
            raise

    @classmethod
    @contextmanager
    def formed(
        cls,
        size: int = 3,
        *,
        options: list[str] | None = None,
        ssl: SSLContext | None = None,
        data_dirs: Sequence[Path] | None = None,
        addresses: Sequence[str] | None = None,
        listen: Sequence[str] | None = None,
    ) -> Iterator[DqlitepyCluster]:
        """A cluster whose ``size`` voters agree on a leader, closed on exit."""
        cluster = cls(
            size,
            options=options,
            ssl=ssl,
            data_dirs=data_dirs,
            addresses=addresses,
            listen=listen,
        )
        try:
            cluster.wait_voters(size)
            yield cluster
        finally:
            cluster.close()

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def node(self, address: str) -> DqlitepyServer:
        return next(n for n in self.nodes if n.address == address)

    def leader(self, timeout: float = 20.0, among: list[str] | None = None) -> str:
        """The leader's address, as the nodes ``among`` (default: those running) name it."""
        deadline = time.monotonic() + timeout
        while True:
            asked = (
                among
                if among is not None
                else [n.address for n in self.nodes if n.process is not None]
            )
            try:
                with dqlitepy.Client(asked, timeout=2, ssl=self.ssl) as client:
                    leader = client.leader()
                if leader is not None and (among is None or leader.address in among):
                    return leader.address
            except dqlitepy.Error:
                pass
            assert time.monotonic() < deadline, f"no leader among {asked}"
            time.sleep(0.1)

    def make_leader(self, address: str, timeout: float = 60.0) -> None:
        """Hand leadership to ``address`` by TRANSFER until the node itself says it leads.

        TRANSFER is repeated while the target catches up (or cannot lead yet).
        """
        deadline = time.monotonic() + timeout
        with dqlitepy.Client(self.addresses, timeout=5, ssl=self.ssl) as client:
            target = next(n.id for n in client.cluster() if n.address == address)
        while True:
            with (
                contextlib.suppress(dqlitepy.Error),
                dqlitepy.Client([address], timeout=2, ssl=self.ssl) as one,
            ):
                named = one.leader()
                if named is not None and named.address == address:
                    return
            assert time.monotonic() < deadline, f"{address} did not become leader"
            with (
                contextlib.suppress(dqlitepy.Error),
                dqlitepy.Client(self.addresses, timeout=5, ssl=self.ssl) as client,
            ):
                client.transfer(target)
            time.sleep(0.3)

    def read_on(self, address: str, database: str, sql: str) -> list[tuple[object, ...]]:
        """The rows of ``sql`` as node ``address`` itself serves them.

        A client follows redirects to whoever leads, so the node is made leader
        first, and the read counts only if it still led after it.
        """
        for _ in range(5):
            self.make_leader(address)
            conn = dqlitepy.connect(database, servers=[address], leader_timeout=30, ssl=self.ssl)
            try:
                rows = [tuple(row) for row in conn.execute(sql)]
            finally:
                conn.close()
            with dqlitepy.Client([address], timeout=2, ssl=self.ssl) as one:
                named = one.leader()
            if named is not None and named.address == address:
                return rows
        raise AssertionError(f"{address} kept losing the lead: its rows were not read")

    def wait_voters(self, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` voters are configured and every node names the same leader."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with dqlitepy.Client(self.addresses, timeout=5, ssl=self.ssl) as client:
                    voters = [n for n in client.cluster() if n.role == 0 and n.id]
                leaders = set()
                for address in self.addresses:
                    with dqlitepy.Client([address], timeout=2, ssl=self.ssl) as one:
                        leader = one.leader()
                    # The leader's id too: members' ids travel through the log.
                    leaders.add(f"{leader.id}@{leader.address}" if leader and leader.id else "")
                if len(voters) >= count and len(leaders) == 1 and "" not in leaders:
                    return
            except dqlitepy.Error:
                pass
            assert time.monotonic() < deadline, "cluster did not form"
            time.sleep(0.2)

    def close(self) -> None:
        for node in self.nodes:
            node.stop(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
