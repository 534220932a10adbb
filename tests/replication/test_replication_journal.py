"""DurableJournal: the fix for PySyncObj defect 1 ("no fsync anywhere", libraries.md).

What is proven here: every Raft-relevant journal call syncs before it returns (and PySyncObj's
stock FileJournal does not: strict xfail), entries acknowledged by a process killed with SIGKILL
survive, torn tails are cut and inner damage is refused, the journal behaves exactly like
PySyncObj's MemoryJournal, and three real PySyncObj nodes replicate and restart on it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pysyncobj.journal
import pysyncobj.syncobj
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON
from pysyncobj.journal import MemoryJournal
from small_fs import fill, needs_root, small_filesystem, unfill

from dqlitepy.replication.journal import (
    HEADER_SIZE,
    DurableJournal,
    JournalCorruptError,
    JournalError,
    JournalState,
    JournalWriteError,
    durable_journal_for_syncobj,
    make_syncobj_journal_factory,
)
from dqlitepy.replication.journal.meta import read_meta_file
from dqlitepy.replication.journal.records import encode_record

REPO_ROOT = Path(__file__).resolve().parents[2]


def _fill(journal: Any, count: int, *, first: int = 1, term: int = 1, size: int = 20) -> None:
    for idx in range(first, first + count):
        journal.add(_command(idx, size), idx, term)


def _command(idx: int, size: int) -> bytes:
    seed = hashlib.sha256(str(idx).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _record_offsets(path: Path) -> list[int]:
    """Start offset of every record, parsed independently of the module under test."""
    data = path.read_bytes()
    offsets, pos = [], HEADER_SIZE
    while pos < len(data):
        offsets.append(pos)
        pos += 8 + int.from_bytes(data[pos : pos + 4], "little")
    assert pos == len(data)
    return offsets


# -- round trip -------------------------------------------------------------------------------


def test_round_trip_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "raft.journal"
    with DurableJournal(path) as journal:
        assert len(journal) == 0
        assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (0, None)
        assert journal.getRaftCommitIndex() == 1  # PySyncObj's FileJournal default
        _fill(journal, 5, term=3)
        journal.setCurrentTerm(4, "127.0.0.1:4321")
        journal.setRaftCommitIndex(3)
        entries = journal[:]
    with DurableJournal(path) as journal:
        assert journal[:] == entries
        assert journal[0] == (_command(1, 20), 1, 3)
        assert journal[-1][1:] == (5, 3)
        assert journal.getCurrentTerm() == 4
        assert journal.getVotedForNodeId() == "127.0.0.1:4321"
        assert journal.getRaftCommitIndex() == 3
        journal.setCurrentTerm(5, None)
    with DurableJournal(path) as journal:
        assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (5, None)


def test_entries_are_bytes_and_accept_bytes_like(tmp_path: Path) -> None:
    with DurableJournal(tmp_path / "j") as journal:
        journal.add(bytearray(b"ab"), 1, 1)
        journal.add(memoryview(b"cd"), 2, True)  # PySyncObj never does this; bool is an int
        assert journal[:] == [(b"ab", 1, 1), (b"cd", 2, 1)]
        assert all(type(entry[0]) is bytes and type(entry[2]) is int for entry in journal[:])
        with pytest.raises(TypeError):
            journal.add("text", 3, 1)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            journal.add(5, 3, 1)  # type: ignore[arg-type]  # bytes(5) would be 5 zero bytes
        with pytest.raises(ValueError):
            journal.add(b"x", -1, 1)
        with pytest.raises(TypeError):
            journal.setCurrentTerm(1, 42)  # type: ignore[arg-type]
        assert len(journal) == 2


def test_large_entries(tmp_path: Path) -> None:
    path = tmp_path / "j"
    big = [os.urandom(8 << 20), os.urandom(3 << 20), os.urandom(5 << 20)]
    with DurableJournal(path) as journal:
        for idx, command in enumerate(big, start=1):
            journal.add(command, idx, 2)
        journal.deleteEntriesTo(1)  # the atomic rewrite copies multi-MiB records too
    with DurableJournal(path) as journal:
        assert journal[:] == [(big[1], 2, 2), (big[2], 3, 2)]


def test_second_open_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = DurableJournal(path)
    with pytest.raises(JournalError, match="already open"):
        DurableJournal(path)
    journal.close()
    journal.close()  # idempotent
    assert journal.closed
    with pytest.raises(JournalError, match="closed"):
        journal.add(b"x", 1, 1)
    with DurableJournal(path):
        pass


# -- commit index -----------------------------------------------------------------------------


def test_commit_index_is_never_persisted_beyond_the_log(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with DurableJournal(path) as journal:
        _fill(journal, 5)
        journal.setRaftCommitIndex(9)  # ahead of the log: must not reach the disk as such
        assert journal.getRaftCommitIndex() == 9  # the caller's value is not rewritten
    with DurableJournal(path) as journal:
        assert journal.getRaftCommitIndex() == 5
        journal.setRaftCommitIndex(5)
        journal.deleteEntriesFrom(2)  # conflict truncation below the commit index
        journal.onOneSecondTimer()
    with DurableJournal(path) as journal:
        assert journal.getRaftCommitIndex() == 2


def test_commit_index_clamped_after_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with DurableJournal(path) as journal:
        _fill(journal, 3)
        journal.setRaftCommitIndex(3)
    last = _record_offsets(path)[-1]
    with open(path, "r+b") as f:
        f.truncate(last + 5)
    with DurableJournal(path) as journal:
        assert len(journal) == 2
        assert journal.getRaftCommitIndex() == 2


# -- semantics identical to MemoryJournal -----------------------------------------------------

_positions = st.integers(min_value=-6, max_value=45)
_operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.binary(max_size=40),
            st.integers(min_value=0, max_value=2**40),
            st.integers(min_value=0, max_value=2**20),
        ),
        st.tuples(st.just("add_next"), st.binary(max_size=8)),
        st.tuples(st.just("deleteEntriesFrom"), _positions),
        st.tuples(st.just("deleteEntriesTo"), _positions),
        st.tuples(st.just("clear")),
        st.tuples(st.just("reopen")),
        st.tuples(
            st.just("setCurrentTerm"),
            st.integers(min_value=0, max_value=2**31),
            st.one_of(st.none(), st.text(max_size=12)),
        ),
    ),
    max_size=40,
)


def _assert_reads_identical(ours: Any, reference: Any) -> None:
    """Every index (in range, negative, out of range) and slice reads the same from both."""

    def read(journal: Any, key: Any) -> Any:
        try:
            return ("ok", journal[key])
        except Exception as exc:  # the exception type is part of the semantics
            return ("raises", type(exc))

    n = len(reference)
    assert len(ours) == n
    for key in range(-n - 2, n + 2):
        assert read(ours, key) == read(reference, key)
    bounds = sorted({-n - 1, -2, -1, 0, 1, n // 2, n - 1, n, n + 1})
    for step in (None, 1, 2, -1, -3, 0):
        for start in [None, *bounds]:
            for stop in [None, *bounds]:
                key = slice(start, stop, step)
                assert read(ours, key) == read(reference, key), key


@settings(max_examples=300, deadline=None)
@given(operations=_operations)
def test_same_semantics_as_memory_journal(operations: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "j")
        ours = DurableJournal(path, sync=False)
        reference = MemoryJournal()
        term_and_vote: tuple[int, str | None] = (0, None)
        try:
            for operation in operations:
                name, args = operation[0], operation[1:]
                if name == "reopen":
                    ours.close()
                    ours = DurableJournal(path, sync=False)
                elif name == "add_next":  # what PySyncObj does: consecutive indexes
                    idx = reference[-1][1] + 1 if len(reference) else 1
                    ours.add(args[0], idx, 1)
                    reference.add(args[0], idx, 1)
                else:
                    getattr(ours, name)(*args)
                    getattr(reference, name)(*args)
                    if name == "setCurrentTerm":
                        term_and_vote = (args[0], args[1])
                assert ours[:] == reference[:]
                assert (ours.getCurrentTerm(), ours.getVotedForNodeId()) == term_and_vote
            _assert_reads_identical(ours, reference)
            ours.close()
            with DurableJournal(path, sync=False) as reopened:
                _assert_reads_identical(reopened, reference)
                assert (reopened.getCurrentTerm(), reopened.getVotedForNodeId()) == term_and_vote
        finally:
            ours.close()


def test_deletes_take_list_positions_like_syncobj(tmp_path: Path) -> None:
    # After compaction the first entry's Raft index is not 1: SyncObj converts indexes to
    # positions (``idx - journal[0][1]``) before calling deleteEntriesFrom/deleteEntriesTo.
    with DurableJournal(tmp_path / "j") as journal:
        _fill(journal, 10, first=100)
        journal.deleteEntriesTo(3)  # keep Raft indexes 103..109
        assert [e[1] for e in journal[:]] == list(range(103, 110))
        journal.deleteEntriesFrom(105 - journal[0][1])
        assert [e[1] for e in journal[:]] == [103, 104]
        journal.add(b"new", 105, 2)
    with DurableJournal(tmp_path / "j") as journal:
        assert [e[1:] for e in journal[:]] == [(103, 1), (104, 1), (105, 2)]


def test_compaction_past_the_end_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The shape of PySyncObj defect 3: a stale compaction point beyond the log's end empties it.
    with DurableJournal(tmp_path / "j") as journal:
        _fill(journal, 2, first=989)
        with caplog.at_level(logging.ERROR, logger="dqlitepy.replication.journal"):
            journal.deleteEntriesTo(10)
        assert len(journal) == 0
        assert "empties the log" in caplog.text


def test_interrupted_rewrite_leaves_the_journal_intact(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with DurableJournal(path) as journal:
        _fill(journal, 4)
        entries = journal[:]
    Path(str(path) + ".tmp").write_bytes(b"half a rewrite")  # crash before the rename
    Path(str(path) + ".meta.tmp").write_bytes(b"half a metadata update")
    with DurableJournal(path) as journal:
        assert journal[:] == entries
    assert not os.path.exists(str(path) + ".tmp")
    assert not os.path.exists(str(path) + ".meta.tmp")


# -- torn tails and corruption ----------------------------------------------------------------


def _three_entry_journal(path: Path, last_size: int = 300) -> tuple[bytes, list[Any]]:
    with DurableJournal(path) as journal:
        journal.add(_command(1, 50), 1, 1)
        journal.add(_command(2, 70), 2, 1)
        journal.add(os.urandom(last_size), 3, 2)
        journal.setCurrentTerm(2, "b")
        return path.read_bytes(), journal[:]


def test_torn_tail_at_every_byte_of_the_last_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j"
    data, entries = _three_entry_journal(path)
    last = _record_offsets(path)[-1]
    for cut in range(last, len(data) + 1):
        path.write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dqlitepy.replication.journal"):
            journal = DurableJournal(path, sync=False)
        with journal:
            expected = entries if cut == len(data) else entries[:2]
            assert journal[:] == expected, cut
            assert os.path.getsize(path) == (len(data) if cut == len(data) else last)
            assert ("truncating" in caplog.text) == (last < cut < len(data)), cut
            assert journal.getCurrentTerm() == 2
            if cut < len(data):
                journal.add(b"after repair", 3, 3)
        with DurableJournal(path, sync=False) as journal:
            assert journal[:2] == entries[:2]
            assert len(journal) == 3


def test_torn_multi_mib_record(tmp_path: Path) -> None:
    path = tmp_path / "j"
    data, entries = _three_entry_journal(path, last_size=3 << 20)
    last = _record_offsets(path)[-1]
    for cut in (last + 1, last + 9, last + 4096, len(data) - 1):
        path.write_bytes(data[:cut])
        with DurableJournal(path, sync=False) as journal:
            assert journal[:] == entries[:2]


def test_zero_filled_and_headerless_tails(tmp_path: Path) -> None:
    path = tmp_path / "j"
    data, entries = _three_entry_journal(path)
    last = _record_offsets(path)[-1]
    # The file grew but the data never reached the disk: zeros.
    path.write_bytes(data + bytes(4096))
    with DurableJournal(path, sync=False) as journal:
        assert journal[:] == entries
    # The sectors of the last write persisted out of order: its header is still zeros.
    path.write_bytes(data[:last] + bytes(8) + data[last + 8 :])
    with DurableJournal(path, sync=False) as journal:
        assert journal[:] == entries[:2]


def test_damaged_last_record_is_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "j"
    data, entries = _three_entry_journal(path)
    damaged = bytearray(data)
    damaged[-10] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with caplog.at_level(logging.WARNING, logger="dqlitepy.replication.journal"):
        journal = DurableJournal(path)
    with journal:
        assert journal[:] == entries[:2]
    assert "torn or damaged last record" in caplog.text


def test_flipped_byte_inside_the_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    data, _ = _three_entry_journal(path)
    offsets = _record_offsets(path)
    for position in range(0, offsets[-1]):  # file header and every byte of the inner records
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        if position < HEADER_SIZE:
            expected = "bad magic" if position < 8 else "version" if position < 12 else "flags"
            with pytest.raises(JournalError, match=expected):
                DurableJournal(path, sync=False)
        else:
            with pytest.raises(JournalCorruptError, match="corruption inside the journal"):
                DurableJournal(path, sync=False)
        # The refused journal was left untouched for a human or a peer to deal with.
        assert path.read_bytes() == bytes(damaged)


def test_valid_checksum_but_foreign_payload_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with DurableJournal(path):
        pass
    payload = cbor2.dumps({"not": "an entry"})
    record = len(payload).to_bytes(4, "little") + zlib.crc32(payload).to_bytes(4, "little")
    with open(path, "ab") as f:
        f.write(record + payload)
    with pytest.raises(JournalCorruptError, match="not an \\[idx, term, command\\] entry"):
        DurableJournal(path)


def test_interrupted_metadata_update_keeps_the_previous_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j"
    with DurableJournal(path) as journal:
        journal.setCurrentTerm(7, "a")  # sequence 1: slot 1
        journal.setCurrentTerm(8, "b")  # sequence 2: slot 0
    meta = Path(str(path) + ".meta")
    data = meta.read_bytes()
    assert len(data) == 8192
    # A crash while writing sequence 2 (setCurrentTerm(8) had not returned: no vote was sent).
    torn = bytearray(data)
    torn[20:4096] = os.urandom(4076)
    meta.write_bytes(bytes(torn))
    with caplog.at_level(logging.WARNING, logger="dqlitepy.replication.journal"):
        journal = DurableJournal(path)
    with journal:
        assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (7, "a")
        journal.setCurrentTerm(9, "c")  # overwrites the damaged slot, not the good one
    assert "metadata slot 0 is damaged" in caplog.text
    with DurableJournal(path) as journal:
        assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (9, "c")


def test_damaged_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with DurableJournal(path) as journal:
        journal.add(b"x", 1, 1)
        journal.setCurrentTerm(7, "a")
        journal.setCurrentTerm(8, "b")
    meta = Path(str(path) + ".meta")
    data = meta.read_bytes()
    # Falling back to "term 0, no vote" could let the node vote twice in a term.
    both = bytearray(data)
    both[40] ^= 0x01
    both[4096 + 40] ^= 0x01
    meta.write_bytes(bytes(both))
    with pytest.raises(JournalCorruptError, match="both metadata slots are damaged"):
        DurableJournal(path)
    meta.write_bytes(data[:4096])
    with pytest.raises(JournalCorruptError, match="not 8192"):
        DurableJournal(path)
    meta.unlink()
    with pytest.raises(JournalCorruptError, match="missing but the journal holds entries"):
        DurableJournal(path)


def test_commit_index_lowered_on_disk_before_the_log_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with DurableJournal(path) as journal:
        _fill(journal, 5)
        journal.setRaftCommitIndex(5)
        journal.onOneSecondTimer()
        assert read_meta_file(str(path) + ".meta")[1].commit == 5
        journal.deleteEntriesFrom(2)  # no timer, no close: the file must already say <= 2
        assert read_meta_file(str(path) + ".meta")[1].commit == 2
        assert journal.getRaftCommitIndex() == 2
        journal.clear()
        assert journal.getRaftCommitIndex() == 1
        # The file is replaced by the next add, which lowers the stored value first.
        _fill(journal, 5, first=10)  # the log grows back: the old commit index is not revived
        assert read_meta_file(str(path) + ".meta")[1].commit == 0
        journal.onOneSecondTimer()
        assert read_meta_file(str(path) + ".meta")[1].commit <= 1


def test_record_payload_is_exactly_cbor2_dumps() -> None:
    # Records are built without cbor2 (no copy of the command); the bytes must not differ.
    sizes = [0, 1, 23, 24, 255, 256, 65535, 65536, 70000, 1 << 20]
    numbers = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
    for size in sizes:
        command = os.urandom(size)
        for number in numbers:
            header, *parts = encode_record(command, number, number // 3)
            payload = b"".join(parts)
            assert payload == cbor2.dumps([number, number // 3, command]), (size, number)
            crc = zlib.crc32(payload)
            assert header == len(payload).to_bytes(4, "little") + crc.to_bytes(4, "little")
    with pytest.raises(ValueError):
        encode_record(b"", 2**64, 0)


def test_stock_pysyncobj_journal_file_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "j"
    stock = pysyncobj.journal.FileJournal(str(path))
    stock.add(b"x", 1, 1)
    stock._destroy()
    with pytest.raises(JournalError, match="PySyncObj FileJournal"):
        DurableJournal(path)


def _failing(code: int) -> Callable[..., Any]:
    def fail(*args: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


def test_io_error_fails_the_journal_until_a_probe_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j"
    journal = DurableJournal(path)
    _fill(journal, 2)
    size = path.stat().st_size
    monkeypatch.setattr(os, "fdatasync", _failing(errno.EIO))
    with pytest.raises(JournalWriteError, match="could not append entry 3") as failed:
        journal.add(b"x", 3, 1)
    # The record was written and then cut off again, but that cut could not be synced either.
    assert failed.value.stored is None and not failed.value.full
    assert path.stat().st_size == size
    assert len(journal) == 2  # not acknowledged, so not in the log PySyncObj sees
    assert journal.state is JournalState.FAILED and not journal.writable
    # Every write is refused, and says it stored nothing.
    for write in (
        lambda: journal.add(b"x", 3, 1),
        lambda: journal.setCurrentTerm(5, "a"),
        lambda: journal.deleteEntriesFrom(1),
    ):
        with pytest.raises(JournalWriteError, match="refused writes") as refused:
            write()
        assert refused.value.stored is False
    assert journal.getCurrentTerm() == 0
    assert not journal.probe()  # the storage still fails
    assert journal.state is JournalState.FAILED
    monkeypatch.undo()
    assert journal.probe()
    assert journal.state is JournalState.OPEN and journal.failure is None
    assert not (tmp_path / "j.probe").exists()
    journal.add(b"x", 3, 1)
    journal.close()
    with DurableJournal(path) as reopened:
        assert [e[1] for e in reopened[:]] == [1, 2, 3]


def test_a_full_disk_during_an_append_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j"
    journal = DurableJournal(path)
    _fill(journal, 2)
    size = path.stat().st_size
    real_pwrite = os.pwrite

    def short_pwritev(fd: int, buffers: list[bytes], offset: int) -> int:
        # Part of the record reaches the file, then the disk is full.
        return real_pwrite(fd, b"".join(buffers)[:7], offset)

    monkeypatch.setattr(os, "pwritev", short_pwritev)
    monkeypatch.setattr(os, "pwrite", _failing(errno.ENOSPC))
    with pytest.raises(JournalWriteError) as failed:
        journal.add(b"y" * 100, 3, 1)
    assert failed.value.stored is False and failed.value.full
    assert path.stat().st_size == size  # the partial record was cut off (and synced)
    assert not journal.probe()  # no room for the probe file either
    monkeypatch.undo()
    assert journal.probe()
    journal.add(b"y" * 100, 3, 1)
    journal.close()
    with DurableJournal(path) as reopened:
        assert [e[1] for e in reopened[:]] == [1, 2, 3]


def test_a_failed_term_write_keeps_the_old_term(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j"
    journal = DurableJournal(path)
    _fill(journal, 1)
    journal.setCurrentTerm(3, "a")
    monkeypatch.setattr(os, "fdatasync", _failing(errno.EIO))
    with pytest.raises(JournalWriteError):
        journal.setCurrentTerm(4, "b")
    assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (3, "a")
    monkeypatch.undo()
    assert journal.probe()  # rewrites the metadata with what memory holds
    journal.close()
    with DurableJournal(path) as reopened:
        assert (reopened.getCurrentTerm(), reopened.getVotedForNodeId()) == (3, "a")


def test_a_failed_add_after_clear_keeps_the_old_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PySyncObj installs a snapshot with clear(), add(), add(): an empty log after a failed
    # add() would make every later tick fail (journal[-1]).
    path = tmp_path / "j"
    journal = DurableJournal(path)
    _fill(journal, 3)
    before = journal[:]
    journal.clear()
    monkeypatch.setattr(os, "pwritev", _failing(errno.ENOSPC))
    with pytest.raises(JournalWriteError) as failed:
        journal.add(b"snapshot", 10, 2)
    assert failed.value.stored is False
    assert journal[:] == before
    monkeypatch.undo()
    assert journal.probe()
    journal.clear()
    journal.add(b"snapshot", 10, 2)
    journal.add(b"next", 11, 2)
    journal.close()
    with DurableJournal(path) as reopened:
        assert reopened[:] == [(b"snapshot", 10, 2), (b"next", 11, 2)]


def test_probe_of_an_open_journal_fails_it_when_there_is_no_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = DurableJournal(tmp_path / "j", probe_bytes=4096)
    _fill(journal, 1)
    assert journal.probe() and journal.writable
    monkeypatch.setattr(os, "pwritev", _failing(errno.EDQUOT))
    assert not journal.probe()
    assert journal.state is JournalState.FAILED
    failure = journal.failure
    assert failure is not None and failure.errno == errno.EDQUOT
    with pytest.raises(JournalWriteError) as refused:
        journal.add(b"x", 2, 1)
    assert refused.value.full
    monkeypatch.undo()
    assert journal.probe()
    journal.close()
    assert not journal.probe()  # closed: never writable again


@needs_root
def test_a_journal_on_a_full_file_system_recovers_when_space_is_freed() -> None:
    with small_filesystem(4) as disk:
        journal = DurableJournal(disk / "j")
        try:
            _fill(journal, 3)
            fill(disk)
            with pytest.raises(JournalWriteError) as failed:
                journal.add(_command(4, 256 * 1024), 4, 1)
            assert failed.value.full and failed.value.stored is False
            assert len(journal) == 3
            assert not journal.probe()
            unfill(disk)
            assert journal.probe()
            journal.add(_command(4, 256 * 1024), 4, 1)
        finally:
            journal.close()
        with DurableJournal(disk / "j") as reopened:
            assert [e[1] for e in reopened[:]] == [1, 2, 3, 4]


# -- durability: syncs counted, stock FileJournal as the counter-example -----------------------


@pytest.fixture
def sync_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    for name in ("fsync", "fdatasync"):
        original = getattr(os, name)

        def counting(fd: int, _name: str = name, _original: Any = original) -> None:
            calls.append(_name)
            _original(fd)

        monkeypatch.setattr(os, name, counting)
    return calls


_STOCK = pytest.param(
    "stock",
    marks=pytest.mark.xfail(strict=True, reason="PySyncObj defect 1: no fsync"),
    id="pysyncobj-FileJournal",
)

_OPERATIONS: dict[str, Callable[[Any], None]] = {
    "add": lambda journal: journal.add(b"acknowledged", 99, 2),
    "setCurrentTerm": lambda journal: journal.setCurrentTerm(3, "127.0.0.1:4322"),
    "deleteEntriesFrom": lambda journal: journal.deleteEntriesFrom(1),
    "deleteEntriesTo": lambda journal: journal.deleteEntriesTo(1),
    # clear() reaches the disk with the add that follows it (PySyncObj installing a snapshot).
    "clear": lambda journal: (journal.clear(), journal.add(b"snapshot", 50, 2)),
}


@pytest.mark.parametrize("kind", ["durable", _STOCK])
@pytest.mark.parametrize("operation", list(_OPERATIONS))
def test_each_raft_write_syncs_before_returning(
    tmp_path: Path, sync_calls: list[str], kind: str, operation: str
) -> None:
    path = str(tmp_path / "raft.journal")
    journal: Any = (
        DurableJournal(path) if kind == "durable" else pysyncobj.journal.FileJournal(path)
    )
    try:
        journal.setCurrentTerm(2, "127.0.0.1:4321")
        for repetition in range(2):  # every call, not only the first
            _fill(journal, 3, first=1 + 3 * repetition)
            before = len(sync_calls)
            _OPERATIONS[operation](journal)
            assert len(sync_calls) > before, f"{operation}() returned without fsync/fdatasync"
            if kind == "durable" and operation in ("add", "setCurrentTerm", "deleteEntriesFrom"):
                # The cost claimed in the module: exactly one data sync, no directory sync.
                assert sync_calls[before:] == ["fdatasync"]
    finally:
        journal._destroy()


def test_commit_index_is_written_lazily(tmp_path: Path, sync_calls: list[str]) -> None:
    with DurableJournal(tmp_path / "j") as journal:
        _fill(journal, 3)
        before = len(sync_calls)
        journal.setRaftCommitIndex(3)  # on every AppendEntries: must stay cheap
        assert len(sync_calls) == before
        journal.onOneSecondTimer()
        assert len(sync_calls) > before
        before = len(sync_calls)
        journal.onOneSecondTimer()  # nothing changed: nothing written
        assert len(sync_calls) == before


def test_sync_false_makes_no_sync_calls(tmp_path: Path, sync_calls: list[str]) -> None:
    with DurableJournal(tmp_path / "j", sync=False) as journal:
        _fill(journal, 3)
        journal.setCurrentTerm(1, "a")
        journal.deleteEntriesTo(1)
        journal.deleteEntriesFrom(1)
    assert sync_calls == []


_CHILD = textwrap.dedent(
    """
    import hashlib, sys
    from dqlitepy.replication.journal import DurableJournal

    def command(idx):
        size = idx * 7919 % 300_000 + 1
        seed = hashlib.sha256(str(idx).encode()).digest()
        return (seed * (size // 32 + 1))[:size]

    journal = DurableJournal(sys.argv[1])
    idx = journal[-1][1] + 1 if len(journal) else 1
    while True:
        journal.add(command(idx), idx, 7)
        sys.stdout.write(f"{idx}\\n")  # only after add() returned: "acknowledged"
        sys.stdout.flush()
        idx += 1
    """
)


def _child_command(idx: int) -> bytes:
    size = idx * 7919 % 300_000 + 1
    seed = hashlib.sha256(str(idx).encode()).digest()
    return (seed * (size // 32 + 1))[:size]


def test_entries_acknowledged_before_sigkill_survive(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    path = tmp_path / "j"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    acknowledged: set[int] = set()
    for _round in range(12):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, env=env, text=True
        )
        assert child.stdout is not None
        try:
            for _ in range(rng.randint(1, 40)):
                line = child.stdout.readline()
                assert line, f"child died early (seed {seed})"
                acknowledged.add(int(line))
            time.sleep(rng.uniform(0, 0.004))  # somewhere inside a later add()
            os.kill(child.pid, signal.SIGKILL)
            acknowledged.update(int(line) for line in child.stdout.read().split())
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        with DurableJournal(path) as journal:
            indexes = [entry[1] for entry in journal[:]]
            assert indexes == list(range(1, len(indexes) + 1)), f"seed {seed}"
            assert acknowledged <= set(indexes), f"lost {acknowledged - set(indexes)} (seed {seed})"
            for command, idx, term in journal[:]:
                assert (command, term) == (_child_command(idx), 7), f"idx {idx} (seed {seed})"


# -- a real PySyncObj cluster on DurableJournal -----------------------------------------------


class _Counter(SyncObj):  # type: ignore[misc]
    value = 0  # a class default, so that replaying the log never meets a missing attribute

    @replicated  # type: ignore[misc]
    def incr(self) -> int:
        self.value += 1
        return self.value


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _conf(journal_file: str) -> Any:
    return SyncObjConf(
        autoTick=False,  # the test drives every node from its own thread: no races
        journalFile=journal_file,
        appendEntriesUseBatch=False,
        appendEntriesPeriod=0.05,
        raftMinTimeout=0.35,
        raftMaxTimeout=0.45,
        connectionRetryTime=0.2,
        dynamicMembershipChange=False,
    )


def _run_until(nodes: list[Any], condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "cluster did not get there in time"
        for node in nodes:
            node.doTick(0.0)
        time.sleep(0.0002)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[list[Any], list[str], list[str]]]:
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(3)]
    journals = [str(tmp_path / f"node{i}.journal") for i in range(3)]
    nodes: list[Any] = []
    with durable_journal_for_syncobj():
        for i, address in enumerate(addresses):
            partners = [a for a in addresses if a != address]
            nodes.append(_Counter(address, partners, _conf(journals[i])))
    try:
        yield nodes, addresses, journals
    finally:
        for node in nodes:
            node.destroy()  # autoTick=False: closes sockets and the journal right away


def test_factory_and_context(tmp_path: Path) -> None:
    original = pysyncobj.syncobj.createJournal
    with durable_journal_for_syncobj(sync=False):
        journal = pysyncobj.syncobj.createJournal(str(tmp_path / "j"))
        assert isinstance(journal, DurableJournal) and not journal.sync
        journal.close()
        assert isinstance(pysyncobj.syncobj.createJournal(None), MemoryJournal)
    assert pysyncobj.syncobj.createJournal is original
    factory = make_syncobj_journal_factory()
    with factory(str(tmp_path / "k")) as journal:
        assert journal.sync


def test_pysyncobj_cluster_replicates_and_restarts_on_durable_journal(
    cluster: tuple[list[Any], list[str], list[str]],
) -> None:
    nodes, addresses, journals = cluster
    for node in nodes:
        assert isinstance(node._SyncObj__raftLog, DurableJournal)
    _run_until(nodes, lambda: any(node._isLeader() for node in nodes))

    results: list[tuple[Any, Any]] = []
    for i in range(100):  # through every node: followers forward to the leader
        nodes[i % 3].incr(callback=lambda result, error: results.append((result, error)))
    _run_until(nodes, lambda: len(results) == 100 and all(n.value == 100 for n in nodes))
    assert all(error == FAIL_REASON.SUCCESS for _, error in results)
    assert sorted(result for result, _ in results) == list(range(1, 101))

    # Restart a follower on the same journal file.
    victim = next(i for i, node in enumerate(nodes) if not node._isLeader())
    old_log = nodes[victim]._SyncObj__raftLog[:]
    old_term = nodes[victim]._getTerm()
    old_vote = nodes[victim]._SyncObj__raftLog.getVotedForNodeId()
    assert old_term >= 1 and len(old_log) >= 101  # initial no-op + leader no-op(s) + 100
    nodes[victim].destroy()
    assert nodes[victim]._SyncObj__raftLog.closed
    partners = [a for a in addresses if a != addresses[victim]]
    with durable_journal_for_syncobj():
        restarted = _Counter(addresses[victim], partners, _conf(journals[victim]))
    nodes[victim] = restarted
    log = restarted._SyncObj__raftLog
    assert isinstance(log, DurableJournal)
    assert log[:] == old_log
    assert restarted._getTerm() == old_term
    assert log.getVotedForNodeId() == old_vote
    # Its state machine is rebuilt from its own log, then it keeps replicating.
    _run_until(nodes, lambda: restarted.value == 100)
    more: list[tuple[Any, Any]] = []
    for _ in range(10):
        restarted.incr(callback=lambda result, error: more.append((result, error)))
    _run_until(nodes, lambda: len(more) == 10 and all(n.value == 110 for n in nodes))
    assert all(error == FAIL_REASON.SUCCESS for _, error in more)
