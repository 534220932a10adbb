"""The nodes a test starts: what every node offers, and the in-process kind.

:class:`ServerNode` is what a test holds, whichever way the node runs: its address and
data directory, ``connect``/``client``/URLs pointing at it, and start, stop, restart.
:class:`~dqlitepy.testing.process.ProcessNode` runs ``dqlitepy server`` in a process of its
own, the only kind that can be killed (SIGKILL) or paused (SIGSTOP); :class:`EmbeddedNode`
runs a :class:`dqlitepy.Node` in the test's process, which starts faster but can only be
stopped gracefully.

Every connection and admin client made through a node is closed when the node is closed,
so a test that fails half-way leaks none.
"""

from __future__ import annotations

import abc
import contextlib
import os
import ssl as _ssl
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import dqlitepy

from ._support import free_port

__all__ = ["EmbeddedNode", "ServerNode"]

_N = TypeVar("_N", bound="ServerNode")


def dqlite_url(addresses: list[str], database: str) -> str:
    """The driver's URL of ``database`` on ``addresses``: ``dqlite://h1:p1,h2:p2/db``."""
    return f"dqlite://{','.join(addresses)}/{database}"


def sqlalchemy_url(addresses: list[str], database: str) -> str:
    """SQLAlchemy's URL of ``database`` on ``addresses``: ``sqlite+dqlitepy://[h1:p1,...]/db``.

    The brackets keep SQLAlchemy's URL parser from reading the first colon as a port.
    """
    return f"sqlite+dqlitepy://[{','.join(addresses)}]/{database}"


class ServerNode(abc.ABC):
    """A dqlitepy node a test runs, on a loopback address with a data directory of its own.

    Attributes:
        address: where clients and the other nodes dial it (``127.0.0.1:PORT``).
        data_dir: its data directory.
        cluster_key: the cluster key (a replicated node), or None (a standalone node).
        ssl: the TLS context :meth:`connect` and :meth:`client` dial it with (None: plain).
        name: a short name for reports (``node0``...).
    """

    def __init__(
        self,
        address: str,
        data_dir: Path,
        *,
        cluster_key: str | None,
        ssl: _ssl.SSLContext | None,
        name: str,
    ) -> None:
        self.address = address
        self.data_dir = data_dir
        self.cluster_key = cluster_key
        self.ssl = ssl
        self.name = name
        self._made: list[dqlitepy.Connection | dqlitepy.Client] = []

    # -- life cycle -------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def running(self) -> bool:
        """True from a successful :meth:`start` until it is stopped, killed or closed."""

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return False

    @property
    def live(self) -> bool:
        """Running and not paused: the node answers."""
        return self.running and not self.paused

    @abc.abstractmethod
    def start(self: _N, timeout: float = 60.0) -> _N:
        """Start the node (again, on the same address and data directory after a stop or
        a kill) and wait until it accepts connections; returns the node.

        Raises:
            HarnessError: it exited, or did not accept connections within ``timeout``.
        """

    @abc.abstractmethod
    def stop(self) -> object:
        """Stop the node gracefully (a leader hands leadership over first) and wait."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Kill the node at once (SIGKILL): no hand-over, no flush, as in a crash."""

    @abc.abstractmethod
    def pause(self) -> None:
        """Freeze the node (SIGSTOP): it holds its connections but answers nothing."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Let a paused node run on (SIGCONT)."""

    def restart(self: _N, timeout: float = 60.0) -> _N:
        """Start the node again on the same address and data directory; one still running
        is stopped gracefully first, a paused one killed.  Returns once it accepts
        connections: see :meth:`Cluster.wait_for_leader` for its rejoining the cluster.
        """
        if self.paused:
            self.kill()
        elif self.running:
            self.stop()
        return self.start(timeout)

    @abc.abstractmethod
    def log(self) -> str:
        """What the node logged so far (for a failure report)."""

    def close(self) -> None:
        """Close what was made through the node, and stop it (killed if it is a process)."""
        made, self._made = self._made, []
        for thing in made:
            # A connection made in another thread refuses close() from this one.
            with contextlib.suppress(dqlitepy.Error):
                thing.close()

    def __enter__(self: _N) -> _N:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- clients ----------------------------------------------------------------------------

    def connect(self, database: str, **kwargs: Any) -> dqlitepy.Connection:
        """``dqlitepy.connect(database, servers=[address], ...)``, closed with the node.

        The node's TLS context is used unless ``ssl=`` says otherwise.
        """
        kwargs.setdefault("servers", [self.address])
        kwargs.setdefault("ssl", self.ssl)
        conn = dqlitepy.connect(database, **kwargs)
        self._made.append(conn)
        return conn

    def client(self, **kwargs: Any) -> dqlitepy.Client:
        """A :class:`dqlitepy.Client` on this node, with its cluster key; closed with it."""
        kwargs.setdefault("ssl", self.ssl)
        if self.cluster_key is not None:
            kwargs.setdefault("cluster_key", self.cluster_key.encode())
        client = dqlitepy.Client([self.address], **kwargs)
        self._made.append(client)
        return client

    def dqlite_url(self, database: str) -> str:
        """``dqlite://ADDRESS/database``, for ``dqlitepy.connect`` or ``DQLITEPY_SERVERS``."""
        return dqlite_url([self.address], database)

    def sqlalchemy_url(self, database: str) -> str:
        """``sqlite+dqlitepy://[ADDRESS]/database``, for SQLAlchemy's ``create_engine``."""
        return sqlalchemy_url([self.address], database)

    def named_leader(self, timeout: float = 1.0) -> dqlitepy.NodeInfo | None:
        """The leader this node itself names (one LEADER request), or None if it names none.

        Raises:
            dqlitepy.Error: the node did not answer within ``timeout``.
        """
        with dqlitepy.Client(
            [self.address], timeout=timeout, attempt_timeout=timeout, ssl=self.ssl
        ) as one:
            return one.leader()

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "down"
        return f"<{type(self).__name__} {self.name} {self.address} {state}>"


class EmbeddedNode(ServerNode):
    """A :class:`dqlitepy.Node` in the test's own process.

    It starts in a fraction of the time a process takes, and stops gracefully; it cannot
    be killed or paused (that would freeze the test too): use a
    :class:`~dqlitepy.testing.process.ProcessNode` for faults.

    Args:
        data_dir: its data directory.
        address: its address (a free loopback port if None).
        cluster_key: the cluster key (replicated) or None (standalone).
        join: addresses of members to join through.
        options: more :class:`dqlitepy.Node` keyword arguments (``max_connections``...,
            ``tls``: a ``NodeTLS``).
        ssl: the TLS context :meth:`connect` and :meth:`client` dial it with.
        name: a short name for reports.
    """

    def __init__(
        self,
        data_dir: Path,
        address: str | None = None,
        *,
        cluster_key: str | None = None,
        join: list[str] | None = None,
        options: Mapping[str, Any] | None = None,
        ssl: _ssl.SSLContext | None = None,
        name: str = "node",
    ) -> None:
        super().__init__(
            address or f"127.0.0.1:{free_port()}",
            data_dir,
            cluster_key=cluster_key,
            ssl=ssl,
            name=name,
        )
        self.join = list(join or [])
        self.options = dict(options or {})
        self.node: dqlitepy.Node | None = None

    @property
    def running(self) -> bool:
        return self.node is not None

    def start(self, timeout: float = 60.0) -> EmbeddedNode:
        """Start serving (joining the cluster first, if it joins one); returns the node.

        ``timeout`` is not enforced here: a joining node gives up on its own after 30 s.
        """
        if self.node is not None:
            return self
        options = dict(self.options)
        if self.cluster_key is not None:
            options["cluster_key"] = self.cluster_key.encode()
        self.node = dqlitepy.Node(
            self.address, os.fspath(self.data_dir), join=self.join, **options
        ).start()
        return self

    def stop(self) -> None:
        """Stop serving (a leader hands over first) and release the data directory."""
        node, self.node = self.node, None
        if node is not None:
            node.close()

    def kill(self) -> None:
        """Not possible in-process: raises :class:`NotImplementedError`."""
        raise NotImplementedError(
            f"{self.name} runs in this process and cannot be killed: "
            "ask for process nodes (in_process=False) to kill or pause nodes"
        )

    def pause(self) -> None:
        """Not possible in-process: raises :class:`NotImplementedError`."""
        raise NotImplementedError(
            f"{self.name} runs in this process and cannot be paused: "
            "ask for process nodes (in_process=False) to kill or pause nodes"
        )

    def resume(self) -> None:
        """Not possible in-process: raises :class:`NotImplementedError`."""
        self.pause()

    def log(self) -> str:
        return "(an in-process node logs through the logging module: see the captured log)\n"

    def close(self) -> None:
        super().close()
        self.stop()
