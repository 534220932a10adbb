"""A crash-safe Raft log for PySyncObj: the fix for PySyncObj defect 1, "no fsync anywhere".

PySyncObj's ``FileJournal`` keeps the log in an mmap that is never synced before a follower
acknowledges an entry or the leader counts its own copy, and writes term and vote without fsync.
Raft's safety argument assumes the opposite: an entry a node has acknowledged, and the vote it
has granted, survive a crash. :class:`DurableJournal` implements the whole journal interface
PySyncObj calls, and returns from every call that Raft relies on only once the change is on disk
(the leader's ``append_unsynced`` excepted: its entries count toward a majority only once
``flush`` returned, see :mod:`.appends`).

=====================  ==========================================================================
:mod:`.durable`        :class:`DurableJournal` and its guarantees; ``PATH.lock``, ``PATH.probe``
:mod:`.appends`        appending: synced at once, or written first and synced later (the leader)
:mod:`.states`         OPEN / FAILED / CLOSED: what a failed write does ("Write failures")
:mod:`.records`        the format of the journal file ``PATH``, and telling a torn tail from damage
:mod:`.meta`           the format of ``PATH.meta``: term, vote and commit index in two slots
:mod:`.fileio`         the system calls durability rests on (``fdatasync``, complete writes)
:mod:`.errors`         the exceptions
:mod:`.factory`        plugging it into PySyncObj
=====================  ==========================================================================

Plugging it into PySyncObj: ``SyncObj.__init__`` creates its log with
``pysyncobj.syncobj.createJournal(conf.journalFile)``; construct the ``SyncObj`` inside
:func:`durable_journal_for_syncobj` (or install :func:`make_syncobj_journal_factory` yourself).
"""

from __future__ import annotations

from .durable import DurableJournal, check_journal
from .errors import JournalCorruptError, JournalError, JournalWriteError
from .factory import durable_journal_for_syncobj, make_syncobj_journal_factory
from .records import FORMAT_VERSION, HEADER_SIZE, Entry
from .states import DEFAULT_PROBE_BYTES, JournalState

__all__ = [
    "DEFAULT_PROBE_BYTES",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "DurableJournal",
    "Entry",
    "JournalCorruptError",
    "JournalError",
    "JournalState",
    "JournalWriteError",
    "check_journal",
    "durable_journal_for_syncobj",
    "make_syncobj_journal_factory",
]
