"""Does the cluster hold my key, and which cluster is it?  A blocking check before a join.

A node about to join dials a member as a Raft peer would and verifies the member's AUTH
frame (and reads the cluster id it names), then hangs up without sending its own (the
member answers a stranger's HELLO, then closes: ``adapter.py``, "Strangers and key
checks").  Blocking sockets, on the caller's
thread: this runs once, before Raft starts.
"""

from __future__ import annotations

import contextlib
import socket
import ssl

from .addresses import split_address
from .link import connect_preamble
from .session import MAX_HANDSHAKE_FRAME, SecureSession, SessionEvent

__all__ = ["check_cluster_key"]


def check_cluster_key(
    address: str,
    cluster_key: bytes,
    *,
    node_id: int,
    own_address: str,
    timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
    cluster_id: str | None = None,
) -> str | None:
    """Check that the member at ``address`` holds ``cluster_key``, without joining anything.

    Dials ``address`` as a Raft peer does (handshake, CONNECT naming ``own_address``, HELLO)
    and verifies the member's AUTH frame, then hangs up without sending its own: the member
    learns nothing and adds nothing; this side learns whether its key is the cluster's, and
    the id of the member's cluster.

    Returns:
        The cluster id the member named (None: a member that knows none yet).

    Args:
        address: a member's address, as it names itself (the leader's, from LEADER).
        cluster_key: the key to check.
        node_id: this node's id, sent in CONNECT.
        own_address: this node's address, sent in CONNECT.
        timeout: for connecting and for each read.
        ssl_context: dial with TLS using this client context.
        cluster_id: this node's cluster id, if it knows one.

    Raises:
        FrameMacError: the member's AUTH frame failed its MAC: it holds another key.
        ClusterMismatch: the member holds the key but names another cluster id.
        RemoteSessionError: the member broke the session protocol.
        OSError: it could not be reached, timed out, or hung up first (no Raft there).
    """
    host, port = split_address(address)
    session = SecureSession(
        cluster_key,
        dialer=True,
        dialer_address=own_address,
        acceptor_address=address,
        cluster_id=cluster_id,
    )
    preamble = connect_preamble(node_id, own_address)
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout))
        if ssl_context is not None:
            sock = stack.enter_context(ssl_context.wrap_socket(sock, server_hostname=host))
        sock.sendall(preamble + b"".join(session.data_to_send()))
        while session.next_event() is not SessionEvent.AUTHENTICATED:
            data = sock.recv(MAX_HANDSHAKE_FRAME)
            if not data:
                raise ConnectionError(f"{address} hung up before proving the cluster key")
            session.receive_data(data)
    return session.peer_cluster_id
