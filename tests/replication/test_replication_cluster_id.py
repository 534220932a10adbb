"""The cluster id in the Raft log: the first ``cluster`` entry counts, snapshots carry it.

These drive :meth:`Replicated.apply` of a real node's state (its engine on a temporary
directory) in log order, as Raft's thread does; the Raft side is built but not started.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from dqlitepy.engine import Engine
from dqlitepy.replication.replicator import Replicator
from dqlitepy.server import commands
from dqlitepy.server.replicated import Replicated

KEY = b"test-cluster-key-0123456789abcdef"


class _Node:
    def __init__(self, tmp: Path) -> None:
        self.told: list[str] = []
        engine = Engine(tmp / "databases")

        def replicator(apply: Any, on_leadership: Any) -> Replicator:
            return Replicator("127.0.0.1:1", tmp, [], node_id=1, cluster_key=KEY, apply=apply)

        self.state = Replicated(engine, replicator, node_id=1, on_cluster_id=self.told.append)
        self.state.fsm.start()  # Raft stays stopped: the test plays its thread


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Any]:
    nodes: list[_Node] = []

    def make(name: str) -> _Node:
        (tmp_path / name).mkdir()
        nodes.append(_Node(tmp_path / name))
        return nodes[-1]

    try:
        yield make
    finally:
        for node in nodes:
            node.state.close()


def test_the_first_cluster_id_in_the_log_counts(make_node: Any) -> None:
    node = make_node("a")
    assert node.state.fsm.cluster_id is None
    assert node.state.apply(2, commands.encode_cluster_id("a" * 32)) == "applied"
    # A second leader proposed its own before it saw the first committed: ignored.
    assert node.state.apply(3, commands.encode_cluster_id("b" * 32)) == "applied"
    assert node.state.fsm.cluster_id == "a" * 32
    assert node.told == ["a" * 32]


def test_a_snapshot_carries_the_cluster_id(make_node: Any) -> None:
    source = make_node("source")
    source.state.apply(2, commands.encode_cluster_id("c" * 32))
    out = io.BytesIO()
    source.state.capture_snapshot()(out)
    target = make_node("target")
    target.state.install_snapshot(io.BytesIO(out.getvalue()))
    assert target.state.fsm.cluster_id == "c" * 32
    assert target.told == ["c" * 32]
    # A snapshot of a version before cluster ids names none: nothing is told.
    old = make_node("old")
    state = cbor2.loads(out.getvalue())  # no database: the state is the whole snapshot
    del state["cluster_id"]
    old.state.install_snapshot(io.BytesIO(cbor2.dumps(state)))
    assert old.state.fsm.cluster_id is None and old.told == []


@pytest.mark.parametrize("bad", ["", "a\0b", 42, None])
def test_a_cluster_entry_without_a_valid_id_is_refused(make_node: Any, bad: object) -> None:
    node = make_node("a")
    entry = cbor2.dumps({"v": 1, "t": "cluster", "id": bad})
    assert node.state.apply(2, entry) == "invalid"
    assert node.state.fsm.cluster_id is None and node.told == []
