"""Who may change the cluster, and who becomes a voter: the server's rules without a cluster.

``dqlitepy/server/auth.py`` judges each client connection (loopback trust, the proof of the
key); ``dqlitepy/server/membership.py`` promotes a node to voter only once it has caught up.
The multi-process behaviour is in ``tests/server/test_membership_auth.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from dqlitepy.replication.replicator import NotLeader, PeerHealth
from dqlitepy.server.auth import (
    AdminPolicy,
    AdminSession,
    ClientCertificate,
    NotAuthorized,
    Peer,
    Trust,
    is_loopback,
    listens_locally,
)
from dqlitepy.server.membership import (
    MAX_LAG,
    ONLINE_WITHIN,
    NotCaughtUp,
    caught_up,
    promote_to_voter,
)
from dqlitepy.wire import NodeRole, admin_proof

KEY = b"test-cluster-key-0123456789abcdef"


# -- peers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("192.0.2.2", False),
        ("0.0.0.0", False),
        ("::", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("localhost", False),  # names are never trusted: only what the socket says
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        yield listener, client, accepted
    finally:
        for sock in (listener, client, accepted):
            sock.close()


def test_a_loopback_tcp_peer_is_local(
    tcp_pair: tuple[socket.socket, socket.socket, socket.socket],
) -> None:
    listener, client, accepted = tcp_pair
    peer = Peer.of(accepted)
    assert peer.local
    assert peer.name == f"127.0.0.1:{client.getsockname()[1]}"
    assert listens_locally(listener)


def test_a_listener_on_every_address_is_not_local() -> None:
    with socket.create_server(("0.0.0.0", 0)) as listener:
        assert not listens_locally(listener)


def test_a_unix_peer_of_the_same_user_is_local() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        peer = Peer.of(a)
        assert peer.local
        assert f"uid {os.geteuid()}" in peer.name
        assert listens_locally(a)


def test_a_closed_socket_is_an_unknown_peer() -> None:
    sock = socket.socket()
    sock.close()
    assert Peer.of(sock) == Peer("unknown peer", False)


# -- policy and sessions ---------------------------------------------------------------------

LOCAL = Peer("127.0.0.1:5000", True)
REMOTE = Peer("10.0.0.9:5000", False)


@pytest.mark.parametrize(
    ("trust_loopback", "peer", "trust"),
    [
        (True, LOCAL, Trust.LOCAL),
        (True, REMOTE, Trust.NONE),
        (False, LOCAL, Trust.NONE),
        (False, REMOTE, Trust.NONE),
    ],
)
def test_who_is_trusted_without_a_proof(trust_loopback: bool, peer: Peer, trust: Trust) -> None:
    session = AdminPolicy(KEY, trust_loopback=trust_loopback).session(peer)
    assert session.trust is trust
    if trust is Trust.NONE:
        with pytest.raises(NotAuthorized, match=r"^not authorized$"):
            session.require("ADD")
    else:
        session.require("ADD")


def _prove(session: AdminSession, key: bytes = KEY) -> None:
    nonce = session.challenge(1)
    client_nonce = os.urandom(32)
    session.prove(1, client_nonce, admin_proof(key, nonce, client_nonce))


def test_the_key_proved_authorizes_the_connection() -> None:
    session = AdminPolicy(KEY, trust_loopback=False).session(REMOTE)
    _prove(session)
    assert session.trust is Trust.CLUSTER_KEY
    session.require("ASSIGN")


def test_a_wrong_key_is_refused_and_changes_nothing() -> None:
    session = AdminPolicy(KEY, trust_loopback=False).session(REMOTE)
    with pytest.raises(NotAuthorized, match="wrong cluster key"):
        _prove(session, b"another-key-0123456789abcdef-xyz")
    assert session.trust is Trust.NONE
    with pytest.raises(NotAuthorized):
        session.require("REMOVE")


def test_a_proof_answers_one_challenge_of_one_connection() -> None:
    policy = AdminPolicy(KEY, trust_loopback=False)
    first, second = policy.session(REMOTE), policy.session(REMOTE)
    with pytest.raises(NotAuthorized, match="no challenge"):
        first.prove(1, bytes(32), bytes(32))

    nonce = first.challenge(1)
    client_nonce = os.urandom(32)
    proof = admin_proof(KEY, nonce, client_nonce)
    second.challenge(1)  # another connection, another nonce
    with pytest.raises(NotAuthorized, match="wrong cluster key"):
        second.prove(1, client_nonce, proof)  # replayed on another connection
    assert second.trust is Trust.NONE

    first.challenge(1)  # a new challenge replaces the old one
    with pytest.raises(NotAuthorized, match="wrong cluster key"):
        first.prove(1, client_nonce, proof)
    with pytest.raises(NotAuthorized, match="no challenge"):
        first.prove(1, client_nonce, proof)  # the challenge was used up
    assert first.trust is Trust.NONE


def test_nonces_are_fresh() -> None:
    session = AdminPolicy(KEY, trust_loopback=False).session(REMOTE)
    nonces = {session.challenge(1) for _ in range(50)}
    assert len(nonces) == 50
    assert all(len(n) == 32 for n in nonces)


def test_no_key_no_proof_and_no_unknown_mechanism() -> None:
    with pytest.raises(NotAuthorized, match="no cluster key"):
        AdminPolicy(None, trust_loopback=False).session(REMOTE).challenge(1)
    session = AdminPolicy(KEY, trust_loopback=False).session(REMOTE)
    with pytest.raises(NotAuthorized, match="unknown authentication mechanism 2"):
        session.challenge(2)
    nonce = session.challenge(1)
    with pytest.raises(NotAuthorized):
        session.prove(2, bytes(32), admin_proof(KEY, nonce, bytes(32)))
    assert AdminSession.refusing().trust is Trust.NONE


def _presenting(*certificates: ClientCertificate | None) -> Peer:
    """REMOTE, presenting each certificate in turn, then the last one for ever."""
    left = list(certificates)

    def certificate() -> ClientCertificate | None:
        return left.pop(0) if len(left) > 1 else left[0]

    return dataclasses.replace(REMOTE, certificate=certificate)


ADMIN_CERT = ClientCertificate("CN=alice,O=ops", True)
OTHER_CERT = ClientCertificate(
    "CN=app", False, "this client certificate is not signed by the admin CA"
)


def test_a_trusted_client_certificate_authorizes_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dqlitepy.server")
    session = AdminPolicy(KEY, trust_loopback=False).session(_presenting(ADMIN_CERT))
    assert session.trust is Trust.CERTIFICATE
    session.require("REMOVE")
    assert "REMOVE from 10.0.0.9:5000 authorized by its client certificate CN=alice,O=ops" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.INFO
    ]


def test_an_untrusted_client_certificate_is_refused_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dqlitepy.server")
    session = AdminPolicy(KEY, trust_loopback=False).session(_presenting(OTHER_CERT))
    assert session.trust is Trust.NONE
    for _ in range(3):
        with pytest.raises(
            NotAuthorized, match=r"^not authorized: this client certificate is not signed by"
        ):
            session.require("ADD")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [  # once per connection
        "refused ADD from 10.0.0.9:5000 (client certificate CN=app): not authorized: "
        "this client certificate is not signed by the admin CA"
    ]


def test_a_certificate_is_judged_at_each_request() -> None:
    # One that expires while its connection is open stops authorizing.
    expired = ClientCertificate("CN=alice,O=ops", False, "the client certificate expired")
    session = AdminPolicy(KEY, trust_loopback=False).session(_presenting(ADMIN_CERT, expired))
    session.require("ASSIGN")
    with pytest.raises(NotAuthorized, match="expired"):
        session.require("ASSIGN")
    # The key proved still counts, whatever the certificate.
    _prove(session)
    session.require("ASSIGN")
    assert session.trust is Trust.CLUSTER_KEY


# -- learner first ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        (None, False),
        (PeerHealth(0.1, 0, True), True),
        (PeerHealth(0.1, MAX_LAG, True), True),
        (PeerHealth(0.1, MAX_LAG + 1, True), False),
        (PeerHealth(ONLINE_WITHIN, 0, True), False),
        (PeerHealth(0.0, 0, False), False),  # never acknowledged: unknown, maybe unreachable
    ],
)
def test_caught_up(health: PeerHealth | None, expected: bool) -> None:
    assert caught_up(health) is expected


class FakeReplicator:
    """The parts of a Replicator that promote_to_voter uses."""

    def __init__(self, role: int, health: PeerHealth | None = None) -> None:
        self.role = role
        self.health = health
        self.changes: list[int] = []
        self.leading = True

    def roles(self) -> dict[str, int]:
        return {"me": NodeRole.VOTER, "n": self.role}

    def set_role(self, address: str, role: int) -> None:
        assert address == "n"
        self.changes.append(role)
        self.role = role

    def peer_health(self) -> dict[str, PeerHealth]:
        return {} if self.health is None or not self.leading else {"n": self.health}

    def is_elected(self) -> bool:
        return self.leading


def test_a_spare_becomes_a_standby_then_a_voter_once_caught_up() -> None:
    fake = FakeReplicator(NodeRole.SPARE, PeerHealth(0.1, 5000, True))
    timer = threading.Timer(0.3, lambda: setattr(fake, "health", PeerHealth(0.1, 3, True)))
    timer.start()
    try:
        promote_to_voter(fake, "n", wait=5)  # type: ignore[arg-type]
    finally:
        timer.cancel()
    assert fake.changes == [NodeRole.STANDBY, NodeRole.VOTER]


def test_a_caught_up_standby_is_promoted_at_once() -> None:
    fake = FakeReplicator(NodeRole.STANDBY, PeerHealth(0.1, 0, True))
    promote_to_voter(fake, "n", wait=0)  # type: ignore[arg-type]
    assert fake.changes == [NodeRole.VOTER]


@pytest.mark.parametrize(
    "health",
    [None, PeerHealth(0.0, 2, False), PeerHealth(0.1, MAX_LAG + 1, True)],
    ids=["unreachable", "never-acknowledged", "behind"],
)
def test_a_node_that_has_not_caught_up_stays_a_standby(health: PeerHealth | None) -> None:
    fake = FakeReplicator(NodeRole.SPARE, health)
    with pytest.raises(NotCaughtUp, match="has not caught up"):
        promote_to_voter(fake, "n", wait=0.2)  # type: ignore[arg-type]
    assert fake.changes == [NodeRole.STANDBY]


def test_a_leader_deposed_while_waiting_stops() -> None:
    fake = FakeReplicator(NodeRole.STANDBY)
    fake.leading = False
    with pytest.raises(NotLeader):
        promote_to_voter(fake, "n", wait=5)  # type: ignore[arg-type]
    assert fake.changes == []
