"""dqlitepy's proof of the cluster key on a client connection (``dqlitepy/wire/auth.py``).

Golden bytes of the three messages (laid out by hand from the documented layout), a MAC
vector computed independently with ``openssl dgst -sha256 -hmac``, and the state machines of
both ends for the exchange.
"""

from __future__ import annotations

import struct

import pytest

from dqlitepy.wire import (
    MECHANISM_HMAC_SHA256,
    NEED_DATA,
    NONCE_SIZE,
    NOT_AUTHORIZED,
    PROTOCOL_VERSION,
    REQUESTS,
    RESPONSES,
    AuthChallengeRequest,
    AuthProofRequest,
    BadRequest,
    ChallengeResponse,
    ClientConnection,
    ClientState,
    EmptyResponse,
    FailureResponse,
    Handshake,
    LocalProtocolError,
    RemoteProtocolError,
    RequestType,
    ResponseType,
    ServerConnection,
    admin_proof,
    check_admin_proof,
    encode_message,
)

KEY = b"test-cluster-key-0123456789abcdef"
SERVER_NONCE = bytes(range(32))
CLIENT_NONCE = bytes(range(32, 64))
MAC = bytes(range(64, 96))

# ( printf 'dqlitepy admin v1\0'; <bytes 0..63> ) | openssl dgst -sha256 -hmac KEY
EXPECTED_PROOF = bytes.fromhex("887ec15e3bd1b8e96f32160fa69dca35e1bdd578ddff8c95c74e718032e94c31")

CHALLENGE_REQUEST = bytes.fromhex(
    "01000000 d0000000"  # header: 1 word, type 208, schema 0
    "01000000 00000000"  # mechanism 1 (HMAC-SHA256)
)
CHALLENGE_RESPONSE = (
    bytes.fromhex("05000000 d000000001000000 00000000")  # 5 words, type 208; mechanism 1
    + SERVER_NONCE  # 4 words
)
PROOF_REQUEST = (
    bytes.fromhex("09000000 d100000001000000 00000000")  # 9 words, type 209; mechanism 1
    + CLIENT_NONCE  # 4 words
    + MAC  # 4 words
)


def test_codes_are_outside_dqlites_range() -> None:
    assert RequestType.AUTH_CHALLENGE == 208 and RequestType.AUTH_PROOF == 209
    assert ResponseType.CHALLENGE == 208
    assert max(t for t in REQUESTS if t < 200) == 19  # dqlite's own requests: 0-19
    assert max(t for t in RESPONSES if t < 200) == 10
    assert NOT_AUTHORIZED == 23  # SQLITE_AUTH


@pytest.mark.parametrize(
    ("message", "data"),
    [
        (AuthChallengeRequest(), CHALLENGE_REQUEST),
        (ChallengeResponse(SERVER_NONCE), CHALLENGE_RESPONSE),
        (AuthProofRequest(CLIENT_NONCE, MAC), PROOF_REQUEST),
    ],
    ids=["AUTH_CHALLENGE", "CHALLENGE", "AUTH_PROOF"],
)
def test_golden_bytes(
    message: AuthChallengeRequest | ChallengeResponse | AuthProofRequest, data: bytes
) -> None:
    assert encode_message(message) == data
    table = RESPONSES if isinstance(message, ChallengeResponse) else REQUESTS
    assert table[data[4]].decode_body(data[8:]) == message


def test_proof_vector() -> None:
    assert admin_proof(KEY, SERVER_NONCE, CLIENT_NONCE) == EXPECTED_PROOF
    assert check_admin_proof(KEY, SERVER_NONCE, CLIENT_NONCE, EXPECTED_PROOF)


@pytest.mark.parametrize(
    ("key", "server_nonce", "client_nonce", "mac"),
    [
        (b"another-key-0123456789abcdef-xyz", SERVER_NONCE, CLIENT_NONCE, EXPECTED_PROOF),
        (KEY, bytes(32), CLIENT_NONCE, EXPECTED_PROOF),  # another challenge
        (KEY, SERVER_NONCE, bytes(32), EXPECTED_PROOF),  # another client nonce
        (KEY, CLIENT_NONCE, SERVER_NONCE, EXPECTED_PROOF),  # nonces swapped
        (KEY, SERVER_NONCE, CLIENT_NONCE, EXPECTED_PROOF[:-1] + b"\x00"),
        (KEY, SERVER_NONCE, CLIENT_NONCE, EXPECTED_PROOF[:16]),  # short
        (KEY, SERVER_NONCE, CLIENT_NONCE[:16], EXPECTED_PROOF),
    ],
)
def test_wrong_proofs_fail(
    key: bytes, server_nonce: bytes, client_nonce: bytes, mac: bytes
) -> None:
    assert not check_admin_proof(key, server_nonce, client_nonce, mac)


def test_nonces_have_a_fixed_size() -> None:
    with pytest.raises(ValueError):
        admin_proof(KEY, SERVER_NONCE[:31], CLIENT_NONCE)
    with pytest.raises(LocalProtocolError):
        encode_message(AuthProofRequest(CLIENT_NONCE[:31], MAC))
    with pytest.raises(LocalProtocolError):
        encode_message(AuthProofRequest(CLIENT_NONCE, MAC + b"x"))
    with pytest.raises(LocalProtocolError):
        encode_message(ChallengeResponse(b""))
    assert NONCE_SIZE == 32 and MECHANISM_HMAC_SHA256 == 1


def test_exchange_through_both_state_machines() -> None:
    client, server = ClientConnection(), ServerConnection()
    server.receive_data(client.handshake() + client.send(AuthChallengeRequest()))
    assert server.next_event() == Handshake(PROTOCOL_VERSION)
    assert server.next_event() == AuthChallengeRequest()
    client.receive_data(server.send(ChallengeResponse(SERVER_NONCE)))
    challenge = client.next_event()
    assert challenge == ChallengeResponse(SERVER_NONCE)
    assert client.state is ClientState.IDLE

    proof = AuthProofRequest(CLIENT_NONCE, admin_proof(KEY, SERVER_NONCE, CLIENT_NONCE))
    data = client.send(proof)
    for i in range(len(data)):  # byte at a time
        server.receive_data(data[i : i + 1])
        event = server.next_event()
        assert (event is NEED_DATA) == (i < len(data) - 1)
    assert event == proof
    client.receive_data(server.send(FailureResponse(NOT_AUTHORIZED, "not authorized")))
    assert client.next_event() == FailureResponse(NOT_AUTHORIZED, "not authorized")
    assert client.state is ClientState.IDLE


def test_a_challenge_does_not_answer_other_requests() -> None:
    client = ClientConnection()
    client.handshake()
    client.send(AuthProofRequest(CLIENT_NONCE, MAC))
    client.receive_data(CHALLENGE_RESPONSE)
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    assert client.state is ClientState.BROKEN

    client = ClientConnection()
    client.handshake()
    client.send(AuthChallengeRequest())
    client.receive_data(encode_message(EmptyResponse()))
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_a_short_proof_is_a_bad_request_and_the_connection_goes_on() -> None:
    server = ServerConnection()
    server.receive_data(struct.pack("<Q", PROTOCOL_VERSION))
    assert isinstance(server.next_event(), Handshake)
    short = struct.pack("<IBBH", 5, 209, 0, 0) + PROOF_REQUEST[8:48]
    server.receive_data(short + CHALLENGE_REQUEST)
    event = server.next_event()
    assert isinstance(event, BadRequest) and event.code == 1005
    server.send(FailureResponse(event.code, event.message))
    assert server.next_event() == AuthChallengeRequest()
