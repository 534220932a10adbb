"""A transaction larger than one Raft entry travels as parts, applied at once.

These drive :meth:`Replicated.apply` of a real node's state (its engine on a
temporary directory) with the FRAMES entries another leader would have
committed, in log order, as Raft's thread does; the Raft side of the node is
built but not started.  Page images come from a real SQLite database.
"""

from __future__ import annotations

import sqlite3
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
PAGE = 4096
OTHER_LEADER = 7


def _pages(tmp: Path, rows: int) -> tuple[list[tuple[int, bytes]], int]:
    """Every page of a database holding ``rows`` rows of t, and its size in pages."""
    path = tmp / "source.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA page_size={PAGE}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    conn.executemany("INSERT INTO t (v) VALUES (randomblob(3000))", [()] * rows)
    conn.commit()
    conn.close()
    data = path.read_bytes()
    count = len(data) // PAGE
    return [(n + 1, data[n * PAGE : (n + 1) * PAGE]) for n in range(count)], count


def _frames(
    pages: list[tuple[int, bytes]],
    size: int,
    *,
    sequence: int,
    base: int = 0,
    part: int | None = None,
    parts: int | None = None,
) -> bytes:
    command: dict[str, Any] = {
        "v": 1,
        "t": "frames",
        "db": "app",
        "base": base,
        "origin": [OTHER_LEADER, sequence],
        "ps": PAGE,
        "size": size,
        "pages": [[n, p] for n, p in pages],
    }
    if parts is not None:
        command.update(part=part, parts=parts)
    return cbor2.dumps(command)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Replicated]:
    engine = Engine(tmp_path / "databases")

    def replicator(apply: Any, on_leadership: Any) -> Replicator:
        return Replicator("127.0.0.1:1", tmp_path, [], node_id=1, cluster_key=KEY, apply=apply)

    state = Replicated(engine, replicator, node_id=1)
    state.fsm.start()  # Raft stays stopped: the test plays its thread
    try:
        yield state
    finally:
        state.close()


def _rows(node: Replicated) -> int:
    assert node.wait_idle(10)
    path = node.engine.path("app")
    if not path.exists():
        return 0
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        conn.close()


def test_a_big_transaction_is_cut_into_parts_of_at_most_part_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(commands, "PART_BYTES", 3 * PAGE)
    pages = tuple((n, bytes(PAGE)) for n in range(1, 11))
    parts = commands.split_pages(pages)
    assert [len(p) for p in parts] == [3, 3, 3, 1]
    assert [page for part in parts for page in part] == list(pages)
    assert commands.split_pages(((1, bytes(5 * PAGE)),)) == [[(1, bytes(5 * PAGE))]]
    assert commands.split_pages(pages[:3]) == [list(pages[:3])]  # fits: one part
    assert commands.split_pages(()) == [[]]


def test_the_frames_encoding_is_the_logs_format() -> None:
    # Entries in existing logs were written with pages as [number, image] arrays:
    # the encoder (which passes the pages' tuples) writes the same bytes.
    pages = ((3, b"\x01" * PAGE), (1, b"\x02" * PAGE))
    expected = {
        "v": 2,
        "t": "frames",
        "db": "app",
        "base": 0,
        "origin": [1, 9],
        "ps": PAGE,
        "size": 7,
        "pages": [[3, b"\x01" * PAGE], [1, b"\x02" * PAGE]],
        "after": [1, 8],
    }
    frames = commands.Frames("app", 0, (1, 9), PAGE, 7, list(pages), after=(1, 8))
    encoded = commands.encode_frames(frames)
    assert encoded == cbor2.dumps(expected)
    assert commands.decode(encoded) == frames
    # The leader applies its own commands from the Frames it encoded: decoding
    # gives the same, whichever fields are set.
    for after, part, parts in (((1, 8), 0, 1), (None, 0, 1), (None, 1, 3), ((2, 5), 2, 3)):
        frames = commands.Frames("app", 4, (1, 9), PAGE, 7, [pages[1]], part, parts, after)
        assert commands.decode(commands.encode_frames(frames)) == frames


def test_parts_are_applied_together_when_the_last_one_commits(
    node: Replicated, tmp_path: Path
) -> None:
    pages, size = _pages(tmp_path, 40)
    thirds = [pages[0::3], pages[1::3], pages[2::3]]
    for number, third in enumerate(thirds[:2]):
        entry = _frames(third, size, sequence=1, part=number, parts=3)
        assert node.apply(2 + number, entry) == "applied"
        assert _rows(node) == 0  # nothing written before the last part
        with pytest.raises(RuntimeError, match="parts"):
            node.capture_snapshot()  # the log must keep the parts
    assert node.apply(4, _frames(thirds[2], size, sequence=1, part=2, parts=3)) == "applied"
    assert _rows(node) == 40
    node.capture_snapshot()  # nothing pending any more


def test_parts_a_deposed_leader_left_behind_are_dropped(node: Replicated, tmp_path: Path) -> None:
    pages, size = _pages(tmp_path, 20)
    assert node.apply(2, _frames(pages[:5], size, sequence=1, part=0, parts=2)) == "applied"
    assert node.apply(3, b"") is None  # the next leader's no-op
    node.capture_snapshot()  # the abandoned part holds nothing back
    # Its last part can no longer complete anything...
    assert node.apply(4, _frames(pages[5:], size, sequence=1, part=1, parts=2)) == "stale"
    assert _rows(node) == 0
    # ...and the new leader's transactions build on the state before it.
    assert node.apply(5, _frames(pages, size, sequence=2)) == "applied"
    assert _rows(node) == 20


def test_another_origin_replaces_unfinished_parts(node: Replicated, tmp_path: Path) -> None:
    pages, size = _pages(tmp_path, 20)
    assert node.apply(2, _frames(pages[:5], size, sequence=1, part=0, parts=2)) == "applied"
    assert node.apply(3, _frames(pages, size, sequence=2)) == "applied"
    assert _rows(node) == 20
    node.capture_snapshot()
