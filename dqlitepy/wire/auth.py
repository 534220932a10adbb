"""Proof of the cluster key on a client connection: dqlitepy's extension of the protocol.

Theory of operation
===================

dqlite has no authentication of its own (``protocol.md`` §1.1: TLS, when used, wraps the
stream).  A dqlitepy node accepts the requests that change the cluster (ADD, ASSIGN, REMOVE,
TRANSFER) only from a connection it trusts: one that proved it holds the cluster key, or one
the node trusts for where it comes from (loopback, by configuration; see
``dqlitepy/server/auth.py``).  Anything else gets FAILURE 23 (``SQLITE_AUTH``) "not
authorized" and nothing changes.

The proof is a challenge-response on the connection itself, in two requests whose type codes
dqlite does not use (208 and 209; dqlite's are 0-19)::

    C -> S   AUTH_CHALLENGE (208)  u64 mechanism (1)                        1 word
    S -> C   CHALLENGE (208)       u64 mechanism (1), server nonce (32 B)    5 words
    C -> S   AUTH_PROOF (209)      u64 mechanism (1), client nonce (32 B),
                                   mac (32 B)                                9 words
    S -> C   EMPTY, or FAILURE 23 "not authorized: ..."

    mac = HMAC-SHA256(cluster key, b"dqlitepy admin v1\\0" | server nonce | client nonce)

- The node never sends anything unsolicited, and a client sends these requests only after a
  node answered a membership request with "not authorized" (or, for a node joining, to a
  dqlitepy leader), so go-dqlite, the Go shell and C dqlite servers never see them.  A dqlite
  1.11 server would leave a connection that sent one hanging (§2.4); ≥1.12 answers FAILURE 1005.
- The server nonce is fresh for each challenge and good for one proof on the connection that
  asked for it: a proof cannot be replayed, on this connection or another.  The client's own
  nonce means a node cannot make a client sign a value of the node's choosing alone.
- The label separates these MACs from every other use of the key (Raft frames, the key's
  fingerprint in the data directory).
- A proof authorizes its connection, and only until that connection closes.  Nothing is
  encrypted: without TLS, someone who can rewrite the traffic between a client and a node can
  also take over a connection after it proved the key.  The proof stops strangers who merely
  reach the port, which is the threat here.

Pure functions only: the callers draw the nonces (``secrets.token_bytes``).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

__all__ = [
    "ADMIN_MAC_LABEL",
    "MECHANISM_HMAC_SHA256",
    "NONCE_SIZE",
    "NOT_AUTHORIZED",
    "admin_proof",
    "check_admin_proof",
]

#: The only mechanism: HMAC-SHA256 keyed by the cluster key.
MECHANISM_HMAC_SHA256: Final = 1
#: Size of each side's nonce and of the MAC, in bytes.
NONCE_SIZE: Final = 32
#: Domain separation of the proof's MAC.
ADMIN_MAC_LABEL: Final = b"dqlitepy admin v1\x00"
#: The FAILURE code of a refused request (SQLITE_AUTH, as SQLite's authorizer uses it).
NOT_AUTHORIZED: Final = 23


def admin_proof(key: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """Return the MAC proving ``key`` for the challenge ``server_nonce``.

    Raises:
        ValueError: a nonce is not :data:`NONCE_SIZE` bytes.
    """
    if len(server_nonce) != NONCE_SIZE or len(client_nonce) != NONCE_SIZE:
        raise ValueError(f"each nonce must have {NONCE_SIZE} bytes")
    message = ADMIN_MAC_LABEL + bytes(server_nonce) + bytes(client_nonce)
    return hmac.new(key, message, hashlib.sha256).digest()


def check_admin_proof(key: bytes, server_nonce: bytes, client_nonce: bytes, mac: bytes) -> bool:
    """True if ``mac`` proves ``key`` for this challenge (compared in constant time)."""
    if len(client_nonce) != NONCE_SIZE or len(mac) != NONCE_SIZE:
        return False
    return hmac.compare_digest(admin_proof(key, server_nonce, client_nonce), bytes(mac))
