"""The address a node listens on, and the one it is known by (``docs/server.md``, "Advertise").

A node binds its listening address (``-a``), but everyone else must dial it: its
peers' Raft, a node joining through it, and clients redirected to it by LEADER.
A wildcard bind (``0.0.0.0``, ``[::]``) names no address anyone can dial, and a
node behind NAT is reached at an address it does not have.  Such a node is
given an *advertised* address (``--advertise``), which is then its name
everywhere but the bind: its Raft identity (the address in the Raft
configuration, which peers dial and which the Raft handshake authenticates),
what it registers when it joins, what ``.cluster`` and LEADER report.

:func:`check_addresses` refuses the combinations that cannot work, before the
node touches anything: a replicated node on a wildcard without an advertised
address (its peers would dial ``0.0.0.0``, that is themselves), and an
advertised address nobody can dial (a wildcard, port 0, an abstract socket).
"""

from __future__ import annotations

import ipaddress

from ..wire.address import NodeAddress, parse_node_address
from .datadir import StartupRefused

__all__ = ["AddressRefused", "check_addresses", "is_wildcard"]


class AddressRefused(StartupRefused, ValueError):
    """The node's listening and advertised addresses cannot work together.

    A :class:`ValueError` for the embedding API (a bad argument) and a
    :class:`StartupRefused` for the command line (an operator's mistake: exit 2).
    """


def is_wildcard(address: NodeAddress) -> bool:
    """True for a TCP address that means "every interface": no one can dial it."""
    if address.host is None:
        return False
    try:
        return ipaddress.ip_address(address.host).is_unspecified
    except ValueError:
        return False  # a host name


def check_addresses(listen: str, advertise: str | None, *, replicated: bool) -> None:
    """Refuse a listening / advertised pair that other nodes or clients could not use.

    Args:
        listen: the address the node binds (already known to parse).
        advertise: the address it is known by, or None (then ``listen`` is).
        replicated: the node is (or joins) a replicated cluster.

    Raises:
        AddressRefused: with the reason and what to give instead.
    """
    bound = parse_node_address(listen)
    if advertise is None:
        if replicated and is_wildcard(bound):
            raise AddressRefused(
                f"{bound.host} cannot be dialled; give --advertise HOST:PORT (advertise=), "
                f"the address the other nodes and clients reach this node at, or listen "
                f"on that address instead of {listen}"
            )
        return
    try:
        advertised = parse_node_address(advertise)
    except ValueError as exc:
        raise AddressRefused(f"--advertise: {exc}") from None
    if bound.is_abstract or advertised.is_abstract:
        # An abstract socket is reached by its name on this host only: nothing to translate.
        raise AddressRefused(
            f"--advertise {advertise} with -a {listen}: only a node listening on TCP "
            "can advertise, and only a TCP host:port"
        )
    if is_wildcard(advertised):
        raise AddressRefused(
            f"--advertise {advertise}: {advertised.host} cannot be dialled; advertise an "
            "address of this machine the other nodes and clients can reach"
        )
    if advertised.port == 0:
        # With -a HOST:0 the bound port is known only once bound: the advertised
        # port must be the one the others dial (a NAT or proxy forwards it here).
        raise AddressRefused(
            f"--advertise {advertise}: port 0 cannot be dialled; give the port the other "
            "nodes and clients reach this node at"
        )
