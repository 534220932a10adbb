"""Message framing: the 8-byte header and an incremental frame buffer (§1.3).

:class:`FrameBuffer` takes bytes in arbitrary chunks and yields whole frames.  It
enforces a hard limit on the body size it will accept, so a peer cannot make us
allocate gigabytes by announcing a huge ``words`` value.
"""

from __future__ import annotations

import mmap
import struct

from .constants import HEADER_SIZE, WORD_SIZE
from .errors import LocalProtocolError, MessageTooLarge, RemoteProtocolError
from .record import record

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Frame",
    "FrameBuffer",
    "encode_frame",
    "encode_header",
]

#: Default limit on an incoming message body: 64 MiB.  SQLite allows values of up
#: to ~1e9 bytes, but a server that accepts that from anyone is an open door.
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

#: Bodies of this size or more are collected in a buffer of their own (see FrameBuffer).
LARGE_BODY = 1024 * 1024

_HEADER = struct.Struct("<IBBH")
# Bodies up to this size are copied out through a slice (see next_frame).
_SMALL_BODY = 4096
_MAX_WORDS = 0xFFFF_FFFF


@record
class Frame:
    """One message as it travels: header fields and the raw body."""

    type: int
    schema: int
    body: bytes
    extra: int = 0


def encode_header(type_: int, schema: int, body_size: int) -> bytes:
    """Return the 8-byte header for a body of ``body_size`` bytes.

    Raises:
        LocalProtocolError: the body is not whole words or is too large.
    """
    if body_size % WORD_SIZE:
        raise LocalProtocolError(f"body of {body_size} bytes is not a whole number of words")
    words = body_size // WORD_SIZE
    if words > _MAX_WORDS:
        raise LocalProtocolError(f"body of {body_size} bytes exceeds the 32-bit word count")
    return _HEADER.pack(words, type_, schema, 0)


def encode_frame(type_: int, schema: int, body: bytes) -> bytes:
    """Return header and body of one message."""
    return encode_header(type_, schema, len(body)) + body


class FrameBuffer:
    """Accumulates received bytes and cuts them into frames.

    A large body (:data:`LARGE_BODY` bytes or more) is not grown by appending: once
    its header is at the front, the body is collected in one buffer of exactly the
    announced size, whose memory the system provides page by page as bytes arrive
    and takes back whole when the frame is handed out.  Appending to a growing
    buffer would copy it at every reallocation and leave fragments of it behind in
    the allocator; a server receiving many large requests at once would hold far
    more memory than the bytes it received.

    Args:
        max_body_size: bodies larger than this raise :class:`MessageTooLarge`
            as soon as their header arrives, before any of the body is buffered.
        allow_empty: accept 0-word bodies; the C server aborts or hangs on them
            (§1.3), so a server should treat them as a protocol violation.
    """

    __slots__ = (
        "_allow_empty",
        "_buf",
        "_large",
        "_large_filled",
        "_large_header",
        "_max_body_size",
    )

    def __init__(
        self, max_body_size: int = DEFAULT_MAX_MESSAGE_SIZE, *, allow_empty: bool = False
    ) -> None:
        self._buf = bytearray()
        self._max_body_size = max_body_size
        self._allow_empty = allow_empty
        # The large body being collected: its header, buffer and how much arrived.
        self._large_header = b""
        self._large: mmap.mmap | None = None
        self._large_filled = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        large = self._large
        if large is not None:
            view = memoryview(data).cast("B")
            take = min(len(view), len(large) - self._large_filled)
            large[self._large_filled : self._large_filled + take] = view[:take]
            self._large_filled += take
            data = view[take:]
        self._buf += data

    def __len__(self) -> int:
        if self._large is None:
            return len(self._buf)
        return len(self._large_header) + self._large_filled + len(self._buf)

    def take(self, n: int) -> bytes | None:
        """Remove and return the first ``n`` raw bytes, or None if fewer are buffered."""
        self._end_large()
        if len(self._buf) < n:
            return None
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def take_all(self) -> bytes:
        """Remove and return everything buffered (e.g. bytes after a CONNECT)."""
        self._end_large()
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def announced_size(self) -> int | None:
        """The body size the first buffered header announces, or None before a whole header.

        Lets a server decide, before it reads the body, whether it can afford it.
        """
        if self._large is not None:
            return len(self._large)
        if len(self._buf) < HEADER_SIZE:
            return None
        words: int = _HEADER.unpack_from(self._buf, 0)[0]
        return words * WORD_SIZE

    def buffered_types(self) -> list[int]:
        """The type codes of the whole frames buffered now, without consuming them."""
        if self._large is not None:
            return []  # the first frame is not whole yet
        types = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= HEADER_SIZE:
            words, type_, _, _ = _HEADER.unpack_from(buf, pos)
            end = pos + HEADER_SIZE + words * WORD_SIZE
            if words * WORD_SIZE > self._max_body_size or end > len(buf):
                break
            types.append(type_)
            pos = end
        return types

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None if more bytes are needed.

        Raises:
            MessageTooLarge: the announced body exceeds the limit.
            RemoteProtocolError: the header announces an empty body.
        """
        large = self._large
        if large is not None:
            if self._large_filled < len(large):
                return None
            _, type_, schema, extra = _HEADER.unpack(self._large_header)
            body = large[:]
            large.close()
            self._large = None
            self._large_header = b""
            return Frame(type_, schema, body, extra)
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return None
        words, type_, schema, extra = _HEADER.unpack_from(buf, 0)
        size = words * WORD_SIZE
        if size > self._max_body_size:
            raise MessageTooLarge(
                f"message of {size} bytes exceeds the limit of {self._max_body_size} bytes"
            )
        if size == 0 and not self._allow_empty:
            raise RemoteProtocolError(f"message of type {type_} has an empty body")
        end = HEADER_SIZE + size
        if len(buf) < end:
            if size >= LARGE_BODY:
                self._start_large(size)
            return None
        if size <= _SMALL_BODY:
            body = bytes(buf[HEADER_SIZE:end])  # two small copies cost less than a view
        else:
            # One copy of the body, not two (a slice of a bytearray is a copy already).
            with memoryview(buf) as view:
                body = bytes(view[HEADER_SIZE:end])
        del buf[:end]
        return Frame(type_, schema, body, extra)

    def _start_large(self, size: int) -> None:
        """Move the frame at the front, not whole yet, into a buffer of its own."""
        buf = self._buf
        # An anonymous mapping: zero pages cost nothing until written, and closing it
        # returns all of it at once.  No file or I/O is involved.
        large = mmap.mmap(-1, size)
        filled = len(buf) - HEADER_SIZE
        large[:filled] = buf[HEADER_SIZE:]
        self._large_header = bytes(buf[:HEADER_SIZE])
        self._large = large
        self._large_filled = filled
        buf.clear()

    def _end_large(self) -> None:
        """Put a large frame being collected back in front of the plain buffer."""
        large = self._large
        if large is None:
            return
        self._buf[:0] = self._large_header + large[: self._large_filled]
        large.close()
        self._large = None
        self._large_header = b""
