"""Raft peers are named by their dqlite address: parsing ``host:port`` and PySyncObj's node.

PySyncObj names a node by an opaque id; here that id is the node's ordinary dqlite address
("host:port", ``"[v6]:port"`` too), the one its CONNECT requests carry (``protocol.md`` §2.2)
and the one peers dial.  :func:`split_address` checks such an address (with the one parser,
:mod:`dqlitepy.wire.address`) for the transport; :class:`RaftNode` is a PySyncObj
node whose id was checked to be one.
"""

from __future__ import annotations

from pysyncobj.node import Node

from ...wire.address import parse_node_address

__all__ = ["RaftNode", "split_address"]

def split_address(address: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[v6]:port"`` too) into host and port.

    Args:
        address: the address.
        allow_port_zero: accept port 0 (a listener asking for any free port).

    Raises:
        ValueError: not a ``host:port`` string with a port in 1..65535.
    """
    try:
        parsed = parse_node_address(address)
    except ValueError:
        parsed = None
    lowest = 0 if allow_port_zero else 1
    if parsed is None or parsed.host is None or parsed.port < lowest:
        raise ValueError(f"address {address!r} is not host:port")
    return parsed.host, parsed.port


class RaftNode(Node):  # type: ignore[misc]  # PySyncObj is untyped
    """A Raft peer; as PySyncObj wants, its id is its dqlite address ("host:port").

    The transport accepts any PySyncObj node whose id is such an address; this class only
    checks the address up front and names its parts.
    """

    def __init__(self, address: str) -> None:
        host, port = split_address(address)
        super().__init__(address)
        self._host = host
        self._port = port

    @property
    def address(self) -> str:
        """The node's dqlite address, also its PySyncObj id."""
        address: str = self.id
        return address

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port
