"""SecureTransport: PySyncObj over the dqlite address, authenticated, never pickled.

``docs/replication.md`` rule 8 and ``libraries.md`` defects 4 and 5.  Real sockets on 127.0.0.1,
PySyncObj nodes in this process, each behind a :class:`ConnectAcceptor` that accepts the
dqlite handshake + CONNECT and calls ``adopt`` as the node server will.  Every wait is bounded.

The stranger tests speak the frame format from an independent implementation written here
from the module docstring (``_Peer``), so they also check that the documented format is the
one on the wire.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pickle
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cbor2
import pytest
from pysyncobj import SyncObj
from pysyncobj.transport import TCPTransport
from raft_acceptor import ConnectAcceptor
from raft_counter import Counter, raft_conf
from waiting import wait_until

from dqlitepy.replication.transport import (
    APPEND_CHUNK_TARGET,
    MAX_HANDSHAKE_FRAME,
    ClusterMismatch,
    FrameKind,
    FrameMacError,
    LocalSessionError,
    RaftMessageError,
    RaftNode,
    RemoteSessionError,
    SecureSession,
    SecureTransport,
    SessionEvent,
    SessionState,
    check_cluster_key,
    decode_raft_message,
    encode_raft_message,
    keep_newer_link,
    secure_transport_class,
    split_address,
)
from dqlitepy.replication.transport import adapter as adapter_module
from dqlitepy.replication.transport.messages import split_append_entries
from dqlitepy.wire import ConnectRequest, encode_message

KEY = b"cluster key for the transport tests"
WRONG_KEY = b"not the cluster key, same length!!!"
WAIT = 10.0  # upper bound of every wait; typical waits are well under a second


class Cluster:
    """Three Counter nodes, each behind its own ConnectAcceptor."""

    def __init__(self, size: int = 3, **conf: Any) -> None:
        self.conf = conf
        self.acceptors = [ConnectAcceptor("127.0.0.1:0") for _ in range(size)]
        self.addresses = [acceptor.address for acceptor in self.acceptors]
        self.nodes: list[Counter | None] = [None] * size
        self.transports: list[SecureTransport | None] = [None] * size
        for i in range(size):
            self.start(i)

    def start(self, i: int) -> Counter:
        def created(transport: SecureTransport) -> None:
            self.transports[i] = transport
            self.acceptors[i].attach(transport)

        transport_class = secure_transport_class(KEY, node_id=i + 1, on_created=created)
        others = [a for a in self.addresses if a != self.addresses[i]]
        node = Counter(self.addresses[i], others, transport_class, **self.conf)
        self.nodes[i] = node
        return node

    def stop(self, i: int) -> None:
        node = self.nodes[i]
        assert node is not None
        self.acceptors[i].attach(None)
        node.destroy_synchronous()
        self.nodes[i] = None
        self.transports[i] = None

    def node(self, i: int) -> Counter:
        node = self.nodes[i]
        assert node is not None
        return node

    def transport(self, i: int) -> SecureTransport:
        transport = self.transports[i]
        assert transport is not None
        return transport

    def live(self) -> list[Counter]:
        return [node for node in self.nodes if node is not None]

    def leader(self) -> Counter:
        def one_leader() -> bool:
            return sum(node._isLeader() for node in self.live()) == 1

        wait_until(one_leader, "a leader")
        return next(node for node in self.live() if node._isLeader())

    def all_connected(self) -> bool:
        return all(
            len(self.transport(i).connections()) == len(self.addresses) - 1
            for i, node in enumerate(self.nodes)
            if node is not None
        )

    def close(self) -> None:
        for i, node in enumerate(self.nodes):
            if node is not None:
                self.stop(i)
        for acceptor in self.acceptors:
            acceptor.close()


def _connected_cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.leader()
        wait_until(c.all_connected, "all peers connected")
        yield c
    finally:
        c.close()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    yield from _connected_cluster()


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[Cluster]:
    """A cluster the stranger tests attack; each of them checks it still works."""
    yield from _connected_cluster()


def increment_everywhere(c: Cluster) -> None:
    """One increment through the leader, seen by every live node."""
    result = c.leader().incr(sync=True, timeout=WAIT)
    wait_until(lambda: all(node.value == result for node in c.live()), "all nodes applied")


# ----------------------------------------------------------------------------- a peer written
# from the module docstring, independently of the transport's code

LABEL = b"dqlitepy raft v1"
D2A, A2D = b"\x01", b"\x02"


def frame_mac(
    key: bytes, direction: bytes, nd: bytes, na: bytes, seq: int, payload: bytes
) -> bytes:
    data = LABEL + direction + nd + na + struct.pack("<Q", seq) + payload
    return hmac.new(key, data, hashlib.sha256).digest()


def preamble(claimed_address: str, node_id: int = 99) -> bytes:
    return struct.pack("<Q", 1) + encode_message(ConnectRequest(node_id, claimed_address))


class Marker:
    """A pickle whose loading creates a directory: proof that someone unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


class _Peer:
    """The dialing side of the session protocol, over a blocking socket, recording its output."""

    def __init__(self, address: str, claimed: str, key: bytes, acceptor_address: str) -> None:
        host, port = split_address(address)
        self.sock = socket.create_connection((host, port), timeout=WAIT)
        self.key = key
        self.claimed = claimed
        self.acceptor_address = acceptor_address
        self.nonce = os.urandom(32)
        self.peer_nonce = b""
        self.send_seq = 0
        self.recv_seq = 0
        self.sent = bytearray()
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sent += data
        self.sock.sendall(data)

    def hello(self) -> None:
        self.send(preamble(self.claimed) + b"DQPYRFT1" + self.nonce)

    def recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def frame(
        self, kind: int, body: bytes, *, seq: int | None = None, key: bytes | None = None
    ) -> bytes:
        payload = bytes([kind]) + body
        mac = frame_mac(
            key or self.key,
            D2A,
            self.nonce,
            self.peer_nonce,
            self.send_seq if seq is None else seq,
            payload,
        )
        if seq is None:
            self.send_seq += 1
        return struct.pack("<I", len(payload)) + payload + mac

    def read_frame(self) -> tuple[int, bytes]:
        (size,) = struct.unpack("<I", self.recv_exact(4))
        payload = self.recv_exact(size)
        mac = self.recv_exact(32)
        want = frame_mac(self.key, A2D, self.nonce, self.peer_nonce, self.recv_seq, payload)
        assert hmac.compare_digest(mac, want), "the node's frame MAC does not verify"
        self.recv_seq += 1
        return payload[0], payload[1:]

    def handshake(self, *, verify: bool = True) -> None:
        self.hello()
        hello = self.recv_exact(40)
        assert hello[:8] == b"DQPYRFT1"
        self.peer_nonce = hello[8:]
        auth_body = self.claimed.encode() + b"\0" + self.acceptor_address.encode()
        if verify:
            kind, body = self.read_frame()
            assert (kind, body) == (FrameKind.AUTH, auth_body)
        self.send(self.frame(FrameKind.AUTH, auth_body))

    def read_message(self, wanted: str) -> dict[str, Any]:
        while True:
            kind, body = self.read_frame()
            if kind == FrameKind.RAFT:
                message: dict[str, Any] = cbor2.loads(body)
                if message["type"] == wanted:
                    return message

    def wait_closed(self, timeout: float = 5.0) -> bytes:
        """Everything the node still sends until it closes the connection."""
        self.sock.settimeout(timeout)
        received = bytearray(self.buf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return bytes(received)
            except TimeoutError:
                break
            if not chunk:
                return bytes(received)
            received += chunk
        raise AssertionError("the node did not close the connection")

    def close(self) -> None:
        self.sock.close()


# ----------------------------------------------------------------------------- replication


def test_replicates_200_increments_and_a_4_mib_command(cluster: Cluster) -> None:
    leader = cluster.leader()
    for i in range(200):
        # Through every node: followers forward apply_command to the leader and get
        # apply_command_response back, so those messages cross the transport too.
        result = cluster.node(i % 3).incr(sync=True, timeout=WAIT)
        assert result == i + 1
    blob = os.urandom(4 * 1024 * 1024)
    started = time.monotonic()
    digest = leader.put_blob(blob, sync=True, timeout=WAIT)
    elapsed = time.monotonic() - started
    assert digest == hashlib.sha256(blob).hexdigest()
    wait_until(
        lambda: all(n.value == 200 and n.blobs == [digest] for n in cluster.live()),
        "every node applied 200 increments and the blob",
    )
    # The big entry went as one plain append_entries, not PySyncObj's chunked path, and did
    # not cost anyone their leadership.
    assert leader._isLeader()
    assert all(cluster.transport(i).rejected_connections == 0 for i in range(3))
    assert elapsed < 5.0


def test_one_connection_per_pair_seen_from_both_ends(cluster: Cluster) -> None:
    # Both sides dial, so duplicates do happen at start-up; they must converge on one
    # TCP connection per pair that both ends agree on.
    addresses = cluster.addresses

    def settled() -> bool:
        views = {a: cluster.transport(i).connections() for i, a in enumerate(addresses)}
        for a in addresses:
            for b in addresses:
                if a == b:
                    continue
                if b not in views[a] or a not in views[b]:
                    return False
                local_a, peer_a, dialled_by_a = views[a][b]
                local_b, peer_b, dialled_by_b = views[b][a]
                if (local_a, peer_a) != (peer_b, local_b) or dialled_by_a == dialled_by_b:
                    return False
        return True

    wait_until(settled, "one connection per pair")


def test_both_ends_keep_the_same_of_two_links() -> None:
    small, large = "127.0.0.1:9001", "127.0.0.1:9002"
    for current, newer in [(small, large), (large, small), (small, small), (large, large)]:
        # Each end judges with itself as ``self``: their answers must agree.
        at_small = keep_newer_link(small, large, current, newer)
        at_large = keep_newer_link(large, small, current, newer)
        assert at_small == at_large
        expected = newer == small if current != newer else True
        assert at_small == expected


def test_restarted_node_reconnects_and_catches_up(cluster: Cluster) -> None:
    for _ in range(20):
        cluster.leader().incr(sync=True, timeout=WAIT)
    victim = next(i for i, n in enumerate(cluster.nodes) if n is not None and not n._isLeader())
    cluster.stop(victim)
    for _ in range(10):
        cluster.leader().incr(sync=True, timeout=WAIT)
    restarted = cluster.start(victim)
    wait_until(lambda: restarted.value == 30, "the restarted node caught up")
    wait_until(cluster.all_connected, "the restarted node reconnected to everyone")
    increment_everywhere(cluster)
    assert restarted.value == 31


def test_snapshot_install_crosses_the_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    # Log compaction after 20 entries: a restarted node is too far behind for the log and
    # receives the snapshot as 'serialized' chunks ([data, isFirst, isLast] lists on the wire).
    chunks: list[list[Any]] = []
    decode = adapter_module.decode_raft_message

    def spy(body: bytes) -> dict[str, Any]:
        message = decode(body)
        if message.get("serialized") is not None:
            chunks.append(message["serialized"])
        return message

    monkeypatch.setattr(adapter_module, "decode_raft_message", spy)
    c = Cluster(logCompactionMinEntries=20)
    try:
        c.leader()
        for _ in range(60):
            c.leader().incr(sync=True, timeout=WAIT)
        victim = next(i for i, n in enumerate(c.nodes) if n is not None and not n._isLeader())
        c.stop(victim)
        for _ in range(30):
            c.leader().incr(sync=True, timeout=WAIT)
        restarted = c.start(victim)
        wait_until(lambda: restarted.value == 90, "the restarted node installed the snapshot")
        assert chunks and chunks[0][1] is True and chunks[-1][2] is True
        increment_everywhere(c)
    finally:
        c.close()


# ----------------------------------------------------------------------------- strangers


def _node_rejections(c: Cluster, i: int) -> int:
    return c.transport(i).rejected_connections


def _attack(c: Cluster, variant: str, marker: Path) -> bytes:
    """Run one attack on node 0, claiming to be node 1; returns what node 0 sent back."""
    target, claimed = c.addresses[0], c.addresses[1]
    evil = pickle.dumps(Marker(marker), protocol=2)
    peer = _Peer(target, claimed, KEY, target)
    try:
        if variant == "pysyncobj-pickle-frame":
            # What PySyncObj's own transport would accept and unpickle.
            data = zlib.compress(evil, 3)
            peer.send(preamble(claimed) + struct.pack("i", len(data)) + data)
        elif variant == "pickle-frame-without-mac":
            peer.hello()
            payload = bytes([FrameKind.RAFT]) + evil
            peer.send(struct.pack("<I", len(payload)) + payload + bytes(32))
        elif variant == "cbor-frame-zero-mac":
            body = cbor2.dumps(
                {"type": "request_vote", "term": 99, "last_log_index": 9, "last_log_term": 9}
            )
            payload = bytes([FrameKind.RAFT]) + body
            peer.hello()
            peer.send(struct.pack("<I", len(payload)) + payload + bytes(32))
        elif variant == "cbor-frame-no-mac":
            # An incomplete frame: nothing is decoded, the handshake times out.
            body = cbor2.dumps(
                {"type": "request_vote", "term": 99, "last_log_index": 9, "last_log_term": 9}
            )
            payload = bytes([FrameKind.RAFT]) + body
            peer.hello()
            peer.send(struct.pack("<I", len(payload)) + payload)
        elif variant == "wrong-key":
            peer.key = WRONG_KEY
            peer.handshake(verify=False)
            peer.send(peer.frame(FrameKind.RAFT, evil))
        elif variant == "oversized-length":
            peer.hello()
            peer.send(struct.pack("<I", 0xFFFF_FFFF))
        elif variant == "pre-auth-frame-over-limit":
            peer.hello()
            peer.send(struct.pack("<I", MAX_HANDSHAKE_FRAME + 1) + bytes(64))
        elif variant == "not-a-member":
            peer.claimed = "127.0.0.1:1"
            peer.hello()
        elif variant == "garbage-after-connect":
            peer.send(preamble(claimed) + os.urandom(4096))
        else:
            raise AssertionError(variant)
        return peer.wait_closed()
    finally:
        peer.close()


STRANGERS = [
    "pysyncobj-pickle-frame",
    "pickle-frame-without-mac",
    "cbor-frame-zero-mac",
    "cbor-frame-no-mac",
    "wrong-key",
    "oversized-length",
    "pre-auth-frame-over-limit",
    "not-a-member",
    "garbage-after-connect",
]


@pytest.mark.parametrize("variant", STRANGERS)
def test_stranger_is_rejected_without_decoding(
    shared_cluster: Cluster, variant: str, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    before = _node_rejections(shared_cluster, 0)
    _attack(shared_cluster, variant, marker)
    wait_until(lambda: _node_rejections(shared_cluster, 0) > before, "the rejection counted")
    assert not marker.exists()
    increment_everywhere(shared_cluster)
    assert shared_cluster.all_connected()
    assert not marker.exists()


def test_a_socket_closed_before_adoption_does_not_disturb_the_transport(
    shared_cluster: Cluster,
) -> None:
    # The server may lose a race and hand over a socket that is already closed.
    dead = socket.socket()
    dead.close()
    shared_cluster.transport(0).adopt(dead, 2, shared_cluster.addresses[1], b"")
    increment_everywhere(shared_cluster)
    assert shared_cluster.all_connected()


@pytest.mark.xfail(strict=True, reason="PySyncObj defect 4: pickle on the wire")
def test_stock_tcp_transport_unpickles_a_strangers_frame(tmp_path: Path) -> None:
    """The defect this transport exists for: PySyncObj's TCPTransport runs a stranger's pickle."""
    marker = tmp_path / "unpickled"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node = SyncObj(f"127.0.0.1:{port}", [], raft_conf(), transportClass=TCPTransport)
    try:
        node.waitBinded()
        data = zlib.compress(pickle.dumps(Marker(marker), protocol=2), 3)
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(struct.pack("i", len(data)) + data)
            deadline = time.monotonic() + 2.0
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        node.destroy_synchronous()
    assert not marker.exists(), "PySyncObj unpickled a stranger's frame and ran its code"


# ----------------------------------------------------------------------------- keyed peers


@pytest.fixture
def lone_node() -> Iterator[tuple[Counter, SecureTransport, str, str]]:
    """One node whose only peer is an address played by the test (with the cluster key)."""
    with socket.socket() as probe:  # an address where nothing listens: the node's dials fail
        probe.bind(("127.0.0.1", 0))
        fake = f"127.0.0.1:{probe.getsockname()[1]}"
    acceptor = ConnectAcceptor("127.0.0.1:0")
    holder: list[SecureTransport] = []

    def created(transport: SecureTransport) -> None:
        holder.append(transport)
        acceptor.attach(transport)

    node = Counter(acceptor.address, [fake], secure_transport_class(KEY, on_created=created))
    try:
        yield node, holder[0], acceptor.address, fake
    finally:
        acceptor.attach(None)
        node.destroy_synchronous()
        acceptor.close()


def _talks_raft(node: Counter, transport: SecureTransport, peer: _Peer, address: str) -> None:
    """The authenticated ``peer`` (at ``address``) is connected and answered."""
    wait_until(lambda: node.isNodeConnected(RaftNode(address)), "connected after AUTH")
    vote = {"type": "request_vote", "term": 1000, "last_log_index": 10**6, "last_log_term": 999}
    peer.send(peer.frame(FrameKind.RAFT, cbor2.dumps(vote)))
    assert peer.read_message("response_vote") == {"type": "response_vote", "term": 1000}
    assert transport.rejected_connections == 0


def test_keyed_peer_talks_raft_and_counts_as_connected_only_after_auth(
    lone_node: tuple[Counter, SecureTransport, str, str],
) -> None:
    node, transport, address, fake = lone_node
    peer = _Peer(address, fake, KEY, address)
    try:
        peer.hello()
        peer.peer_nonce = peer.recv_exact(40)[8:]
        # A sibling that must change first: the node took the hello in and sent its proof.
        kind, body = peer.read_frame()
        assert kind == FrameKind.AUTH
        time.sleep(0.1)  # a window for a premature "connected" to show
        assert not node.isNodeConnected(RaftNode(fake)), "connected before authenticating"
        peer.send(peer.frame(FrameKind.AUTH, body))
        # The control: once authenticated, the same probe sees the connection.
        _talks_raft(node, transport, peer, fake)
    finally:
        peer.close()


@pytest.mark.parametrize("accept_strangers", [False, True])
def test_a_keyed_peer_outside_the_configuration_is_heard_only_by_a_non_voter(
    lone_node: tuple[Counter, SecureTransport, str, str], accept_strangers: bool
) -> None:
    # A node that does not vote must hear a leader its stale configuration
    # lacks; a voter keeps refusing members it does not know (removed ones).
    node, transport, address, _ = lone_node
    transport.accept_strangers = accept_strangers
    stranger = "127.0.0.1:1"
    peer = _Peer(address, stranger, KEY, address)
    try:
        if not accept_strangers:
            peer.hello()
            peer.wait_closed()
            wait_until(lambda: transport.rejected_connections == 1, "the rejection counted")
            return
        peer.handshake()
        _talks_raft(node, transport, peer, stranger)
    finally:
        peer.close()


@pytest.mark.parametrize("member", [False, True])
def test_a_node_can_check_its_key_and_gets_nothing_more(
    lone_node: tuple[Counter, SecureTransport, str, str], member: bool
) -> None:
    # What a node about to join does (it is a stranger), and one restarting (a member).
    node, transport, address, fake = lone_node
    own = fake if member else "127.0.0.1:1"
    check_cluster_key(address, KEY, node_id=7, own_address=own)
    with pytest.raises(FrameMacError):
        check_cluster_key(address, WRONG_KEY, node_id=7, own_address=own)
    if not member:
        # Answered, then disconnected: two rejections, one per check.
        wait_until(lambda: transport.rejected_connections == 2, "the rejections counted")
    assert not node.isNodeConnected(RaftNode(own))
    assert transport.connections() == {}


def test_a_node_of_another_cluster_sharing_the_key_is_refused_by_the_transport() -> None:
    ours, theirs = "a" * 32, "b" * 32
    known: list[str | None] = [None]
    acceptor = ConnectAcceptor("127.0.0.1:0")
    transport_class = secure_transport_class(
        KEY, on_created=acceptor.attach, cluster_id=lambda: known[0]
    )
    node = Counter(acceptor.address, ["127.0.0.1:1"], transport_class)
    try:
        # A node that knows no id yet is taken on the key, and names none.
        assert check_cluster_key(acceptor.address, KEY, node_id=7, own_address="x:1") is None
        assert (
            check_cluster_key(
                acceptor.address, KEY, node_id=7, own_address="x:1", cluster_id=theirs
            )
            is None
        )
        known[0] = ours  # learned from the log: read for every new link
        assert check_cluster_key(acceptor.address, KEY, node_id=7, own_address="x:1") == ours
        with pytest.raises(ClusterMismatch) as caught:
            check_cluster_key(
                acceptor.address, KEY, node_id=7, own_address="x:1", cluster_id=theirs
            )
        assert (caught.value.ours, caught.value.theirs) == (theirs, ours)
        assert ours in str(caught.value) and theirs in str(caught.value)
    finally:
        acceptor.attach(None)
        node.destroy_synchronous()
        acceptor.close()


def test_a_stranger_is_disconnected_right_after_its_hello_is_answered(
    lone_node: tuple[Counter, SecureTransport, str, str],
) -> None:
    node, transport, address, _ = lone_node
    peer = _Peer(address, "127.0.0.1:1", KEY, address)
    try:
        peer.hello()
        peer.peer_nonce = peer.recv_exact(40)[8:]
        kind, body = peer.read_frame()
        assert kind == FrameKind.AUTH
        with contextlib.suppress(OSError):  # too late: it is being disconnected
            peer.send(peer.frame(FrameKind.AUTH, body))
        peer.wait_closed()
    finally:
        peer.close()
    wait_until(lambda: transport.rejected_connections == 1, "the rejection counted")
    assert not node.isNodeConnected(RaftNode("127.0.0.1:1"))


@pytest.mark.parametrize(
    "variant",
    [
        "replayed-session",
        "replayed-frame",
        "reordered-frame",
        "keyed-pickle",
        "keyed-unknown-message",
        "keyed-extra-field",
        "identity-mismatch",
    ],
)
def test_keyed_or_recorded_misbehaviour_closes_the_connection(
    lone_node: tuple[Counter, SecureTransport, str, str], variant: str, tmp_path: Path
) -> None:
    node, transport, address, fake = lone_node
    marker = tmp_path / "unpickled"
    vote = cbor2.dumps(
        {"type": "request_vote", "term": 1000, "last_log_index": 10**6, "last_log_term": 999}
    )
    if variant == "replayed-session":
        # Capture a legitimate session byte for byte, then replay it on a new connection:
        # the node's fresh nonce makes every recorded MAC worthless.
        legit = _Peer(address, fake, KEY, address)
        try:
            legit.handshake()
            legit.send(legit.frame(FrameKind.RAFT, vote))
            legit.read_message("response_vote")
            recorded = bytes(legit.sent)
        finally:
            legit.close()
        wait_until(lambda: not node.isNodeConnected(RaftNode(fake)), "the legit peer gone")
        peer = _Peer(address, fake, KEY, address)
        peer.send(recorded)
    else:
        peer = _Peer(address, fake, KEY, address)
        if variant == "identity-mismatch":
            # Holding the key but naming another acceptor address than the node's own.
            peer.acceptor_address = "127.0.0.1:1"
            peer.handshake(verify=False)
        else:
            peer.handshake()
        if variant == "replayed-frame":
            frame = peer.frame(FrameKind.RAFT, vote)
            peer.send(frame)
            peer.read_message("response_vote")
            peer.send(frame)
        elif variant == "reordered-frame":
            peer.send(peer.frame(FrameKind.RAFT, vote, seq=peer.send_seq + 1))
        elif variant == "keyed-pickle":
            peer.send(peer.frame(FrameKind.RAFT, pickle.dumps(Marker(marker), protocol=2)))
        elif variant == "keyed-unknown-message":
            peer.send(peer.frame(FrameKind.RAFT, cbor2.dumps({"type": "status"})))
        elif variant == "keyed-extra-field":
            message = {"type": "response_vote", "term": 1, "evil": b"x"}
            peer.send(peer.frame(FrameKind.RAFT, cbor2.dumps(message)))
    try:
        peer.wait_closed()
    finally:
        peer.close()
    wait_until(lambda: transport.rejected_connections == 1, "the rejection counted")
    assert not marker.exists()
    wait_until(lambda: not node.isNodeConnected(RaftNode(fake)), "the peer disconnected")


# ----------------------------------------------------------------------------- units: messages


def _entries(*sizes: int) -> list[tuple[bytes, int, int]]:
    return [(b"\x00" + bytes(size), 10 + i, 3) for i, size in enumerate(sizes)]


PYSYNCOBJ_MESSAGES: list[dict[str, Any]] = [
    {"type": "request_vote", "term": 3, "last_log_index": 10, "last_log_term": 2},
    {"type": "response_vote", "term": 3},
    {"type": "timeout_now", "term": 3},
    {
        "type": "append_entries",
        "term": 3,
        "commit_index": 9,
        "entries": _entries(5, 7),
        "prevLogIdx": 9,
        "prevLogTerm": 3,
    },
    {
        "type": "append_entries",
        "term": 3,
        "commit_index": 9,
        "entries": [],
        "prevLogIdx": None,
        "prevLogTerm": None,
    },
    {"type": "append_entries", "term": 3, "commit_index": 9, "serialized": (b"gz", True, False)},
    {"type": "append_entries", "term": 3, "commit_index": 9, "serialized": None},
    {"type": "next_node_idx", "next_node_idx": 11, "reset": False, "success": True},
    {"type": "apply_command", "command": b"\x00cmd"},
    {"type": "apply_command", "command": b"\x00cmd", "request_id": 4},
    {"type": "apply_command_response", "request_id": 4, "log_idx": 12, "log_term": 3},
    {"type": "apply_command_response", "request_id": 4, "error": 4},
]


@pytest.mark.parametrize("message", PYSYNCOBJ_MESSAGES, ids=lambda m: m["type"])
def test_every_pysyncobj_message_round_trips_with_tuples_as_lists(message: dict[str, Any]) -> None:
    decoded = decode_raft_message(encode_raft_message(message))

    def listify(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [listify(v) for v in value]
        return value

    assert decoded == {k: listify(v) for k, v in message.items()}


def _tagged(tag: int, value: Any) -> bytes:
    return cbor2.dumps({"type": "response_vote", "term": cbor2.CBORTag(tag, value)})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(pickle.dumps({"type": "response_vote", "term": 1}, 2), id="pickle"),
        pytest.param(cbor2.dumps([1, 2]), id="not-a-map"),
        pytest.param(cbor2.dumps({"term": 1}), id="no-type"),
        pytest.param(cbor2.dumps({"type": "status"}), id="unknown-type"),
        pytest.param(cbor2.dumps({"type": "response_vote"}), id="missing-field"),
        pytest.param(cbor2.dumps({"type": "response_vote", "term": 1, "x": 1}), id="extra-field"),
        pytest.param(cbor2.dumps({"type": "response_vote", "term": True}), id="bool-as-int"),
        pytest.param(cbor2.dumps({"type": "response_vote", "term": -1}), id="negative"),
        pytest.param(cbor2.dumps({"type": "response_vote", "term": 1.0}), id="float"),
        pytest.param(cbor2.dumps({"type": "response_vote", "term": 2**64}), id="bignum"),
        pytest.param(_tagged(0, "2020-01-01T00:00:00Z"), id="datetime-tag"),
        pytest.param(_tagged(258, [1, 2]), id="set-tag"),
        pytest.param(_tagged(35, "a+"), id="regex-tag"),
        pytest.param(_tagged(28, 1), id="shareable-tag"),
        pytest.param(_tagged(9999, 1), id="unknown-tag"),
        pytest.param(cbor2.dumps({"type": "response_vote", "term": 1}) + b"\x00", id="trailing"),
        pytest.param(b"\xbf\x64type\x6dresponse_vote\x64term\x01\xff", id="indefinite-map"),
        pytest.param(b"\xa2\x64type\x6dresponse_vote\x64type\x6dresponse_vote", id="dup-keys"),
        pytest.param(b"\xa2\x64type\x6dresponse_vote\x01\x01", id="int-key"),
        pytest.param(cbor2.dumps({"type": "apply_command", "command": b""}), id="empty-command"),
        pytest.param(
            cbor2.dumps(
                {
                    "type": "append_entries",
                    "term": 1,
                    "commit_index": 1,
                    "entries": [[b"\x00", 1]],
                    "prevLogIdx": 1,
                    "prevLogTerm": 1,
                }
            ),
            id="short-entry",
        ),
        pytest.param(
            cbor2.dumps(
                {
                    "type": "append_entries",
                    "term": 1,
                    "commit_index": 1,
                    "entries": [[[[b"\x00"]], 1, 1]],
                    "prevLogIdx": 1,
                    "prevLogTerm": 1,
                }
            ),
            id="too-deep",
        ),
        pytest.param(
            cbor2.dumps(
                {"type": "append_entries", "term": 1, "commit_index": 1, "serialized": False}
            ),
            id="serialized-false",
        ),
        pytest.param(
            cbor2.dumps(
                {
                    "type": "append_entries",
                    "transmission": "start",
                    "data": b"x",
                    "term": 1,
                    "commit_index": 1,
                    "prevLogIdx": 1,
                    "prevLogTerm": 1,
                }
            ),
            id="transmission",
        ),
        pytest.param(b"", id="empty"),
    ],
)
def test_decoder_refuses_anything_but_pysyncobj_messages(body: bytes) -> None:
    with pytest.raises(RaftMessageError):
        decode_raft_message(body)


def test_encoder_refuses_the_chunked_transmission_path() -> None:
    message = {
        "type": "append_entries",
        "transmission": "start",
        "data": b"x",
        "term": 1,
        "commit_index": 1,
        "prevLogIdx": 1,
        "prevLogTerm": 1,
    }
    with pytest.raises(RaftMessageError, match="appendEntriesBatchSizeBytes"):
        encode_raft_message(message)


def test_large_append_entries_are_split_into_consistent_messages() -> None:
    big = APPEND_CHUNK_TARGET // 3
    message = {
        "type": "append_entries",
        "term": 5,
        "commit_index": 4,
        "entries": _entries(big, big, big, big, 10),
        "prevLogIdx": 9,
        "prevLogTerm": 2,
    }
    parts = split_append_entries(message, APPEND_CHUNK_TARGET)
    assert len(parts) > 1
    assert [e for p in parts for e in p["entries"]] == message["entries"]
    prev = (9, 2)
    for part in parts:
        assert (part["prevLogIdx"], part["prevLogTerm"]) == prev
        assert sum(len(e[0]) for e in part["entries"]) <= APPEND_CHUNK_TARGET
        prev = (part["entries"][-1][1], part["entries"][-1][2])
    small = dict(message, entries=_entries(10, 10))
    assert split_append_entries(small, APPEND_CHUNK_TARGET) == [small]


def test_an_append_entries_is_encoded_once_for_followers_that_get_the_same() -> None:
    transport: Any = SimpleNamespace(_last_encoded=None)  # _encode uses nothing else
    message = {
        "type": "append_entries",
        "term": 5,
        "commit_index": 4,
        "entries": _entries(100),
        "prevLogIdx": 9,
        "prevLogTerm": 2,
        "read_round": 3,
    }
    first = SecureTransport._encode(transport, message)
    assert [decode_raft_message(body) for body in first] == [
        {**message, "entries": [list(e) for e in message["entries"]]}
    ]
    # PySyncObj builds a fresh message for the next follower: same content, same bodies.
    assert SecureTransport._encode(transport, {**message, "entries": list(message["entries"])}) is (
        first
    )
    # What PySyncObj does with a message after sending it does not reach the cache.
    message["entries"].append((b"\x00" + bytes(7), 11, 3))
    behind = SecureTransport._encode(transport, message)
    assert behind is not first
    assert len(decode_raft_message(behind[0])["entries"]) == 2
    other = SecureTransport._encode(transport, {**message, "prevLogIdx": 8})
    assert other is not behind
    assert decode_raft_message(other[0])["prevLogIdx"] == 8


# ----------------------------------------------------------------------------- units: session


def _pair(
    dialer_key: bytes = KEY, acceptor_key: bytes = KEY, claimed: str = "10.0.0.1:9001"
) -> tuple[SecureSession, SecureSession]:
    dialer = SecureSession(
        dialer_key, dialer=True, dialer_address="10.0.0.1:9001", acceptor_address="10.0.0.2:9001"
    )
    acceptor = SecureSession(
        acceptor_key, dialer=False, dialer_address=claimed, acceptor_address="10.0.0.2:9001"
    )
    return dialer, acceptor


def _pump(src: SecureSession, dst: SecureSession) -> list[SessionEvent | bytes]:
    for data in src.data_to_send():
        dst.receive_data(data)
    events: list[SessionEvent | bytes] = []
    while (event := dst.next_event()) is not SessionEvent.NEED_DATA:
        events.append(event)
    return events


def _open_pair() -> tuple[SecureSession, SecureSession]:
    dialer, acceptor = _pair()
    assert _pump(dialer, acceptor) == []  # HELLO: the acceptor answers HELLO + AUTH
    assert _pump(acceptor, dialer) == [SessionEvent.AUTHENTICATED]
    assert _pump(dialer, acceptor) == [SessionEvent.AUTHENTICATED]
    return dialer, acceptor


def test_session_handshake_and_frames_both_ways() -> None:
    dialer, acceptor = _open_pair()
    assert dialer.state is acceptor.state is SessionState.OPEN
    for body in (b"one", b"", bytes(100_000)):
        for data in dialer.seal(FrameKind.RAFT, body):
            acceptor.receive_data(data)
        assert acceptor.next_event() == body
    for data in acceptor.seal(FrameKind.PING, b"") + acceptor.seal(FrameKind.RAFT, b"back"):
        dialer.receive_data(data)
    assert dialer.next_event() == b"back"  # pings are absorbed


def test_session_byte_at_a_time() -> None:
    dialer, acceptor = _open_pair()
    wire = b"".join(dialer.seal(FrameKind.RAFT, b"x" * 50))
    for i in range(len(wire) - 1):
        acceptor.receive_data(wire[i : i + 1])
        assert acceptor.next_event() is SessionEvent.NEED_DATA
    acceptor.receive_data(wire[-1:])
    assert acceptor.next_event() == b"x" * 50


@pytest.mark.parametrize("tamper", ["replay", "reorder", "flip-payload", "flip-mac", "reflect"])
def test_session_detects_tampering(tamper: str) -> None:
    dialer, acceptor = _open_pair()
    first = b"".join(dialer.seal(FrameKind.RAFT, b"first"))
    second = b"".join(dialer.seal(FrameKind.RAFT, b"second"))
    if tamper == "replay":
        acceptor.receive_data(first)
        assert acceptor.next_event() == b"first"
        acceptor.receive_data(first)
    elif tamper == "reorder":
        acceptor.receive_data(second)
    elif tamper == "flip-payload":
        acceptor.receive_data(first[:6] + bytes([first[6] ^ 1]) + first[7:])
    elif tamper == "flip-mac":
        acceptor.receive_data(first[:-1] + bytes([first[-1] ^ 1]))
    else:  # the acceptor's own frame sent back to it
        acceptor.receive_data(b"".join(acceptor.seal(FrameKind.RAFT, b"mine")))
    with pytest.raises(RemoteSessionError):
        acceptor.next_event()
    assert acceptor.state is SessionState.BROKEN
    with pytest.raises(LocalSessionError):
        acceptor.next_event()


def test_session_wrong_key_or_identity_fails_the_handshake() -> None:
    dialer, acceptor = _pair(acceptor_key=WRONG_KEY)
    _pump(dialer, acceptor)
    with pytest.raises(RemoteSessionError):
        _pump(acceptor, dialer)
    dialer, acceptor = _pair(claimed="10.0.0.3:9001")  # CONNECT named another node
    _pump(dialer, acceptor)
    with pytest.raises(RemoteSessionError):
        _pump(acceptor, dialer)


def test_session_refuses_bad_hello_and_oversized_frames_before_buffering() -> None:
    _, acceptor = _pair()
    acceptor.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(20))
    with pytest.raises(RemoteSessionError, match="hello"):
        acceptor.next_event()
    assert acceptor.data_to_send() == []  # garbage gets no reply at all
    dialer, acceptor = _pair()
    _pump(dialer, acceptor)
    dialer.receive_data(b"".join(acceptor.data_to_send())[:40])  # only the HELLO
    dialer.receive_data(struct.pack("<I", MAX_HANDSHAKE_FRAME + 1))
    with pytest.raises(RemoteSessionError, match="limit"):
        dialer.next_event()
    dialer, acceptor = _open_pair()
    acceptor.receive_data(struct.pack("<I", 0xFFFF_FFFF))
    with pytest.raises(RemoteSessionError, match="limit"):
        acceptor.next_event()


def test_session_refuses_local_misuse() -> None:
    dialer, _ = _pair()
    with pytest.raises(LocalSessionError):
        dialer.seal(FrameKind.RAFT, b"too early")
    with pytest.raises(LocalSessionError):
        SecureSession(b"short", dialer=True, dialer_address="a:1", acceptor_address="b:1")


def test_factory_and_addresses_are_checked() -> None:
    with pytest.raises(ValueError, match="key"):
        secure_transport_class(b"short")
    with pytest.raises(ValueError, match="node id"):
        secure_transport_class(KEY, node_id=-1)
    with pytest.raises(ValueError, match="max_frame_size"):
        secure_transport_class(KEY, max_frame_size=10)
    assert split_address("[::1]:9001") == ("::1", 9001)
    assert RaftNode("127.0.0.1:9001").port == 9001
    for bad in ("127.0.0.1", "127.0.0.1:0", ":9001", "host:x", "h:70000"):
        with pytest.raises(ValueError):
            RaftNode(bad)
    with pytest.raises(TypeError, match="secure_transport_class"):
        SecureTransport(None, None, [])


def _id_pair(dialer_id: str | None, acceptor_id: str | None) -> tuple[SecureSession, SecureSession]:
    dialer = SecureSession(
        KEY,
        dialer=True,
        dialer_address="10.0.0.1:9001",
        acceptor_address="10.0.0.2:9001",
        cluster_id=dialer_id,
    )
    acceptor = SecureSession(
        KEY,
        dialer=False,
        dialer_address="10.0.0.1:9001",
        acceptor_address="10.0.0.2:9001",
        cluster_id=acceptor_id,
    )
    return dialer, acceptor


def test_session_refuses_a_peer_of_another_cluster_sharing_the_key() -> None:
    # The dialer learns it from the acceptor's AUTH frame and sends nothing more.
    dialer, acceptor = _id_pair("a" * 32, "b" * 32)
    _pump(dialer, acceptor)
    with pytest.raises(ClusterMismatch) as caught:
        _pump(acceptor, dialer)
    assert (caught.value.ours, caught.value.theirs) == ("a" * 32, "b" * 32)
    assert dialer.state is SessionState.BROKEN and dialer.other_cluster
    assert dialer.data_to_send() == []  # no AUTH frame of ours: the acceptor gets no session
    # The acceptor checks the dialer's AUTH frame too (a dialer that did not check, say).
    dialer, acceptor = _id_pair(None, "b" * 32)
    dialer._auth_body += b"\0" + b"a" * 32  # what a dialer of cluster A sends
    _pump(dialer, acceptor)
    assert _pump(acceptor, dialer) == [SessionEvent.AUTHENTICATED]
    with pytest.raises(ClusterMismatch):
        _pump(dialer, acceptor)
    assert acceptor.state is SessionState.BROKEN and acceptor.other_cluster


@pytest.mark.parametrize(
    ("dialer_id", "acceptor_id"), [("a" * 32, "a" * 32), (None, "a" * 32), ("a" * 32, None)]
)
def test_session_takes_the_same_cluster_or_a_peer_without_an_id(
    dialer_id: str | None, acceptor_id: str | None
) -> None:
    dialer, acceptor = _id_pair(dialer_id, acceptor_id)
    assert _pump(dialer, acceptor) == []
    assert _pump(acceptor, dialer) == [SessionEvent.AUTHENTICATED]
    assert _pump(dialer, acceptor) == [SessionEvent.AUTHENTICATED]
    assert dialer.peer_cluster_id == acceptor_id and acceptor.peer_cluster_id == dialer_id
    for data in dialer.seal(FrameKind.RAFT, b"raft"):
        acceptor.receive_data(data)
    assert acceptor.next_event() == b"raft"
