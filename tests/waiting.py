"""Bounded waits on conditions, for tests that would otherwise sleep and hope.

A fixed ``time.sleep`` before an assertion that something *happened* fails on a loaded machine
and wastes time on an idle one: :func:`wait_until` polls the condition instead, up to a
deadline, and says what it waited for when the deadline passes.

An assertion that something did *not* happen within a window cannot be made safe this way: it
passes when the code is merely slow.  Such a test needs a positive control in the same test,
showing that the same probe sees the event when it does happen (made to happen on purpose, or
a sibling that must change within the same window).

:func:`busy_threads` is the probe for "a statement is running in that server process", which a
test cannot ask the server: a thread running SQL burns CPU time, idle ones do not.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["busy_threads", "wait_until"]

_T = TypeVar("_T")


def wait_until(
    condition: Callable[[], _T],
    what: str | Callable[[], str],
    timeout: float = 10.0,
    interval: float = 0.01,
) -> _T:
    """Poll ``condition`` until it returns a true value, and return that value.

    Args:
        condition: called again and again; an exception it raises propagates at once.
        what: what is awaited ("a leader"), or a callable giving it, called only on failure
            (to describe the state at the deadline).
        timeout: seconds before giving up.
        interval: seconds between two calls.

    Raises:
        AssertionError: ``condition`` was still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {described}")
        time.sleep(interval)


def _cpu_ticks(pid: int) -> dict[str, int]:
    """Each thread's user + system CPU time, in clock ticks."""
    ticks: dict[str, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return ticks
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                # After the command name (in parentheses, may hold spaces): state is
                # field 3, utime and stime fields 14 and 15 (proc(5)).
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        ticks[tid] = int(fields[11]) + int(fields[12])
    return ticks


def busy_threads(pid: int, interval: float = 0.2, min_ticks: int = 2) -> int:
    """How many threads of process ``pid`` used at least ``min_ticks`` of CPU in ``interval``.

    Idle server threads (waiting in ``accept``, ``recv`` or on a lock) use none; a thread
    running a long statement uses nearly all it is given, even on a loaded machine.
    """
    before = _cpu_ticks(pid)
    time.sleep(interval)
    after = _cpu_ticks(pid)
    return sum(1 for tid, spent in after.items() if spent - before.get(tid, spent) >= min_ticks)
