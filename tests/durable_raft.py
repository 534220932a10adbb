"""Three HardenedSyncObj nodes in this process, on loopback, with real DurableJournals.

For tests that reach into one node's journal (slowing, holding or breaking it through its
instance) while the others run as they would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from dqlitepy_server import free_port
from waiting import wait_until

from dqlitepy.replication.journal import durable_journal_for_syncobj
from dqlitepy.replication.raft import HardenedSyncObj, raft_config

__all__ = ["durable_cluster"]


def _apply(index: int, command: bytes, decoded: object = None) -> int:
    return index


@contextlib.contextmanager
def durable_cluster(root: Path, size: int = 3) -> Iterator[list[HardenedSyncObj]]:
    """``size`` nodes journaling under ``root``, once one of them leads past its barrier.

    Every node is destroyed at the end.
    """
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(size)]
    nodes: list[HardenedSyncObj] = []
    try:
        with durable_journal_for_syncobj():
            for i, address in enumerate(addresses):
                (root / f"n{i}").mkdir()
                conf = raft_config(journalFile=str(root / f"n{i}" / "journal"))
                peers = [p for p in addresses if p != address]
                nodes.append(HardenedSyncObj(address, peers, conf, _apply))
        wait_until(lambda: any(n.barrier_done for n in nodes), "a leader elected", 10)
        yield nodes
    finally:
        for node in nodes:
            node.destroy_synchronous()
