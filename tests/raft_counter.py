"""A replicated PySyncObj counter for transport tests, with settings tuned for loopback."""

from __future__ import annotations

import hashlib
from typing import Any

from pysyncobj import SyncObj, SyncObjConf, replicated

from dqlitepy.replication.transport import RaftNode

__all__ = ["Counter", "raft_conf"]


def raft_conf(**overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "appendEntriesUseBatch": False,
        "raftMinTimeout": 0.35,
        "raftMaxTimeout": 0.45,
        "appendEntriesPeriod": 0.05,
        "connectionTimeout": 1.5,
        "connectionRetryTime": 0.3,
        "appendEntriesBatchSizeBytes": 16 * 1024 * 1024,
        "autoTickPeriod": 0.02,
    }
    settings.update(overrides)
    return SyncObjConf(**settings)


class Counter(SyncObj):  # type: ignore[misc]
    """A replicated counter, and a replicated blob digest for large commands."""

    def __init__(self, address: str, others: list[str], transport: type, **conf: Any) -> None:
        super().__init__(
            RaftNode(address),
            [RaftNode(other) for other in others],
            raft_conf(**conf),
            transportClass=transport,
            nodeClass=RaftNode,
        )
        # Replicated state is defined after SyncObj.__init__ (``libraries.md``).
        self.value = 0
        self.blobs: list[str] = []

    @replicated  # type: ignore[untyped-decorator]
    def incr(self, n: int = 1) -> int:
        self.value += n
        return self.value

    @replicated  # type: ignore[untyped-decorator]
    def put_blob(self, blob: bytes) -> str:
        digest = hashlib.sha256(blob).hexdigest()
        self.blobs.append(digest)
        return digest
