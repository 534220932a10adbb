"""Who may change the cluster: the one place where a node judges a client connection.

ADD, ASSIGN, REMOVE and TRANSFER change who decides what is committed, so a node serves them
only to a connection it trusts (``docs/architecture.md``, "Operating safely").  Everything
else in the protocol stays open to any client, as in dqlite.  A connection is trusted when:

- it proved, on the connection itself, that it holds the cluster key (AUTH_CHALLENGE then
  AUTH_PROOF, ``dqlitepy/wire/auth.py``); or
- it presented a TLS client certificate that chains to a CA the node trusts for membership
  changes (``--tls-admin-ca``, by default the ``--tls-ca`` of mutual TLS; ``server/tls.py``
  checks the chain OpenSSL verified) and that has not expired; or
- it comes from this host and the node trusts local clients: ``trust_loopback`` — by default
  (``None``, "auto") exactly when the node listens on a loopback address or an abstract Unix
  socket, so that nothing outside the host can reach it anyway.  "From this host" is a
  loopback peer address for TCP, and the node's own user (or root) for a Unix socket, read
  with ``SO_PEERCRED``.  A loopback TCP peer may be any user of the host: on a shared host,
  turn loopback trust off and give the key (or a certificate) to those who administer the
  cluster.

The decision is taken per connection: :meth:`AdminPolicy.session` when the connection is
accepted (from what the node knows of the peer, :class:`Peer`), then
:meth:`AdminSession.prove` when it proves the key.  A client certificate is known only once
the TLS handshake has run, which happens on the connection's first read, after the session
exists: :attr:`Peer.certificate` asks the TLS layer then, when a membership request comes,
and the connection is then trusted for :attr:`Trust.CERTIFICATE`.  It is asked again at each
request, so a certificate that expires while its connection is open stops authorizing.

Refusals raise :class:`NotAuthorized`; the gateway answers FAILURE 23 (``SQLITE_AUTH``, the
code SQLite's authorizer uses) with its message, and nothing changes.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..wire import MECHANISM_HMAC_SHA256, NONCE_SIZE, check_admin_proof

__all__ = [
    "AdminPolicy",
    "AdminSession",
    "ClientCertificate",
    "NotAuthorized",
    "Peer",
    "Trust",
    "is_loopback",
    "listens_locally",
]

log = logging.getLogger("dqlitepy.server")

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class NotAuthorized(Exception):
    """The connection may not do what it asked; the message goes back in a FAILURE."""


class Trust(enum.Enum):
    """Why a connection may change the cluster (``NONE``: it may not)."""

    NONE = "none"
    #: A client on this host, trusted by the node's configuration.
    LOCAL = "local client"
    #: It proved the cluster key on this connection.
    CLUSTER_KEY = "cluster key"
    #: It presented a TLS client certificate the node trusts for membership changes.
    CERTIFICATE = "client certificate"


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """The TLS client certificate a connection presented, as its handshake verified it.

    Attributes:
        subject: the certificate's subject (``CN=admin,O=ops``), for logs.
        trusted: it chains to a CA the node trusts for membership changes, and has
            not expired.
        why_not: when not trusted, why (for the log and the refusal).
    """

    subject: str
    trusted: bool
    why_not: str = ""


def _no_certificate() -> ClientCertificate | None:
    return None


@dataclass(frozen=True, slots=True)
class Peer:
    """What a node knows about the other end of a client connection.

    Attributes:
        name: how logs name the peer (``host:port``, or the Unix peer's pid and uid).
        local: the peer runs on this host: a loopback TCP address, or a Unix socket
            peer running as the node's user or as root.
        certificate: the client certificate the peer presented (None: none), asked
            for when needed: the TLS handshake runs after the peer is described
            (:meth:`dqlitepy.server.tls.NodeTLS.client_certificate`).
    """

    name: str
    local: bool
    certificate: Callable[[], ClientCertificate | None] = _no_certificate

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        """Describe the peer of an accepted socket (an unknown peer is not local)."""
        try:
            if sock.family == socket.AF_UNIX:
                return cls._unix(sock)
            host, port = sock.getpeername()[:2]
        except (OSError, ValueError):
            return cls("unknown peer", False)
        return cls(f"{host}:{port}", is_loopback(host))

    @classmethod
    def _unix(cls, sock: socket.socket) -> Peer:
        option = getattr(socket, "SO_PEERCRED", None)
        if option is None:
            return cls("unix peer", False)
        pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size))
        return cls(f"unix peer pid {pid} uid {uid}", uid in (os.geteuid(), 0))


def is_loopback(host: str) -> bool:
    """True if ``host`` is a loopback IP address (127.0.0.0/8, ::1, ::ffff:127.x.y.z)."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def listens_locally(listener: socket.socket) -> bool:
    """True if only this host can reach ``listener``: bound to loopback, or a Unix socket."""
    if listener.family == socket.AF_UNIX:
        return True
    with contextlib.suppress(OSError):
        return is_loopback(str(listener.getsockname()[0]))
    return False


class AdminPolicy:
    """A node's rule for membership requests.

    Args:
        cluster_key: the key a connection may prove (None: no connection can).
        trust_loopback: trust clients on this host without a proof.
    """

    def __init__(self, cluster_key: bytes | None, *, trust_loopback: bool) -> None:
        self._key = cluster_key
        self.trust_loopback = trust_loopback

    def session(self, peer: Peer) -> AdminSession:
        """The authorization state of a new connection from ``peer``."""
        trust = Trust.LOCAL if self.trust_loopback and peer.local else Trust.NONE
        return AdminSession(self._key, peer, trust)


class AdminSession:
    """One connection's authorization: what it is trusted for, and its pending challenge.

    Owned by the connection's gateway (one thread); never shared.
    """

    def __init__(self, key: bytes | None, peer: Peer, trust: Trust = Trust.NONE) -> None:
        self._key = key
        self.peer = peer
        self._trust = trust
        self._nonce: bytes | None = None
        self._refused = False

    @classmethod
    def refusing(cls) -> AdminSession:
        """A session that trusts nothing and can prove nothing."""
        return cls(None, Peer("unknown peer", False))

    @property
    def trust(self) -> Trust:
        """Why this connection may change the cluster (``Trust.NONE``: it may not)."""
        if self._trust is Trust.NONE:
            certificate = self.peer.certificate()
            if certificate is not None and certificate.trusted:
                return Trust.CERTIFICATE
        return self._trust

    def require(self, what: str) -> None:
        """Refuse ``what`` (a request's name) unless the connection is trusted.

        A request a client certificate authorizes is logged with its subject: who
        changed the cluster, for the operator who wonders later.

        Raises:
            NotAuthorized: the connection neither proved the key nor is trusted.
        """
        if self._trust is not Trust.NONE:
            return
        certificate = self.peer.certificate()
        if certificate is not None and certificate.trusted:
            log.info(
                "%s from %s authorized by its client certificate %s",
                what,
                self.peer.name,
                certificate.subject,
            )
            return
        reason = "not authorized"
        if certificate is not None:
            reason = f"not authorized: {certificate.why_not}"
        if not self._refused:  # once per connection: a stranger cannot flood the log
            shown = "" if certificate is None else f" (client certificate {certificate.subject})"
            log.warning("refused %s from %s%s: %s", what, self.peer.name, shown, reason)
            self._refused = True
        raise NotAuthorized(reason)

    def challenge(self, mechanism: int) -> bytes:
        """Return a fresh nonce for one proof; it replaces any earlier one.

        Raises:
            NotAuthorized: the node has no key, or ``mechanism`` is unknown.
        """
        self._nonce = None
        if mechanism != MECHANISM_HMAC_SHA256:
            raise NotAuthorized(f"not authorized: unknown authentication mechanism {mechanism}")
        if self._key is None:
            raise NotAuthorized("not authorized: this node has no cluster key")
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        return self._nonce

    def prove(self, mechanism: int, client_nonce: bytes, mac: bytes) -> None:
        """Check a proof of the key against the pending challenge, which it uses up.

        Raises:
            NotAuthorized: no challenge is pending, or the proof is wrong; the
                connection's trust does not change.
        """
        nonce, self._nonce = self._nonce, None
        if nonce is None:
            raise NotAuthorized("not authorized: no challenge to answer")
        key = self._key
        if (
            key is None
            or mechanism != MECHANISM_HMAC_SHA256
            or not check_admin_proof(key, nonce, client_nonce, mac)
        ):
            log.warning("%s failed to prove the cluster key", self.peer.name)
            raise NotAuthorized("not authorized: wrong cluster key")
        self._trust = Trust.CLUSTER_KEY
