"""A :class:`DqlitepyCluster` whose nodes each run in a network namespace of a :class:`Network`."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dqlitepy_server import CLUSTER_KEY, DqlitepyCluster, DqlitepyServer

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

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.root, ignore_errors=True)
