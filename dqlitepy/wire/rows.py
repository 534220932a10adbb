"""Incremental encoding of ROWS batches, the way dqlite's server cuts them (§3.8).

dqlite keeps stepping a statement and appending rows until the message,
header included, reaches a page (4096 bytes); the check comes before each step,
so a batch overshoots by at most one row.  Every batch repeats the column
header and ends with PART, except the last, which ends with DONE and may hold
no rows at all.
"""

from __future__ import annotations

from collections.abc import Sequence

from .codec import Value, Writer
from .constants import HEADER_SIZE, MARKER_DONE, MARKER_PART, ROWS_BATCH_SIZE, ResponseType
from .framing import encode_header

__all__ = ["RowsBatchEncoder"]


class RowsBatchEncoder:
    """Builds the ROWS messages of one result.

    Usage: ``add_row`` while ``full`` is False, then ``finish(done=False)`` to
    get a PART message and start the next batch, or ``finish(done=True)`` for
    the final DONE message.

    Args:
        columns: the result's column names.
        batch_size: the message size (header included) that closes a batch.
    """

    __slots__ = ("_batch_size", "_columns", "_rows", "_writer")

    def __init__(self, columns: Sequence[str], batch_size: int = ROWS_BATCH_SIZE) -> None:
        self._columns = tuple(columns)
        self._batch_size = batch_size
        self._writer = Writer()
        self._rows = 0
        self._start()

    def _start(self) -> None:
        w = self._writer
        w.u64(len(self._columns))
        for name in self._columns:
            w.text(name)

    @property
    def rows(self) -> int:
        """Rows in the current batch."""
        return self._rows

    @property
    def full(self) -> bool:
        """True once the batch has reached the size that closes it."""
        return HEADER_SIZE + len(self._writer.buf) >= self._batch_size

    def add_row(self, types: Sequence[int], values: Sequence[Value]) -> None:
        """Append one row (types per value, see §4.1)."""
        self._writer.row(types, values)
        self._rows += 1

    def finish(self, *, done: bool) -> bytes:
        """Return the whole message for the current batch and start a new one."""
        w = self._writer
        w.u64(MARKER_DONE if done else MARKER_PART)
        body = bytes(w.buf)
        w.buf.clear()
        self._rows = 0
        self._start()
        return encode_header(ResponseType.ROWS, 0, len(body)) + body
