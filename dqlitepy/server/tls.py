"""TLS for a node: its listener, and its own connections to other nodes.

Theory of operation
===================

dqlite knows nothing of TLS (``protocol.md`` §1.1): go-dqlite's app wraps the
node's listener and its dial function (``app.WithTLS(listen, dial)``).  A
dqlitepy node does the same on its one address, so client requests *and* Raft
traffic (which arrives on that address after a CONNECT request) are encrypted:

* **The listener** is wrapped with the server context (:meth:`NodeTLS.wrap_listener`),
  so ``accept()`` returns TLS sockets whose handshake has not run yet.  It runs
  on the connection's own thread, inside its first ``recv`` (OpenSSL's implicit
  handshake), so a slow or silent peer never holds up the accept loop.  A peer
  that speaks the dqlite protocol in plain text (its first byte is not a TLS
  handshake record) is told so: a client gets a FAILURE (``SQLITE_AUTH``,
  :data:`PLAINTEXT_REFUSED_CODE`) naming the problem instead of a bare reset,
  and the connection is closed.
* **Outgoing connections** of the node (Raft links to peers, ``--join``'s
  requests to the leader, the cluster-key check before joining) use the client
  context (:attr:`NodeTLS.client`), presenting the node's certificate.
* **The cluster key stays in force** inside TLS: Raft frames are still
  HMAC-authenticated (``replication/transport.py``).  TLS adds confidentiality
  and, with a CA, a second and independent proof of membership.

Who is trusted (``docs/server.md``, "TLS"):

* ``--tls-ca FILE`` (mutual TLS): every connection, from a client or from a
  peer, must present a certificate the CA signed; nodes verify each other's
  certificates against the same CA.  This is go-dqlite's ``SimpleTLSConfig``
  (``ClientAuth: RequireAndVerifyClientCert``): one address serves clients and
  peers alike, and TLS is over before the first request says which one is
  talking.
* Without it, the node asks clients for no certificate; it verifies its peers'
  certificates against its own certificate file, which suits the usual dqlite
  set-up of one self-signed certificate shared by the whole cluster.

Who may change the cluster with a certificate (``server/auth.py``): a client
whose certificate chains to an *admin CA* may send ADD, ASSIGN, REMOVE and
TRANSFER without proving the cluster key.  The admin CA is ``--tls-admin-ca``,
or else the ``--tls-ca`` of mutual TLS, whose certificates already make a node a
member (go-dqlite trusts them for everything); without either, no certificate
authorizes anything.

* ``--tls-admin-ca`` without ``--tls-ca``: the node asks every client for a
  certificate, optionally.  A client without one connects as before (plain SQL
  needs none); one whose certificate does not verify (another CA, self-signed,
  expired) is refused at the handshake, with an alert that says why, rather
  than served as a stranger.  Peers present their node certificate when asked,
  so the listener also trusts what they are verified against (the certificate
  file).
* With both: a connection may present a certificate of either CA; only one of
  the admin CA authorizes membership changes.

Which CA signed a certificate is read from the chain OpenSSL verified
(:meth:`NodeTLS.client_certificate`), compared byte for byte with the admin CA
file's certificates, not from names the certificate claims.  Such a node hands
out no TLS session tickets: a resumed session has no verified chain, and every
connection's certificate must be checked.

Host names are not checked between nodes: the CA (or the shared certificate)
is what makes a peer a member, as with a cluster certificate carrying one name
for every node.  TLS 1.2 is the oldest version accepted (as go-dqlite) and
renegotiation is off.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from ..wire import (
    NEED_DATA,
    ConnectRequest,
    ErrorCode,
    FailureResponse,
    Handshake,
    ProtocolError,
    ServerConnection,
)
from ..wire.address import parse_node_address
from .auth import ClientCertificate

__all__ = [
    "PLAINTEXT_REFUSED_CODE",
    "NodeTLS",
    "is_loopback",
    "is_tls_mismatch",
]

log = logging.getLogger("dqlitepy.server")

#: The FAILURE code a plain-text client gets from a TLS node (SQLITE_AUTH).
PLAINTEXT_REFUSED_CODE: Final = ErrorCode.SQLITE_AUTH
_PLAINTEXT_REFUSED_MESSAGE: Final = (
    "this dqlite node requires TLS: connect with TLS (dqlitepy: ssl=... or ?tls=1 in the URL; "
    "the dqlite shell: --cert and --key)"
)
# The first byte of a TLS record carrying a handshake message (a ClientHello).
_TLS_HANDSHAKE_RECORD: Final = 0x16
# How long a plain-text peer may take to send its handshake and first request, and
# how much of it is read: enough for any request worth answering with a FAILURE.
_PLAINTEXT_TIMEOUT: Final = 2.0
_PLAINTEXT_LIMIT: Final = 64 * 1024
_LOG_INTERVAL: Final = 60.0
# _ssl.ENCODING_DER, the argument of _ssl.Certificate.public_bytes (not re-exported by ssl).
_ENCODING_DER: Final = 2


def is_loopback(address: str) -> bool:
    """True if ``address`` (``host:port`` or ``@name``) is reachable only from this machine.

    An abstract Unix socket (``@name``) and the loopback addresses count; a host
    name counts only if it is ``localhost``.
    """
    try:
        host = parse_node_address(address).host
    except ValueError:
        return False
    if host is None or host == "localhost":  # None: an abstract socket
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_tls_mismatch(exc: BaseException) -> bool:
    """True for a TLS failure that trying again cannot cure.

    A certificate either side refused, an alert, a peer that does not speak
    TLS; not an EOF or a reset, which a restarting or busy node gives too.
    """
    return isinstance(exc, ssl.SSLError) and not isinstance(
        exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
    )


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # A renegotiation would make a write wait for a read on the Raft links.
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context


class _RefusedPlaintext(ConnectionError):
    """A peer spoke the dqlite protocol in plain text to a TLS node (it has been told)."""


class _ServerTLSSocket(ssl.SSLSocket):
    """An accepted connection of a TLS node (the server context's ``sslsocket_class``).

    The node's connection thread uses it as a plain socket.  Two things differ:
    the first ``recv`` checks that the peer speaks TLS at all (see the module
    docstring), and ``recv(n, MSG_DONTWAIT)``, which ``ssl.SSLSocket`` refuses,
    reads without blocking (the node polls for an INTERRUPT that way while a
    statement runs).  Only the connection's own thread reads it.
    """

    _checked_tls = False

    def do_handshake(self, block: bool = False) -> None:
        self._check_tls()
        try:
            super().do_handshake(block)
        except ssl.SSLCertVerificationError as exc:
            self._refused_certificate(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self._check_tls()
        if not flags & socket.MSG_DONTWAIT:
            try:
                return super().recv(buflen, flags)
            except ssl.SSLCertVerificationError as exc:  # the first recv runs the handshake
                self._refused_certificate(exc)
                raise
        timeout = self.gettimeout()
        self.settimeout(0.0)
        try:
            return super().recv(buflen, flags & ~socket.MSG_DONTWAIT)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError(errno.EAGAIN, "no TLS application data available") from None
        except ssl.SSLCertVerificationError as exc:  # the handshake runs in these reads too
            self._refused_certificate(exc)
            raise
        finally:
            self.settimeout(timeout)

    def _check_tls(self) -> None:
        if self._checked_tls:
            return
        self._checked_tls = True
        if self.version() is not None:
            return  # the handshake is over: the peer spoke TLS
        # Looked at below TLS (the raw socket's first byte), before OpenSSL reads it.
        first = socket.socket.recv(self, 1, socket.MSG_PEEK)
        if first and first[0] != _TLS_HANDSHAKE_RECORD:
            _refuse_plaintext(self)
            raise _RefusedPlaintext("a plain-text dqlite peer on a TLS node")

    def _refused_certificate(self, exc: ssl.SSLCertVerificationError) -> None:
        # The client was told by an alert; the operator hears of it here.
        peer = "?"
        with contextlib.suppress(OSError, TypeError, ValueError):
            host, port = self.getpeername()[:2]
            peer = f"{host}:{port}"
        _log_limited(
            logging.INFO,
            "certificate",
            f"refused the TLS client certificate of {peer}: {exc.verify_message}",
        )


_last_logged: dict[str, float] = {}
_log_lock = threading.Lock()


def _refuse_plaintext(sock: socket.socket) -> None:
    """Answer a plain-text dqlite peer, below TLS: a FAILURE to a client, nothing to Raft."""
    conn = ServerConnection(_PLAINTEXT_LIMIT)
    event: Any = NEED_DATA
    deadline = time.monotonic() + _PLAINTEXT_TIMEOUT
    peer = "?"
    with contextlib.suppress(OSError):
        peer = str(sock.getpeername())
    try:
        while event is NEED_DATA or isinstance(event, Handshake):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            sock.settimeout(left)
            data = socket.socket.recv(sock, 4096)
            if not data:
                return
            conn.receive_data(data)
            event = conn.next_event()
            while isinstance(event, Handshake):
                event = conn.next_event()
        if isinstance(event, ConnectRequest):
            _log_limited(
                logging.WARNING,
                "raft",
                f"refused a plain-text raft connection from node {event.node_id:x} "
                f"({event.address}, {peer}): this node requires TLS; give every node "
                "--tls-cert and --tls-key",
            )
            return
        _log_limited(
            logging.INFO,
            "client",
            f"refused a plain-text client connection from {peer}: this node requires TLS",
        )
        socket.socket.sendall(
            sock, conn.send(FailureResponse(PLAINTEXT_REFUSED_CODE, _PLAINTEXT_REFUSED_MESSAGE))
        )
        # Closing with unread bytes would reset the connection and could destroy the
        # answer before the client reads it: stop sending, then take what it still sends.
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.2)
        with contextlib.suppress(OSError):
            while socket.socket.recv(sock, 4096):
                pass
    except (OSError, ProtocolError) as exc:
        log.debug("dropping a plain-text connection from %s: %s", peer, exc)


def _log_limited(level: int, kind: str, text: str) -> None:
    # A misconfigured peer redials every few hundred milliseconds, a client retries
    # as often: at ``level`` once a minute per kind, the rest at debug level.
    with _log_lock:
        now = time.monotonic()
        if now - _last_logged.get(kind, -_LOG_INTERVAL) < _LOG_INTERVAL:
            level = logging.DEBUG
        else:
            _last_logged[kind] = now
    log.log(level, "%s", text)


_SHORT_NAMES: Final = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "emailAddress": "emailAddress",
}


def _subject(cert: dict[str, Any]) -> str:
    """``CN=admin,O=ops`` from ``getpeercert()``; characters a log line cannot hold are escaped."""
    parts = [
        f"{_SHORT_NAMES.get(name, name)}={value}"
        for rdn in cert.get("subject", ())
        for name, value in rdn
    ]
    text = ",".join(parts) or "(no subject)"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _verified_chain(sock: ssl.SSLSocket) -> list[bytes]:
    """The peer's certificate chain as OpenSSL verified it (DER, leaf first); [] if unknown."""
    public = getattr(sock, "get_verified_chain", None)
    if public is not None:  # Python 3.13: DER bytes
        return list(public() or ())
    # Python 3.10 to 3.12 have the same method on the socket's OpenSSL object only.
    private = getattr(getattr(sock, "_sslobj", None), "get_verified_chain", None)
    if private is None:
        return []
    return [cert.public_bytes(_ENCODING_DER) for cert in private() or ()]


def _certificates(path: str | os.PathLike[str]) -> frozenset[bytes]:
    """The certificates of a PEM file, DER-encoded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(path)
    return frozenset(context.get_ca_certs(binary_form=True))


@dataclass(frozen=True)
class NodeTLS:
    """A node's TLS settings: the context its listener serves with, the one it dials with.

    Build it with :meth:`from_files`.

    Attributes:
        server: the listener's context (with ``mutual``, it requires a client certificate).
        client: the node's own outgoing connections: it presents the node's
            certificate and verifies the peer's against the CA (or the node's
            certificate file), without checking host names.
        mutual: True when every connection must present a certificate signed by the CA.
        admin_cas: the certificates (DER) of the CAs whose client certificates may
            change the cluster; empty: no certificate may.
    """

    server: ssl.SSLContext
    client: ssl.SSLContext
    mutual: bool
    admin_cas: frozenset[bytes] = frozenset()

    @classmethod
    def from_files(
        cls,
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        ca: str | os.PathLike[str] | None = None,
        admin_ca: str | os.PathLike[str] | None = None,
    ) -> NodeTLS:
        """Load a node's certificate and key, and optionally the CAs it trusts for clients.

        Args:
            cert: the node's certificate (PEM; the chain may follow it).
            key: its private key (PEM, unencrypted).
            ca: the CA certificates every peer's and client's certificate must
                chain to (mutual TLS); None: clients need no certificate, and
                peers must present one that ``cert`` itself vouches for.
            admin_ca: the CA certificates a client certificate must chain to for
                the client to change the cluster; None: ``ca`` (None too: no
                certificate authorizes that).  Without ``ca``, clients are asked
                for a certificate but need none.

        Raises:
            ValueError: a file cannot be read or does not hold what it should.
        """
        admin = admin_ca if admin_ca is not None else ca
        try:
            server = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
            server.load_cert_chain(cert, key)
            client = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
            client.load_cert_chain(cert, key)
            client.check_hostname = False
            client.verify_mode = ssl.CERT_REQUIRED
            client.load_verify_locations(ca if ca is not None else cert)
            if ca is not None:
                server.verify_mode = ssl.CERT_REQUIRED
                server.load_verify_locations(ca)
            if admin_ca is not None:
                server.load_verify_locations(admin_ca)
                if ca is None:
                    server.verify_mode = ssl.CERT_OPTIONAL
                    # Peers, asked too, present their node certificate.
                    server.load_verify_locations(cert)
            admin_cas = _certificates(admin) if admin is not None else frozenset[bytes]()
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(os.fspath(f) for f in (cert, key, ca, admin_ca) if f is not None)
            raise ValueError(f"cannot load the TLS files ({files}): {exc}") from exc
        if admin_cas:
            # A resumed session has no verified chain to read the admin CA from.
            server.num_tickets = 0
            server.options |= ssl.OP_NO_TICKET
        server.sslsocket_class = _ServerTLSSocket
        return cls(server, client, ca is not None, admin_cas)

    def client_certificate(self, sock: socket.socket) -> ClientCertificate | None:
        """The certificate the client of ``sock`` presented, and whether it authorizes.

        Call it once the handshake has run (after a request was read).  None: the
        client presented none (or ``sock`` is not a TLS connection).
        """
        if not isinstance(sock, ssl.SSLSocket):
            return None
        cert = sock.getpeercert()
        if not cert:  # none presented, or the handshake has not run
            return None
        subject = _subject(cert)
        if not self.admin_cas:
            why = "no client certificate authorizes membership changes on this node"
            return ClientCertificate(subject, False, why)
        chain = _verified_chain(sock)
        if not chain:
            why = "the node cannot tell which CA signed this client certificate"
            return ClientCertificate(subject, False, why)
        if self.admin_cas.isdisjoint(chain):
            why = "this client certificate is not signed by the admin CA"
            return ClientCertificate(subject, False, why)
        expires = str(cert.get("notAfter", ""))
        try:
            expired = bool(expires) and ssl.cert_time_to_seconds(expires) < time.time()
        except ValueError:  # OpenSSL found it valid at the handshake; keep to that
            expired = False
        if expired:
            return ClientCertificate(subject, False, f"the client certificate expired ({expires})")
        return ClientCertificate(subject, True)

    def wrap_listener(self, listener: socket.socket) -> socket.socket:
        """Wrap a bound, listening socket: ``accept()`` then returns TLS sockets.

        Their handshake runs on the first read (on the connection's thread).
        """
        return self.server.wrap_socket(listener, server_side=True, do_handshake_on_connect=False)

    def dial(self, sock: socket.socket, host: str) -> ssl.SSLSocket:
        """Run the client side of the handshake on a connected blocking socket."""
        return self.client.wrap_socket(sock, server_hostname=host or None)
