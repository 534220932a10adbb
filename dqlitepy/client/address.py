"""Node addresses: the one parser of ``host:port``, ``[v6]:port`` and ``@name``.

A dqlite node is reached, and listens, at one address (``protocol.md`` §1.1):
TCP as ``host:port`` (an IPv6 host in brackets, ``[::1]:9001``), or an
abstract Unix socket as ``@name``, as in go-dqlite.  The driver checks the
addresses it is given with :func:`parse_address` before dialing them, and the
server may use the same function for the address it listens on (port 0 there
asks for any free port), so that both sides accept exactly the same spellings.
"""

from __future__ import annotations

import socket

__all__ = ["address_host", "parse_address"]

_MAX_PORT = 65535


def parse_address(address: str) -> tuple[int, str | tuple[str, int]]:
    """Split a node address into a socket family and a socket address.

    ``@name`` is an abstract Unix socket (``"\\0name"``); ``host:port`` is TCP
    over IPv4 or a host name, ``[v6]:port`` TCP over IPv6.  The port is 0 to
    65535 (0 only makes sense to listen on).

    Raises:
        ValueError: the address has no name after ``@``, no host, or no usable port.
    """
    if address.startswith("@"):
        if len(address) < 2:
            raise ValueError(f"invalid abstract socket address {address!r}")
        return socket.AF_UNIX, "\0" + address[1:]
    host, sep, port = address.rpartition(":")
    # isascii(): str.isdigit() also accepts digits int() refuses, such as "²".
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > _MAX_PORT:
        raise ValueError(f"invalid node address {address!r}: expected host:port or @name")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], int(port))
    return socket.AF_INET, (host, int(port))


def address_host(address: str) -> str | None:
    """The host of a TCP node address (without IPv6 brackets); None for ``@name``.

    What TLS checks a certificate against, and what tells a loopback address.

    Raises:
        ValueError: ``address`` is not a node address (see :func:`parse_address`).
    """
    _family, sockaddr = parse_address(address)
    return sockaddr[0] if isinstance(sockaddr, tuple) else None
