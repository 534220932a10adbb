"""A :class:`DqlitepyCluster` whose nodes each run in a network namespace of a :class:`Network`."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dqlitepy_server import CLUSTER_KEY, DqlitepyCluster, DqlitepyServer

import dqlitepy

from .netns import Network

__all__ = ["NetnsCluster"]

PORT = 9001


class NetnsCluster(DqlitepyCluster):
    """``network.size`` ``dqlitepy server`` processes, node ``i`` in namespace ``i``.

    Node ``i`` listens on ``network.address(i):9001``; the first bootstraps, the others join
    it.  The test process reaches every node over the bridge.
    """

    def __init__(self, network: Network) -> None:
        self.network = network
        self.ssl = None  # plain dqlite inside the namespaces
        self.root = Path(tempfile.mkdtemp(prefix="dqlitepy-netns-"))
        self.nodes: list[DqlitepyServer] = []
        try:
            for i in range(network.size):
                join = [self.nodes[0].address] if self.nodes else None
                node = DqlitepyServer(
                    self.root / f"node{i}",
                    f"{network.address(i)}:{PORT}",
                    cluster_key=CLUSTER_KEY,
                    join=join,
                    prefix=network.prefix(i),
                )
                self.nodes.append(node)
                node.start(timeout=60)
        except BaseException:
            self.close()
            raise

    @classmethod
    @contextmanager
    def formed_in(cls, network: Network) -> Iterator[NetnsCluster]:
        """A cluster whose voters agree on a leader, closed (nodes killed) on exit."""
        cluster = cls(network)
        try:
            cluster.wait_voters(network.size)
            yield cluster
        finally:
            cluster.close()

    def index(self, address: str) -> int:
        """The namespace index of the node at ``address``."""
        return next(i for i, n in enumerate(self.nodes) if n.address == address)

    def logs(self) -> str:
        """Every node's log, for a failure report."""
        return "\n".join(f"--- {n.address}\n{n.log()}" for n in self.nodes)

    def evidence(self) -> str:
        """What each node says about the leader, and every server's thread stacks (py-spy)."""
        lines: list[str] = []
        for i, node in enumerate(self.nodes):
            pid = node.process.pid if node.process is not None else None
            try:
                with dqlitepy.Client([node.address], timeout=3, attempt_timeout=1) as one:
                    named = one.leader()
                leader = f"{named.id}@{named.address}" if named else "none"
            except dqlitepy.Error as exc:
                leader = f"error {exc!r}"
            lines.append(f"n{i} {node.address} pid {pid}: names leader {leader}")
        py_spy = shutil.which("py-spy")
        for i, node in enumerate(self.nodes):
            if node.process is None:
                continue
            lines.append(f"--- py-spy dump of n{i} {node.address} (pid {node.process.pid})")
            if py_spy is None:
                lines.append("(py-spy not on PATH: no stacks)")
                continue
            try:
                done = subprocess.run(
                    [py_spy, "dump", "--pid", str(node.process.pid)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                lines.append(done.stdout + done.stderr)
            except subprocess.TimeoutExpired:
                lines.append("(py-spy timed out)")
        return "\n".join(lines)

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.root, ignore_errors=True)
