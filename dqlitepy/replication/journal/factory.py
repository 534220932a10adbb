"""Plugging :class:`~.durable.DurableJournal` into PySyncObj, which offers no hook for it.

``SyncObj.__init__`` creates its log with ``pysyncobj.syncobj.createJournal(conf.journalFile)``;
construct the ``SyncObj`` inside :func:`durable_journal_for_syncobj` (or install
:func:`make_syncobj_journal_factory` yourself).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pysyncobj.syncobj
from pysyncobj.journal import MemoryJournal

from .durable import DurableJournal

__all__ = ["durable_journal_for_syncobj", "make_syncobj_journal_factory"]


def make_syncobj_journal_factory(*, sync: bool = True) -> Callable[[str | None], Any]:
    """Return a replacement for ``pysyncobj.syncobj.createJournal``.

    ``SyncObj.__init__`` creates its log with ``createJournal(conf.journalFile)``, looking the
    name up in ``pysyncobj.syncobj``'s module globals at that moment. The returned factory gives
    a :class:`DurableJournal` for a journal file, and PySyncObj's ``MemoryJournal`` when
    ``journalFile`` is None (a node that asked for no persistence). Install it only while a
    ``SyncObj`` is being constructed, e.g. with :func:`durable_journal_for_syncobj`.
    """

    def create_journal(journal_file: str | None) -> Any:
        if journal_file is None:
            return MemoryJournal()
        return DurableJournal(journal_file, sync=sync)

    return create_journal


_factory_lock = threading.RLock()


@contextlib.contextmanager
def durable_journal_for_syncobj(*, sync: bool = True) -> Iterator[None]:
    """Make ``SyncObj`` instances constructed inside this block use a :class:`DurableJournal`.

    The replacement is process-wide while the block runs (PySyncObj offers no per-instance
    hook), so keep the block around the constructor only. A lock serialises such blocks
    across threads; nesting in one thread is allowed.

    Example::

        with durable_journal_for_syncobj():
            node = MySyncObj(self_addr, partners, SyncObjConf(journalFile="/var/lib/x/raft.log"))
    """
    with _factory_lock:
        saved = pysyncobj.syncobj.createJournal
        pysyncobj.syncobj.createJournal = make_syncobj_journal_factory(sync=sync)
        try:
            yield
        finally:
            pysyncobj.syncobj.createJournal = saved
