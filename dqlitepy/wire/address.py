"""Node addresses: the one parser of ``host:port``, ``[v6]:port`` and ``@name``.

A dqlite node is reached, listens, and is named to Raft at one address
(``protocol.md`` §1.1): TCP as ``host:port`` (an IPv6 host in brackets,
``[::1]:9001``), or an abstract Unix socket as ``@name``, as in go-dqlite.
Client, server and Raft transport all parse with :func:`parse_node_address`,
so every part accepts exactly the same spellings; turning the result into a
socket address is the caller's business (this layer does no I/O).
"""

from __future__ import annotations

from typing import Final

from .record import record

__all__ = ["NodeAddress", "parse_node_address"]

MAX_PORT: Final = 65535
#: Longer is no address anyone means (a DNS name is at most 253 characters).
MAX_ADDRESS_LENGTH: Final = 255


@record
class NodeAddress:
    """A parsed node address: TCP ``host``/``port``, or an abstract socket ``name``."""

    host: str | None  # without IPv6 brackets; None for an abstract socket
    port: int  # 0 for an abstract socket
    name: str | None = None  # the abstract socket's name (after the ``@``)
    ipv6: bool = False  # the host was given in brackets

    @property
    def is_abstract(self) -> bool:
        """True for ``@name``."""
        return self.name is not None


def parse_node_address(address: str) -> NodeAddress:
    """Parse ``host:port``, ``[v6]:port`` or ``@name``.

    The port is 0 to 65535 (0 only makes sense to listen on: callers that
    dial refuse it).

    Raises:
        ValueError: not a string of that form: no name after ``@``, no host,
            no port, a port out of range or not in ASCII digits.
    """
    if not isinstance(address, str) or not 0 < len(address) <= MAX_ADDRESS_LENGTH:
        raise ValueError(f"invalid node address {address!r}: expected host:port or @name")
    if address.startswith("@"):
        if len(address) < 2:
            raise ValueError(f"invalid abstract socket address {address!r}")
        return NodeAddress(None, 0, name=address[1:])
    host, sep, port = address.rpartition(":")
    # isascii(): str.isdigit() also accepts digits int() refuses, such as "²".
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > MAX_PORT:
        raise ValueError(f"invalid node address {address!r}: expected host:port or @name")
    if host.startswith("[") and host.endswith("]"):
        return NodeAddress(host[1:-1], int(port), ipv6=True)
    return NodeAddress(host, int(port))
