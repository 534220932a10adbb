"""DurableJournal.append_unsynced + flush: the leader's entries, visible before they are durable.

Real journals on real files: syncs are counted by wrapping ``os.fdatasync`` (the journal looks
it up on every call), failures injected by replacing it, and outcomes checked after reopening.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dqlitepy.replication.journal import DurableJournal, JournalState, JournalWriteError


def _entries(first: int, count: int, term: int = 1) -> list[Any]:
    return [(b"cmd-%d" % i, i, term) for i in range(first, first + count)]


@pytest.fixture
def datasyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The fds ``os.fdatasync`` was called with, in order."""
    calls: list[int] = []
    original = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        original(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


def _fail_first(monkeypatch: pytest.MonkeyPatch, times: int = 1) -> None:
    """Make the next ``times`` fdatasync calls fail with EIO; later ones work."""
    original = os.fdatasync
    left = [times]

    def failing(fd: int) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        original(fd)

    monkeypatch.setattr(os, "fdatasync", failing)


def _reopened(path: Path) -> list[Any]:
    with DurableJournal(path) as journal:
        return journal[:]


def test_unsynced_entries_are_visible_at_once_and_durable_after_one_flush(
    tmp_path: Path, datasyncs: list[int]
) -> None:
    with DurableJournal(tmp_path / "j") as journal:
        journal.add_many(_entries(1, 2))
        assert journal.durable_index == 2
        before = len(datasyncs)
        journal.append_unsynced(_entries(3, 4))
        assert datasyncs[before:] == []
        assert journal[:] == _entries(1, 6)  # the sender sees them
        assert journal.durable_index == 2  # the commit rule does not count them yet
        journal.flush()
        assert len(datasyncs) - before == 1
        assert journal.durable_index == 6
        journal.flush()  # nothing left to sync: no second sync
        assert len(datasyncs) - before == 1
    assert _reopened(tmp_path / "j") == _entries(1, 6)


def test_a_failed_flush_drops_the_entries_in_memory_and_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j"
    journal = DurableJournal(path)
    journal.add_many(_entries(1, 2))
    size = path.stat().st_size
    journal.append_unsynced(_entries(3, 3))
    _fail_first(monkeypatch)
    with pytest.raises(JournalWriteError, match=r"could not sync entries 3\.\.5") as failed:
        journal.flush()
    # The sync failed, the cut that followed worked: provably not in this journal.
    assert failed.value.stored is False
    assert journal[:] == _entries(1, 2) and journal.durable_index == 2
    assert path.stat().st_size == size
    assert journal.state is JournalState.FAILED
    monkeypatch.undo()
    assert journal.probe()
    journal.close()
    assert _reopened(path) == _entries(1, 2)


def test_a_failed_flush_whose_cut_fails_too_says_the_entries_may_be_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = DurableJournal(tmp_path / "j")
    journal.add_many(_entries(1, 1))
    journal.append_unsynced(_entries(2, 2))
    _fail_first(monkeypatch, times=2)
    with pytest.raises(JournalWriteError) as failed:
        journal.flush()
    assert failed.value.stored is None
    assert journal[:] == _entries(1, 1)  # memory never holds more than the file may
    journal.close()


def test_a_failed_write_of_unsynced_entries_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j"
    journal = DurableJournal(path)
    journal.add_many(_entries(1, 2))

    def full(*args: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwritev", full)
    with pytest.raises(JournalWriteError) as failed:
        journal.append_unsynced(_entries(3, 2))
    assert failed.value.stored is False and failed.value.full
    assert journal[:] == _entries(1, 2) and journal.durable_index == 2
    monkeypatch.undo()
    journal.close()
    assert _reopened(path) == _entries(1, 2)


@pytest.mark.parametrize(
    "mutation",
    [
        lambda j: j.setCurrentTerm(2, None),
        lambda j: j.add_many(_entries(5, 1)),
        lambda j: j.append_unsynced(_entries(5, 1)),
        lambda j: j.deleteEntriesFrom(len(j)),
        lambda j: j.close(),
    ],
    ids=["setCurrentTerm", "add_many", "append_unsynced", "deleteEntriesFrom", "close"],
)
def test_any_other_write_syncs_unsynced_entries_first(
    tmp_path: Path, datasyncs: list[int], mutation: Callable[[DurableJournal], None]
) -> None:
    journal = DurableJournal(tmp_path / "j")
    journal.add_many(_entries(1, 2))
    journal.append_unsynced(_entries(3, 2))
    fd = journal._fd
    before = len(datasyncs)
    mutation(journal)
    assert fd in datasyncs[before:]
    assert journal.durable_index is not None and journal.durable_index >= 4
    journal.close()


def test_opening_a_journal_syncs_what_a_dead_process_left_unsynced(
    tmp_path: Path, datasyncs: list[int]
) -> None:
    path = tmp_path / "j"
    with DurableJournal(path) as journal:
        journal.add_many(_entries(1, 2))
    # What append_unsynced wrote before the process died sits in the page cache: the
    # journal must make it durable before this node acknowledges it or votes on it.
    before = len(datasyncs)
    with DurableJournal(path) as journal:
        assert journal._fd in datasyncs[before:]
        assert journal.durable_index == 2
