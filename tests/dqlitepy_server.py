"""Run ``dqlitepy server`` processes on loopback for tests.

Each node is a separate ``dqlitepy server`` process on a free port with its own
temporary data directory, stopped by PID at the end: :class:`DqlitepyServer` is the pytest
plugin's :class:`dqlitepy.testing.ProcessNode` (one implementation for the project's tests
and its users').  :class:`DqlitepyCluster` is this suite's older cluster helper, which many
tests drive by address; new tests use the plugin's ``dqlitepy_cluster`` fixture.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from ssl import SSLContext

import dqlitepy
from dqlitepy.testing import ProcessNode as DqlitepyServer
from dqlitepy.testing import free_port

__all__ = ["CLUSTER_KEY", "DqlitepyCluster", "DqlitepyServer", "free_port"]


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
