"""Node addresses as sockets: :func:`parse_address` and :func:`address_host`.

The spelling of an address is parsed in one place, :mod:`dqlitepy.wire.address`;
this module turns it into a socket family and address.  The driver checks the
addresses it is given before dialing them, and the server uses the same
function for the address it listens on (port 0 there asks for any free port).
"""

from __future__ import annotations

import socket

from ..wire.address import parse_node_address

__all__ = ["address_host", "parse_address"]


def parse_address(address: str) -> tuple[int, str | tuple[str, int]]:
    """Split a node address into a socket family and a socket address.

    ``@name`` is an abstract Unix socket (``"\\0name"``); ``host:port`` is TCP
    over IPv4 or a host name, ``[v6]:port`` TCP over IPv6.  The port is 0 to
    65535 (0 only makes sense to listen on).

    Raises:
        ValueError: the address has no name after ``@``, no host, or no usable port.
    """
    parsed = parse_node_address(address)
    if parsed.name is not None:
        return socket.AF_UNIX, "\0" + parsed.name
    assert parsed.host is not None
    return (socket.AF_INET6 if parsed.ipv6 else socket.AF_INET), (parsed.host, parsed.port)


def address_host(address: str) -> str | None:
    """The host of a TCP node address (without IPv6 brackets); None for ``@name``.

    What TLS checks a certificate against, and what tells a loopback address.

    Raises:
        ValueError: ``address`` is not a node address (see :func:`parse_address`).
    """
    return parse_node_address(address).host
