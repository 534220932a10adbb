"""Nodes in network namespaces of their own, joined by a bridge, and partitions between them.

Layout (``N`` is a /24 picked per run among those the root namespace has no route for)::

    root namespace: bridge <tag>br 10.77.N.1/24   <- the test's clients live here
        ├── veth <tag>h0 ── namespace <tag>n0: eth0 10.77.N.10
        ├── veth <tag>h1 ── namespace <tag>n1: eth0 10.77.N.11
        └── veth <tag>h2 ── namespace <tag>n2: eth0 10.77.N.12

Everything is created with ``ip`` from iproute2 (no iptables, nft or tc qdisc is needed: the
CI kernel lacks tc's drop action and Debian's image lacks iptables).  A partition between two
nodes is a policy-routing rule in *each* of the two namespaces, ``ip rule add from PEER iif
eth0 blackhole``: packets arriving from the peer are dropped silently on input, exactly like
``iptables -A INPUT -s PEER -j DROP`` (a connect() hangs, an established connection stops
hearing from the peer, nothing is refused).  The rule must come before the ``local`` table
lookup, so each namespace moves that lookup from priority 0 to :data:`_LOCAL_PREF`.  The
clients in the root namespace are never cut off: only node-to-node traffic is.

Every name carries a random tag, so concurrent runs on one machine do not collide, and
:meth:`Network.close` removes the namespaces and the bridge (the veth pairs go with them),
also after a failed :meth:`Network.create`.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import shutil
import subprocess
from collections.abc import Iterable
from types import TracebackType

__all__ = ["NETNS_SKIP_ENV", "Network", "NetworkError", "netns_problem"]

#: Set to 1 to skip (instead of fail) the tests that need network namespaces.
NETNS_SKIP_ENV = "DQLITEPY_NO_NETNS"
#: The rule priority of partitions, and where the ``local`` table lookup moves to.
_BLOCK_PREF = 50
_LOCAL_PREF = 100
_SUPERNET = ipaddress.IPv4Network("10.77.0.0/16")


class NetworkError(RuntimeError):
    """An ``ip`` command failed."""


def netns_problem() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (the tests create namespaces, veths and a bridge)"
    if shutil.which("ip") is None:
        return "the `ip` command (Debian package iproute2) is not installed"
    return None


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


class Network:
    """``size`` network namespaces on a bridge in the root namespace.

    Args:
        size: how many node namespaces.
    """

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self.tag = f"dqj{random.randrange(1 << 20):05x}"
        self.bridge = f"{self.tag}br"
        self.namespaces = [f"{self.tag}n{i}" for i in range(size)]
        self._subnet: ipaddress.IPv4Network | None = None
        self._made_namespaces: list[str] = []
        self._made_bridge = False
        #: The node pairs (i, j), i < j, that cannot reach each other now.
        self.blocked: set[tuple[int, int]] = set()

    # -- life cycle ------------------------------------------------------------------------------

    def create(self) -> Network:
        """Create the bridge, the namespaces and their links; undo everything on failure."""
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def _create(self) -> None:
        taken = _ip("-o", "link", "show") + _ip("netns", "list")
        if self.tag in taken:
            raise NetworkError(f"name tag {self.tag!r} already in use")
        self._subnet = self._free_subnet()
        _ip("link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, ns in enumerate(self.namespaces):
            _ip("netns", "add", ns)
            self._made_namespaces.append(ns)
            host = f"{self.tag}h{i}"
            _ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", host, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            # Partition rules must be consulted before the local table (see module doc).
            _ip("-n", ns, "rule", "add", "pref", str(_LOCAL_PREF), "lookup", "local")
            _ip("-n", ns, "rule", "del", "pref", "0")

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        routes = _ip("-4", "-o", "route", "show", "table", "all")
        addresses = _ip("-4", "-o", "addr", "show")
        used: set[ipaddress.IPv4Network] = set()
        for word in (routes + addresses).split():
            try:
                net = ipaddress.ip_network(word, strict=False)
            except ValueError:
                continue
            if isinstance(net, ipaddress.IPv4Network) and net.overlaps(_SUPERNET):
                used.add(net)
        candidates = list(_SUPERNET.subnets(new_prefix=24))[1:-1]
        random.shuffle(candidates)
        for subnet in candidates:
            if not any(subnet.overlaps(u) for u in used):
                return subnet
        raise NetworkError(f"no free /24 in {_SUPERNET}")

    def close(self) -> None:
        """Remove what :meth:`create` made.

        The veth pairs go first: deleting one end deletes its peer at once, whereas the
        kernel dismantles a deleted namespace (and the pairs in it) asynchronously.
        """
        errors: list[str] = []
        for i in range(self.size):
            try:
                _ip("link", "del", f"{self.tag}h{i}")
            except NetworkError as exc:
                if "Cannot find device" not in str(exc):
                    errors.append(str(exc))
        for ns in reversed(self._made_namespaces):
            try:
                _ip("netns", "del", ns)
            except NetworkError as exc:
                errors.append(str(exc))
        self._made_namespaces.clear()
        if self._made_bridge:
            try:
                _ip("link", "del", self.bridge)
            except NetworkError as exc:
                errors.append(str(exc))
            self._made_bridge = False
        self.blocked.clear()
        if errors:
            raise NetworkError("; ".join(errors))

    def __enter__(self) -> Network:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- addresses -------------------------------------------------------------------------------

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        assert self._subnet is not None, "network not created"
        return self._subnet

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (where the clients are)."""
        return str(self.subnet.network_address + 1)

    def address(self, i: int) -> str:
        """Node ``i``'s IP address."""
        return str(self.subnet.network_address + 10 + i)

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program in node ``i``'s namespace (it execs)."""
        return ["ip", "netns", "exec", self.namespaces[i]]

    # -- partitions ------------------------------------------------------------------------------

    def _rule(self, action: str, i: int, j: int) -> None:
        # Node i drops what arrives from node j.
        _ip(
            "-n", self.namespaces[i], "rule", action, "pref", str(_BLOCK_PREF),
            "from", self.address(j), "iif", "eth0", "blackhole",
        )  # fmt: skip

    def block(self, i: int, j: int) -> None:
        """Cut node ``i`` and node ``j`` off from each other (both directions)."""
        pair = (min(i, j), max(i, j))
        if pair in self.blocked:
            return
        self._rule("add", i, j)
        self._rule("add", j, i)
        self.blocked.add(pair)

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every node off from every node of the other groups."""
        sets = [set(g) for g in groups]
        for a, b in itertools.combinations(sets, 2):
            for i in a:
                for j in b:
                    self.block(i, j)

    def isolate(self, i: int) -> None:
        """Cut node ``i`` off from all other nodes."""
        self.partition([i], [j for j in range(self.size) if j != i])

    def heal(self) -> None:
        """Remove every partition."""
        for i, j in sorted(self.blocked):
            self._rule("del", i, j)
            self._rule("del", j, i)
        self.blocked.clear()
