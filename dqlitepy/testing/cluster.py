"""A replicated cluster of nodes for a test, with the faults a failover test needs.

The first node bootstraps the cluster; the others are started at the same time and join
it (``--join``), retrying until it serves.  :meth:`Cluster.start` returns once every node
is a voter and every node names the same leader, so a test begins on a formed cluster.

Who leads is asked of the nodes themselves (a LEADER request to each node that answers):
the leader is the node a majority of the nodes names and that names itself.  A node that
was just killed is not asked, and one that still names a dead leader is outvoted, so
:meth:`Cluster.wait_for_leader` after a kill returns the new leader, never the old one.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from ssl import SSLContext
from types import TracebackType
from typing import Any

import dqlitepy

from ._support import tail, wait_for
from .nodes import EmbeddedNode, ServerNode, dqlite_url, sqlalchemy_url
from .process import ProcessNode

__all__ = ["Cluster", "check_options"]

#: The lines of each node's log a failure message shows.
LOG_TAIL = 30

NodeRef = ServerNode | str


class Cluster:
    """``size`` dqlitepy nodes on loopback forming one replicated cluster.

    Use it as a context manager, or call :meth:`start` and :meth:`close`; the pytest
    fixture ``dqlitepy_cluster`` does both for a test.

    Args:
        size: how many nodes; all of them are voters.
        root: the directory under which each node gets ``nodeN/`` (and ``nodeN.log``);
            a temporary directory, removed at :meth:`close`, if None.
        in_process: run :class:`~dqlitepy.testing.EmbeddedNode` nodes in this process
            (faster to start, but they cannot be killed or paused) instead of
            :class:`~dqlitepy.testing.ProcessNode` processes.
        options: for process nodes, more ``dqlitepy server`` arguments (a list of
            strings); for in-process nodes, more :class:`dqlitepy.Node` keyword arguments
            (a mapping).
        cluster_key: the key the nodes share (a fresh random one if None).
        ssl: the client TLS context for the nodes, when ``options`` make them serve TLS.

    Raises:
        TypeError: ``options`` are not of the kind the nodes take.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        root: Path | None = None,
        in_process: bool = False,
        options: Sequence[str] | Mapping[str, Any] | None = None,
        cluster_key: str | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        check_options(options, in_process)
        self.size = size
        self.in_process = in_process
        self.options = options
        self.cluster_key = cluster_key or secrets.token_hex(16)
        self.ssl = ssl
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="dqlitepy-testing-"))
        self.nodes: list[ServerNode] = []
        self._made: list[dqlitepy.Connection | dqlitepy.Client] = []
        for _ in range(size):
            self.nodes.append(self._new_node())

    def _new_node(self) -> ServerNode:
        index = len(self.nodes)
        join = [self.nodes[0].address] if self.nodes else None
        name = f"node{index}"
        if self.in_process:
            extra = self.options if isinstance(self.options, Mapping) else {}
            return EmbeddedNode(
                self.root / name,
                cluster_key=self.cluster_key,
                join=join,
                options={"voters": self.size, **extra},
                ssl=self.ssl,
                name=name,
            )
        args = (
            [] if self.options is None or isinstance(self.options, Mapping) else list(self.options)
        )
        if "--voters" not in args:
            args += ["--voters", str(self.size)]
        return ProcessNode(
            self.root / name,
            cluster_key=self.cluster_key,
            join=join,
            options=args,
            ssl=self.ssl,
            name=name,
        )

    # -- life cycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Cluster:
        """Start every node, and wait until all are voters that name the same leader.

        Raises:
            HarnessError: a node did not start, or the cluster did not form, within
                ``timeout``; every node is killed then.
        """
        deadline = time.monotonic() + timeout
        try:
            self._start_nodes(deadline)
            wait_for(
                lambda: self._formed(self.size),
                lambda: f"{self.size} voters naming one leader\n{self.report()}",
                max(deadline - time.monotonic(), 0.0),
                0.1,
            )
        except BaseException:
            self.close()
            raise
        return self

    def _start_nodes(self, deadline: float) -> None:
        if self.in_process:
            # Node.start() returns once the node has joined: one after the other.
            for node in self.nodes:
                node.start()
            return
        # The first node, then the others together: their interpreters start while the first
        # elects itself, and they join at once (launched any earlier, they would compete with
        # the first for the CPU and wait between failed attempts to join).  Launched from this
        # thread: see ProcessNode's parent-death rule.
        first, *others = [n for n in self.nodes if isinstance(n, ProcessNode)]
        first.start(max(deadline - time.monotonic(), 0.0))
        for node in others:
            node.launch()
        for node in others:
            node.wait_serving(max(deadline - time.monotonic(), 0.0))

    def _formed(self, voters: int) -> bool:
        try:
            with self._admin(timeout=2.0) as client:
                members = client.cluster()
        except dqlitepy.Error:
            return False
        named = [n for n in members if n.role == dqlitepy.NodeRole.VOTER and n.id]
        if len(named) < voters:
            return False
        answers = self._named_leaders(self.nodes)
        named_leaders = set(answers.values())
        return (
            len(answers) == len(self.nodes)
            and len(named_leaders) == 1
            and None not in named_leaders
        )

    def close(self) -> None:
        """Close every connection and client made through the cluster, kill every node
        (stop it, in process), and remove a temporary root directory."""
        made, self._made = self._made, []
        for thing in made:
            with contextlib.suppress(dqlitepy.Error):
                thing.close()
        # In process, the node left last (whichever it is) leads and tries for about 2 s to
        # hand leadership over before it stops: such clusters close that much slower than
        # process clusters, whose nodes are killed.
        for node in self.nodes:
            node.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self if any(n.running for n in self.nodes) else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- who leads --------------------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """Every node's address, in order."""
        return [n.address for n in self.nodes]

    def node(self, ref: NodeRef) -> ServerNode:
        """The node ``ref`` (a node of this cluster or an address).

        Raises:
            KeyError: no node of this cluster is ``ref``.
        """
        for node in self.nodes:
            if node is ref or node.address == ref:
                return node
        raise KeyError(f"no node {ref!r} in this cluster ({', '.join(self.addresses)})")

    def _named_leaders(self, nodes: Sequence[ServerNode]) -> dict[str, str | None]:
        """Each answering node's address -> the leader address it names (None: none)."""
        answers: dict[str, str | None] = {}
        for node in nodes:
            if not node.live:
                continue
            try:
                info = node.named_leader(timeout=1.0)
            except dqlitepy.Error:
                continue
            answers[node.address] = info.address if info is not None else None
        return answers

    def _probe_leader(self) -> ServerNode | None:
        answers = self._named_leaders(self.nodes)
        votes = Counter(a for a in answers.values() if a is not None)
        for address, count in votes.most_common(1):
            if count > len(self.nodes) // 2 and answers.get(address) == address:
                return self.node(address)
        return None

    def leader(self) -> ServerNode | None:
        """The node that leads now, or None if no leader is agreed on at this moment.

        The leader is the node that names itself and that a majority of the nodes names;
        nodes killed, stopped or paused are not asked.  No waiting: see
        :meth:`wait_for_leader`.
        """
        return self._probe_leader()

    def wait_for_leader(self, timeout: float = 30.0) -> ServerNode:
        """The leader, waiting up to ``timeout`` seconds for one to be agreed on.

        After the leader was killed or paused, this is its successor.

        Raises:
            HarnessError: no leader within ``timeout``; the message says what each node
                named, and ends with their logs.
        """
        return wait_for(
            self._probe_leader,
            lambda: f"a leader\n{self.report()}",
            timeout,
            0.05,
        )

    def followers(self, timeout: float = 30.0) -> list[ServerNode]:
        """The live nodes other than the leader (waiting for a leader as
        :meth:`wait_for_leader` does)."""
        leader = self.wait_for_leader(timeout)
        return [n for n in self.nodes if n is not leader and n.live]

    def transfer(self, ref: NodeRef, timeout: float = 30.0) -> ServerNode:
        """Make node ``ref`` the leader (TRANSFER, repeated while it catches up) and
        return it once the cluster agrees.

        Raises:
            HarnessError: it did not become the leader within ``timeout``.
        """
        node = self.node(ref)

        def leads() -> ServerNode | None:
            if self._probe_leader() is node:
                return node
            with contextlib.suppress(dqlitepy.Error), self._admin(timeout=5.0) as client:
                target = next((m.id for m in client.cluster() if m.address == node.address), None)
                if target is not None:
                    client.transfer(target)
            return node if self._probe_leader() is node else None

        return wait_for(leads, lambda: f"{node.name} to lead\n{self.report()}", timeout, 0.2)

    # -- faults -----------------------------------------------------------------------------

    def kill(self, ref: NodeRef) -> ServerNode:
        """SIGKILL node ``ref`` (a crash); returns it."""
        node = self.node(ref)
        node.kill()
        return node

    def pause(self, ref: NodeRef) -> ServerNode:
        """SIGSTOP node ``ref`` (a freeze: connections stay open, nothing answers)."""
        node = self.node(ref)
        node.pause()
        return node

    def resume(self, ref: NodeRef) -> ServerNode:
        """SIGCONT a paused node ``ref``."""
        node = self.node(ref)
        node.resume()
        return node

    def stop(self, ref: NodeRef) -> ServerNode:
        """Stop node ``ref`` gracefully (SIGTERM: a leader hands over first)."""
        node = self.node(ref)
        node.stop()
        return node

    def restart(self, ref: NodeRef, timeout: float = 60.0) -> ServerNode:
        """Start node ``ref`` again on its address and data directory (stopping it first
        if it runs); returns once it accepts connections.

        It rejoins on its own; :meth:`wait_for_leader` waits for a leader, :meth:`transfer`
        for it to have caught up enough to lead.
        """
        return self.node(ref).restart(timeout)

    def add_node(self, timeout: float = 60.0) -> ServerNode:
        """Start one more node that joins the cluster, and return it once it serves.

        It becomes a voter only while there are fewer voters than the cluster's size, else
        a standby; it is closed with the cluster.
        """
        node = self._new_node()
        self.nodes.append(node)
        return node.start(timeout)

    # -- clients ----------------------------------------------------------------------------

    def connect(self, database: str, **kwargs: Any) -> dqlitepy.Connection:
        """``dqlitepy.connect(database, servers=<every address>, ...)``; closed with the
        cluster.  The driver finds the leader, and follows it after a failover."""
        kwargs.setdefault("servers", self.addresses)
        kwargs.setdefault("ssl", self.ssl)
        conn = dqlitepy.connect(database, **kwargs)
        self._made.append(conn)
        return conn

    def client(self, **kwargs: Any) -> dqlitepy.Client:
        """An admin :class:`dqlitepy.Client` on every address, with the cluster key;
        closed with the cluster."""
        client = self._admin(**kwargs)
        self._made.append(client)
        return client

    def _admin(self, **kwargs: Any) -> dqlitepy.Client:
        kwargs.setdefault("ssl", self.ssl)
        kwargs.setdefault("cluster_key", self.cluster_key.encode())
        return dqlitepy.Client(self.addresses, **kwargs)

    def dqlite_url(self, database: str) -> str:
        """``dqlite://h1:p1,h2:p2,h3:p3/database``, the driver's URL (or, without the
        database, what ``DQLITEPY_SERVERS`` takes: ``",".join(cluster.addresses)``)."""
        return dqlite_url(self.addresses, database)

    def sqlalchemy_url(self, database: str) -> str:
        """``sqlite+dqlitepy://[h1:p1,h2:p2,h3:p3]/database``, for ``create_engine``."""
        return sqlalchemy_url(self.addresses, database)

    # -- reports ----------------------------------------------------------------------------

    def report(self, lines: int = LOG_TAIL) -> str:
        """Each node's state, the leader it names, and the end of its log."""
        answers = self._named_leaders(self.nodes)
        parts = []
        for node in self.nodes:
            named = answers.get(node.address, "(no answer)") if node.live else "(not asked)"
            parts.append(f"--- {node!r}, names leader {named}\n{tail(node.log(), lines)}")
        return "\n".join(parts)

    def __repr__(self) -> str:
        kind = "in-process" if self.in_process else "process"
        return f"<Cluster of {len(self.nodes)} {kind} nodes: {', '.join(self.addresses)}>"


def check_options(options: Sequence[str] | Mapping[str, Any] | None, in_process: bool) -> None:
    """Raise :class:`TypeError` unless ``options`` are of the kind the nodes take."""
    if options is None:
        return
    if in_process and not isinstance(options, Mapping):
        raise TypeError(
            "in-process nodes take options as dqlitepy.Node keyword arguments "
            f"(a mapping such as {{'max_connections': 8}}), not {options!r}"
        )
    if not in_process and (isinstance(options, (str, Mapping))):
        raise TypeError(
            "process nodes take options as dqlitepy server arguments "
            f"(a list such as ['--max-connections', '8']), not {options!r}"
        )
