"""DurableJournal.add_many: several entries, one write and one fdatasync, all or nothing.

Real journals on real files: the syncs are counted by wrapping ``os.fdatasync`` (the journal
looks it up on every call), failures are injected by replacing ``os.pwritev``/``os.fdatasync``
or by filling a small real file system, and every outcome is checked again after reopening.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from small_fs import fill, needs_root, small_filesystem, unfill

from dqlitepy.replication.journal import DurableJournal, JournalState, JournalWriteError
from dqlitepy.replication.journal.records import scan_records


def _command(idx: int, size: int = 20) -> bytes:
    seed = hashlib.sha256(str(idx).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _entries(first: int, count: int, *, term: int = 1, size: int = 20) -> list[Any]:
    # Sizes vary so that a wrong offset for any entry of a batch shows up.
    return [(_command(i, size + i % 7), i, term) for i in range(first, first + count)]


def _failing(code: int) -> Callable[..., Any]:
    def fail(*args: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


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


def _reopened(path: Path) -> list[Any]:
    with DurableJournal(path) as journal:
        return journal[:]


# -- success ----------------------------------------------------------------------------------


def test_a_batch_costs_one_data_sync_and_survives_reopen(
    tmp_path: Path, sync_calls: list[str]
) -> None:
    path = tmp_path / "j"
    with DurableJournal(path) as journal:
        journal.add_many(_entries(1, 3))
        before = len(sync_calls)
        journal.add_many(_entries(4, 50))
        assert sync_calls[before:] == ["fdatasync"]
        assert journal[:] == _entries(1, 53)
        before = len(sync_calls)
        journal.add(*_entries(54, 1)[0])  # add is a batch of one: the same single sync
        assert sync_calls[before:] == ["fdatasync"]
    assert _reopened(path) == _entries(1, 54)


def test_records_of_a_batch_are_at_the_right_offsets(tmp_path: Path) -> None:
    # Compaction copies records from the offsets kept in memory and truncation cuts at them:
    # both go wrong if a batch's offsets are.
    path = tmp_path / "j"
    with DurableJournal(path) as journal:
        journal.add_many(_entries(1, 10))
        journal.add_many(_entries(11, 10))
        journal.deleteEntriesTo(7)  # keeps 8..20, copied from entry 8's offset on
        journal.deleteEntriesFrom(8)  # keeps 8..15, cut at entry 16's offset
        journal.add_many(_entries(16, 3, term=2))
        expected = _entries(8, 8) + _entries(16, 3, term=2)
        assert journal[:] == expected
    assert _reopened(path) == expected


def test_a_batch_larger_than_one_pwritev_takes(tmp_path: Path, sync_calls: list[str]) -> None:
    # Three buffers per record: 2000 records are far more than IOV_MAX (1024 on Linux).
    path = tmp_path / "j"
    with DurableJournal(path) as journal:
        before = len(sync_calls)
        journal.add_many(_entries(1, 2000, size=3))
        assert sync_calls[before:] == ["fdatasync"]
        assert journal.writable and len(journal) == 2000
    assert _reopened(path) == _entries(1, 2000, size=3)


def test_commands_are_stored_as_bytes_and_bad_entries_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with DurableJournal(path) as journal:
        journal.add_many([(bytearray(b"ab"), 1, 1), (memoryview(b"cd"), 2, 1), (b"ef", 3, 1)])
        assert [type(e[0]) for e in journal[:]] == [bytes, bytes, bytes]
        size = path.stat().st_size
        for bad, error in (
            ([(b"ok", 4, 1), ("text", 5, 1)], TypeError),
            ([(b"ok", 4, 1), (b"x", -5, 1)], ValueError),
            ([(b"ok", 4, 1), (b"x", 5.0, 1)], TypeError),
        ):
            with pytest.raises(error):
                journal.add_many(bad)
            assert len(journal) == 3 and path.stat().st_size == size
        assert journal.writable  # a malformed call is not a storage failure
        journal.add_many([])  # nothing to store: nothing written
        assert path.stat().st_size == size
    assert _reopened(path) == [(b"ab", 1, 1), (b"cd", 2, 1), (b"ef", 3, 1)]


# -- failures: memory and file as before the batch, ``stored`` says which -----------------------


def test_a_failed_sync_leaves_nothing_in_memory_and_says_it_may_be_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j"
    journal = DurableJournal(path)
    journal.add_many(_entries(1, 2))
    size = path.stat().st_size
    monkeypatch.setattr(os, "fdatasync", _failing(errno.EIO))
    with pytest.raises(JournalWriteError, match=r"could not append entries 3\.\.7") as failed:
        journal.add_many(_entries(3, 5))
    # Written, then cut off again; that cut could not be synced, so it is not proven.
    assert failed.value.stored is None and not failed.value.full
    assert path.stat().st_size == size
    assert journal[:] == _entries(1, 2)
    assert journal.state is JournalState.FAILED
    with pytest.raises(JournalWriteError, match="refused writes") as refused:
        journal.add_many(_entries(3, 5))
    assert refused.value.stored is False
    monkeypatch.undo()
    assert journal.probe()
    journal.add_many(_entries(3, 5))
    journal.close()
    assert _reopened(path) == _entries(1, 7)


def test_a_full_disk_in_the_middle_of_a_batch_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j"
    journal = DurableJournal(path)
    journal.add_many(_entries(1, 2))
    size = path.stat().st_size
    real_pwritev = os.pwritev
    calls = [0]

    def full_after_the_first_group(fd: int, buffers: list[bytes], offset: int) -> int:
        # The first pwritev of the batch goes through, the next one finds the disk full.
        calls[0] += 1
        if calls[0] > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwritev(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", full_after_the_first_group)
    with pytest.raises(JournalWriteError) as failed:
        journal.add_many(_entries(3, 1000))  # 3000 buffers: several pwritev calls
    assert calls[0] == 2
    assert failed.value.stored is False and failed.value.full
    assert path.stat().st_size == size  # the first group's records were cut off (and synced)
    assert journal[:] == _entries(1, 2)
    monkeypatch.undo()
    assert journal.probe()
    journal.add_many(_entries(3, 2))
    journal.close()
    assert _reopened(path) == _entries(1, 4)


@needs_root
def test_a_batch_on_a_full_file_system_is_refused_whole_and_fits_once_space_is_freed() -> None:
    with small_filesystem(4) as disk:
        journal = DurableJournal(disk / "j")
        try:
            journal.add_many(_entries(1, 3))
            size = (disk / "j").stat().st_size
            fill(disk)
            big = [(_command(i, 64 * 1024), i, 1) for i in range(4, 8)]
            with pytest.raises(JournalWriteError) as failed:
                journal.add_many(big)
            assert failed.value.full and failed.value.stored is False
            assert journal[:] == _entries(1, 3)
            assert (disk / "j").stat().st_size == size
            assert not journal.probe()
            unfill(disk)
            assert journal.probe()
            journal.add_many(big)
        finally:
            journal.close()
        assert _reopened(disk / "j") == _entries(1, 3) + big


# -- the first batch after clear() replaces the file ------------------------------------------


def test_a_batch_after_clear_replaces_the_log(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with DurableJournal(path) as journal:
        journal.add_many(_entries(1, 5))
        journal.clear()
        journal.add_many([])  # nothing to store: the old file stays until entries come
        assert _first_index_on_disk(path) == 1
        snapshot = _entries(40, 3, term=3)
        journal.add_many(snapshot)
        assert journal[:] == snapshot
        journal.add_many(_entries(43, 2, term=3))  # appended after the batch's records
    assert _reopened(path) == snapshot + _entries(43, 2, term=3)


def _first_index_on_disk(path: Path) -> int:
    # Read the file itself, not through the journal's memory.
    return scan_records(path.read_bytes(), str(path)).entries[0][1]


def test_a_failed_batch_after_clear_keeps_the_old_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j"
    journal = DurableJournal(path)
    journal.add_many(_entries(1, 3))
    journal.clear()
    monkeypatch.setattr(os, "pwritev", _failing(errno.ENOSPC))
    with pytest.raises(JournalWriteError, match=r"replace the log by entries 10\.\.12") as failed:
        journal.add_many(_entries(10, 3, term=2))
    assert failed.value.stored is False
    assert journal[:] == _entries(1, 3)  # the old log, not an empty one
    assert not (tmp_path / "j.tmp").exists()
    monkeypatch.undo()
    assert journal.probe()
    journal.close()
    assert _reopened(path) == _entries(1, 3)
    with DurableJournal(path) as journal:
        journal.clear()
        journal.add_many(_entries(10, 3, term=2))
    assert _reopened(path) == _entries(10, 3, term=2)
