"""The asyncio admin client: :class:`dqlitepy.Client`'s methods as coroutines.

It is :class:`~dqlitepy.client.admin.ClientBase` (the same requests, leader
discovery, key proof and retry rules as the blocking client) driven by the
asyncio waiter.  Calls on one client are serialised by a lock, as they share
the connection to the leader.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TypeVar

from ..client.admin import ClientBase, NodeMetadata
from ..client.needs import Gen
from ..wire import NodeInfo, NodeRole
from .waiting import wait

__all__ = ["Client"]

T = TypeVar("T")


class Client(ClientBase):
    """Administers a dqlite cluster from asyncio code.

    Args:
        servers: addresses of known nodes, as a list or a comma-separated string.
        timeout: the budget of each call (leader discovery included).
        attempt_timeout: the budget of one attempt through one node.
        cluster_key: the cluster key (bytes), or the path of a file holding it;
            by default the value of ``DQLITEPY_CLUSTER_KEY``, if set.
        ssl: connect with TLS using this context (see :mod:`dqlitepy.client.tls`).

    Raises:
        InterfaceError: no servers, or the key file cannot be read or is empty.
    """

    _lock: asyncio.Lock | None = None

    async def _run(self, gen: Gen[T]) -> T:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await wait(gen)

    async def close(self) -> None:
        """Close the connection to the leader, if any."""
        self._drop()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def leader(self) -> NodeInfo | None:
        """Return the current leader (id and address), or None if none is known."""
        return await self._run(self._leader_gen())

    async def cluster(self) -> list[NodeInfo]:
        """Return every member with its id, address and role (from the leader)."""
        return await self._run(self._cluster_gen())

    async def add(self, node_id: int, address: str) -> None:
        """Add a node; it joins as a spare."""
        await self._run(self._add_gen(node_id, address))

    async def assign(self, node_id: int, role: NodeRole | int | str) -> None:
        """Give a node a role: voter, standby or spare."""
        await self._run(self._assign_gen(node_id, role))

    async def remove(self, node_id: int) -> None:
        """Remove a node from the cluster."""
        await self._run(self._remove_gen(node_id))

    async def transfer(self, node_id: int) -> None:
        """Hand leadership to a node (0: let Raft choose a voter)."""
        await self._run(self._transfer_gen(node_id))

    async def describe(self, address: str | None = None) -> NodeMetadata:
        """Return a node's failure domain and weight (default: the first server)."""
        return await self._run(self._describe_gen(address))

    async def weight(self, weight: int, address: str | None = None) -> None:
        """Set a node's weight, in memory on that node (default: the first server)."""
        await self._run(self._weight_gen(weight, address))

    async def dump(self, database: str, address: str | None = None) -> dict[str, bytes]:
        """Return a database's files by name (the database and its WAL)."""
        return await self._run(self._dump_gen(database, address))
