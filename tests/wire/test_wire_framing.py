"""The frame buffer: large bodies in a buffer of their own, and what a server can ask of it."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dqlitepy.wire import (
    PROTOCOL_VERSION,
    ExecSqlRequest,
    FrameBuffer,
    Incoming,
    LeaderRequest,
    ServerConnection,
    encode_frame,
    encode_message,
)
from dqlitepy.wire.framing import LARGE_BODY

_BIG = encode_frame(8, 0, bytes(range(256)) * (LARGE_BODY // 256 + 3))
_SMALL = encode_frame(2, 1, b"12345678")


def _cuts(data: bytes, rng: random.Random, largest: int) -> list[bytes]:
    pieces = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, largest)
        pieces.append(data[pos : pos + step])
        pos += step
    return pieces


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), largest=st.sampled_from([997, 65536, 300_000, 3_000_000]))
def test_large_bodies_come_out_whole_whatever_the_cuts(seed: int, largest: int) -> None:
    stream = _SMALL + _BIG + _SMALL + _BIG + _BIG + _SMALL
    frames = FrameBuffer()
    out = []
    for piece in _cuts(stream, random.Random(seed), largest):
        frames.feed(piece)
        while (frame := frames.next_frame()) is not None:
            out.append(encode_frame(frame.type, frame.schema, frame.body))
    assert b"".join(out) == stream
    assert len(frames) == 0


def test_announced_size_and_length_while_a_large_body_arrives() -> None:
    frames = FrameBuffer()
    frames.feed(_BIG[:5])
    assert frames.announced_size() is None
    frames.feed(_BIG[5 : 8 + 1000])
    assert frames.next_frame() is None  # the body moves to a buffer of its own
    assert frames.announced_size() == len(_BIG) - 8
    assert len(frames) == 8 + 1000
    assert frames.buffered_types() == []
    frames.feed(_BIG[8 + 1000 :] + _SMALL)
    assert len(frames) == len(_BIG) + len(_SMALL)
    frame = frames.next_frame()
    assert frame is not None and frame.body == _BIG[8:]
    assert frames.buffered_types() == [2]


def test_take_all_gives_back_a_large_frame_being_collected() -> None:
    frames = FrameBuffer()
    frames.feed(_BIG[:2000])
    assert frames.next_frame() is None
    frames.feed(_BIG[2000:3000])
    assert frames.take_all() == _BIG[:3000]
    assert len(frames) == 0


def test_server_connection_reports_the_incoming_message() -> None:
    conn = ServerConnection()
    assert conn.incoming() == Incoming(0, None)  # a new connection owes its version
    conn.receive_data(PROTOCOL_VERSION.to_bytes(8, "little")[:3])
    assert conn.incoming() == Incoming(3, None)
    conn.receive_data(PROTOCOL_VERSION.to_bytes(8, "little")[3:])
    conn.next_event()
    assert conn.incoming() is None  # idle
    message = encode_message(ExecSqlRequest(0, "x" * 100))
    conn.receive_data(message[:4])
    assert conn.incoming() == Incoming(4, None)
    conn.receive_data(message[4:20])
    assert conn.incoming() == Incoming(20, len(message) - 8)


@pytest.mark.parametrize("size", [LARGE_BODY - 8, LARGE_BODY, 4 * LARGE_BODY])
def test_sizes_around_the_threshold(size: int) -> None:
    frame = encode_frame(9, 0, b"\x01" * size)
    frames = FrameBuffer()
    out = []
    for piece in _cuts(frame + encode_message(LeaderRequest()), random.Random(size), 65536):
        frames.feed(piece)
        while (got := frames.next_frame()) is not None:
            out.append(got)
    assert [(f.type, len(f.body)) for f in out] == [(9, size), (0, 8)]
    assert out[0].body == b"\x01" * size
