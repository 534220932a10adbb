"""What the clients saw: operations with times and outcomes, and the figures of a run.

Outcomes follow the driver's promise (docs/architecture.md, "What users see"): an error says
an operation *provably did not run* (``fail``) only for a request the node refused before
running it (not leader), for no leader found, for a connection lost before the request left,
and for "database is locked".  Every other error leaves the outcome unknown (``info``): a
request that may have run is never counted as not run.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import dqlitepy

__all__ = [
    "Event",
    "Recorder",
    "Status",
    "Window",
    "error_kind",
    "outcome_of",
    "recovery_time",
    "unavailability",
]

_SQLITE_BUSY = 5

Status = Literal["ok", "fail", "info"]


def outcome_of(exc: BaseException) -> Status:
    """``fail`` if ``exc`` proves the operation did not run, else ``info``."""
    if isinstance(exc, dqlitepy.ConnectionLostError):
        return "info" if exc.request_sent else "fail"
    if isinstance(exc, (dqlitepy.NotLeaderError, dqlitepy.NoLeaderError)):
        return "fail"
    code = getattr(exc, "sqlite_errorcode", None)
    if (
        isinstance(exc, dqlitepy.OperationalError)
        and code is not None
        and code & 0xFF == _SQLITE_BUSY
    ):
        return "fail"
    return "info"


def error_kind(exc: BaseException) -> str:
    """A short name for a kind of error, for counting."""
    if isinstance(exc, dqlitepy.ConnectionLostError):
        return f"ConnectionLostError(request_sent={exc.request_sent})"
    name = getattr(exc, "sqlite_errorname", None)
    return f"{type(exc).__name__}[{name}]" if name else type(exc).__name__


@dataclass(frozen=True, slots=True)
class Event:
    """One completed client operation of any workload.

    Attributes:
        workload: ``register``, ``bank`` or ``append``.
        process: the client.
        kind: what it did (``read``, ``write``, ``transfer``, ``append``, ...).
        invoke: monotonic time it was sent.
        complete: monotonic time its outcome was known.
        status: ``ok``, ``fail`` or ``info``.
        error: the kind of error (:func:`error_kind`), if any.
    """

    workload: str
    process: int
    kind: str
    invoke: float
    complete: float
    status: Status
    error: str | None = None


@dataclass
class Recorder:
    """A thread-safe log of :class:`Event` (every workload's operations)."""

    events: list[Event] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    #: The first message of each kind of error.
    examples: dict[str, str] = field(default_factory=dict)
    #: The completion time of the latest successful operation.
    last_ok: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _processes: itertools.count[int] = field(default_factory=itertools.count)

    def process(self) -> int:
        """A new client id."""
        return next(self._processes)

    def record(
        self,
        workload: str,
        process: int,
        kind: str,
        invoke: float,
        status: Status,
        exc: BaseException | None = None,
    ) -> Event:
        """Log an operation that completes now."""
        kind_of_error = error_kind(exc) if exc is not None else None
        event = Event(workload, process, kind, invoke, time.monotonic(), status, kind_of_error)
        with self._lock:
            self.events.append(event)
            if status == "ok":
                self.last_ok = event.complete
            if kind_of_error is not None:
                self.errors[kind_of_error] += 1
                self.examples.setdefault(kind_of_error, str(exc))
        return event

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)


@dataclass(frozen=True, slots=True)
class Window:
    """A span of time in which no operation of any client succeeded."""

    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start


def unavailability(
    ok_times: Sequence[float], start: float, end: float, threshold: float = 0.5
) -> list[Window]:
    """The gaps of at least ``threshold`` s between successes over ``[start, end]``.

    Args:
        ok_times: completion times of the successful operations (any order).
        start: when the clients began (a gap before the first success counts).
        end: when the measurement ends.
        threshold: shorter gaps are the normal spacing of operations, not windows.
    """
    points = [start, *sorted(t for t in ok_times if start <= t <= end), end]
    return [Window(a, b) for a, b in itertools.pairwise(points) if b - a >= threshold]


def recovery_time(ok_times: Sequence[float], healed: float) -> float | None:
    """Seconds from ``healed`` to the first success after it (None: there was none)."""
    after = [t for t in ok_times if t >= healed]
    return min(after) - healed if after else None
