"""Bounds on what client connections may hold: slots, time, request and response memory.

Theory of operation (``docs/architecture.md``, "Operating safely"):

* **Slots.** A node serves at most ``max_connections`` client connections, each on
  its own thread. A connection is in one of three phases: RECEIVING (a message, or the
  protocol version of a new connection, is on its way), IDLE (between requests) or
  HANDLING (a request is being served). When a new connection arrives and every slot
  is taken, the connection that has held its slot longest without progress is closed
  to make room: the one whose current phase began earliest among those not HANDLING,
  those idle inside a transaction last (closing them rolls the transaction back).
  Nothing a closed connection sent has run: a RECEIVING request is incomplete, an
  IDLE connection has none. The new connection is refused only while every slot is
  HANDLING, which the request timeout bounds. So idle or slow clients can never lock
  others out: they lose their slots to newcomers, oldest first, while a connection
  that just arrived keeps its slot until ``max_connections`` newer ones came after it.
* **Time.** A message (and a new connection's protocol version) must arrive whole
  within ``request_timeout`` of its first byte (of the connection, for the version);
  responses follow the rule below. ``idle_timeout`` closes connections idle
  between requests; it is off by default because go-dqlite (1.11 and today) keeps
  pooled connections open indefinitely and sends no heartbeat (its heartbeat code is
  commented out), and a pooled connection the server closed fails its next query.
* **Responses.** A response is sent without blocking; when the client's socket is full
  the node waits for it (``poll``), and counts that wait, not the time spent producing
  the response. The rule (:class:`SendAllowance`): for each :data:`RESPONSE_WINDOW`
  bytes of a response (1 MiB), the node waits at most ``request_timeout`` in all for the
  client to take them in. A client that stops reading is cut at most
  ``request_timeout`` after the node started waiting for it (the stall, once the
  kernel's socket buffers are full, not the start of the response); one that trickles
  is cut once the node has waited that long for a MiB it has not finished taking in;
  one that reads steadily is served however long its result, as long as it takes in
  1 MiB per ``request_timeout`` of waiting (17 KiB/s with the default 60 s). A cut
  connection is reset (the kernel drops its unsent data) and ends like any lost
  connection: its statement stops, its transaction is rolled back, its slot is freed.
* **Memory.** A connection buffers at most one message of ``max_message_size`` bytes.
  Across the node, bodies larger than :data:`SMALL_BODY` reserve their announced size
  from a budget of ``request_memory`` bytes before they are read, and keep it until
  their request is answered. A connection that cannot get its reservation before its
  request timeout runs out is answered with a FAILURE and closed; while it waits it
  reads nothing, so its bytes stay in the kernel's socket buffers and the sender is
  slowed down by TCP. Small requests never wait, so a node whose budget is taken by
  large uploads still serves ordinary clients. A response is produced batch by batch
  as it is sent: a connection holds one ROWS batch (:data:`~dqlitepy.wire.ROWS_BATCH_SIZE`
  bytes, or one row when a row is larger) and the statement's session. When a send
  waits, and every 256 KiB of a response, the session drops the cached pages its
  statement does not hold (``sqlite3_db_release_memory``): a client that stops reading
  keeps little more than an idle connection does (about 200 KiB, most of it the SQLite
  connection), so that times ``max_connections`` bounds the node's response memory
  (``docs/server.md``; measured: 1,000 such clients add 190-200 MiB, 1,000 idle ones 196).
* **Descriptors.** Each connection holds a socket and, once it opened a database, that
  database's file, WAL and shared memory. :func:`connections_within_open_files` raises
  the process's soft ``RLIMIT_NOFILE`` to its hard limit (as Go's runtime does) and caps
  ``max_connections`` so that connections at the limit leave a reserve of descriptors
  for the node's own files, Raft links and databases: clients can then never take the
  descriptors the node needs to write.

Nothing here touches a socket: :class:`ConnectionTable` and :class:`MemoryBudget` are
driven by the listener in :mod:`dqlitepy.server.listener`, which does the I/O. Their locks
are leaves of the lock hierarchy: nothing else is taken or waited for while one is held
(the listener takes the table's lock inside its own, never the other way round).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..wire.framing import DEFAULT_MAX_MESSAGE_SIZE

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_REQUEST_MEMORY",
    "DEFAULT_REQUEST_TIMEOUT",
    "RESPONSE_WINDOW",
    "SMALL_BODY",
    "FDS_PER_CONNECTION",
    "FD_RESERVE",
    "ConnectionTable",
    "Limits",
    "MemoryBudget",
    "Phase",
    "SendAllowance",
    "Slot",
    "connections_within_open_files",
    "raise_open_file_limit",
]

log = logging.getLogger("dqlitepy.server")

#: Client connections served at once.
DEFAULT_MAX_CONNECTIONS = 1024
#: Seconds a message may take to arrive whole (and a client may make the node wait
#: while taking in each RESPONSE_WINDOW bytes of a response).
#: Generous: a 64 MiB request crosses a 10 Mbit/s link in under a minute.
DEFAULT_REQUEST_TIMEOUT = 60.0
#: Request bytes the whole node buffers at once: four messages of the largest size.
DEFAULT_REQUEST_MEMORY = 4 * DEFAULT_MAX_MESSAGE_SIZE
#: Bodies up to this size are read without a reservation (at most this much per
#: connection, i.e. 64 MiB for 1,024 connections).
SMALL_BODY = 64 * 1024
#: Response bytes a client must take in per ``request_timeout`` the node waits for it.
RESPONSE_WINDOW = 1 << 20
#: Descriptors one client connection may hold: its socket, and its database's
#: file, WAL and shared memory.
FDS_PER_CONNECTION = 4
#: Descriptors kept from clients for the node's own use (at least; an eighth of
#: the limit when that is more): its journal and databases, Raft links, logs.
FD_RESERVE = 128
# Where the soft limit goes when the hard one is unlimited (Linux's default nr_open).
_UNLIMITED_TARGET = 1 << 20


def raise_open_file_limit() -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now.

    None when the process has no such limit (or the platform no ``resource``).
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    infinity = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == infinity:
        return None
    target = _UNLIMITED_TARGET if hard == infinity else hard
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def connections_within_open_files(max_connections: int) -> int:
    """``max_connections``, capped to what the open-file limit leaves for clients.

    Raises the soft limit first (:func:`raise_open_file_limit`); logs a warning when
    the cap applies.
    """
    open_files = raise_open_file_limit()
    if open_files is None or max_connections < 1:
        return max_connections
    reserve = max(FD_RESERVE, open_files // 8)
    allowed = max(1, (open_files - reserve) // FDS_PER_CONNECTION)
    if allowed >= max_connections:
        return max_connections
    log.warning(
        "the open-file limit of %d descriptors (RLIMIT_NOFILE, e.g. LimitNOFILE= in a systemd "
        "unit) leaves room for %d client connections besides the node's own files, not the "
        "%d of --max-connections: serving at most %d; raise the limit to serve more",
        open_files,
        allowed,
        max_connections,
        allowed,
    )
    return allowed


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds one node applies to its client connections (see the module docs).

    Args:
        max_connections: client connections served at once.
        max_message_size: the largest request body a connection may send.
        idle_timeout: seconds a connection may stay idle between requests, or None
            for no limit.
        request_timeout: seconds a message may take to arrive whole after its first
            byte, and the node may wait for a client to take in each
            :data:`RESPONSE_WINDOW` bytes of a response.
        request_memory: request body bytes the node buffers at once.
    """

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    idle_timeout: float | None = None
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    request_memory: int = DEFAULT_REQUEST_MEMORY

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {self.max_connections!r}")
        if self.max_message_size < 8:
            raise ValueError(
                f"max_message_size must be at least 8 bytes, not {self.max_message_size!r}"
            )
        if self.idle_timeout is not None and not self.idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive or None, not {self.idle_timeout!r}")
        if not self.request_timeout > 0:
            raise ValueError(f"request_timeout must be positive, not {self.request_timeout!r}")
        if self.request_memory < self.max_message_size:
            raise ValueError(
                f"request_memory ({self.request_memory!r} bytes) must hold at least one "
                f"message of max_message_size ({self.max_message_size!r} bytes)"
            )


class MemoryBudget:
    """A node-wide count of reserved request bytes, with bounded waits.

    Args:
        capacity: the bytes that may be reserved at once.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._in_use = 0
        self._changed = threading.Condition(threading.Lock())

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_use(self) -> int:
        """Bytes reserved now."""
        with self._changed:
            return self._in_use

    def acquire(self, size: int, timeout: float) -> bool:
        """Reserve ``size`` bytes, waiting up to ``timeout`` seconds for them.

        Returns:
            True once reserved; False if they did not free up in time (nothing is
            reserved then).

        Raises:
            ValueError: ``size`` exceeds the whole budget (it could never fit).
        """
        if size > self._capacity:
            raise ValueError(f"{size} bytes exceed the request memory of {self._capacity} bytes")
        with self._changed:
            fits = self._changed.wait_for(
                lambda: self._in_use + size <= self._capacity, max(0.0, timeout)
            )
            if fits:
                self._in_use += size
            return fits

    def release(self, size: int) -> None:
        """Return ``size`` bytes reserved by :meth:`acquire`."""
        if size <= 0:
            return
        with self._changed:
            self._in_use -= size
            assert self._in_use >= 0, "released more request memory than was reserved"
            self._changed.notify_all()


class SendAllowance:
    """How long the node may still wait for a client to take in the response it sends.

    For each ``window`` bytes of a response, the waits for the client add up to at most
    ``timeout`` seconds (see the module docs).  Not thread-safe: one connection's
    thread drives it.

    Args:
        timeout: seconds of waiting allowed per window (``request_timeout``).
        window: bytes per window (:data:`RESPONSE_WINDOW`).
    """

    __slots__ = ("_sent", "_timeout", "_waited", "_window")

    def __init__(self, timeout: float, window: int = RESPONSE_WINDOW) -> None:
        self._timeout = timeout
        self._window = window
        self._sent = 0
        self._waited = 0.0

    def start(self) -> None:
        """A new response begins: a fresh window."""
        self._sent = 0
        self._waited = 0.0

    def sent(self, size: int) -> None:
        """The client's socket took ``size`` more bytes of the response."""
        self._sent += size
        if self._sent >= self._window:
            # A window completed: the next one gets the whole allowance again.
            self._sent %= self._window
            self._waited = 0.0

    def waited(self, seconds: float) -> None:
        """The node waited ``seconds`` for the client's socket to take more."""
        self._waited += seconds

    @property
    def left(self) -> float:
        """Seconds the node may still wait in the current window (<= 0: cut the client)."""
        return self._timeout - self._waited


class Phase(enum.Enum):
    """What a client connection is doing (see the module docs)."""

    #: A message, or a new connection's protocol version, is on its way.
    RECEIVING = "receiving"
    #: Between requests.
    IDLE = "idle"
    #: Serving a request: never closed to make room.
    HANDLING = "handling"


H = TypeVar("H")


class Slot(Generic[H]):
    """One admitted connection's entry in a :class:`ConnectionTable`.

    ``handle`` is the caller's object for it (the socket); the table only stores it.
    """

    __slots__ = ("evicted", "handle", "in_transaction", "phase", "since")

    def __init__(self, handle: H, now: float) -> None:
        self.handle = handle
        self.phase = Phase.RECEIVING
        self.since = now
        self.in_transaction = False
        self.evicted = False


class ConnectionTable(Generic[H]):
    """The slots of a node's client connections and the choice of whom to close.

    Thread-safe. The listener calls :meth:`admit` for every new connection and
    closes the slot it may return; each connection's thread reports its phases
    with :meth:`enter` and stops when told it was evicted, then calls
    :meth:`remove`.

    Args:
        limit: the number of slots.
        clock: monotonic seconds (a parameter so tests can drive it).
    """

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[int, Slot[H]] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)

    def admit(self, handle: H) -> tuple[Slot[H] | None, Slot[H] | None]:
        """Give ``handle`` a slot, taking one from another connection if all are in use.

        Returns:
            ``(slot, evicted)``: the new connection's slot, or None if every
            connection is handling a request (refuse it); and the connection that
            lost its slot, if one did: the caller must shut it down.
        """
        with self._lock:
            evicted = None
            if len(self._slots) >= self._limit:
                evicted = self._evict_locked()
                if evicted is None:
                    return None, None
            slot = Slot(handle, self._clock())
            self._slots[id(slot)] = slot
            return slot, evicted

    def evict(self) -> Slot[H] | None:
        """Take the slot of the connection :meth:`admit` would close first, if any."""
        with self._lock:
            return self._evict_locked()

    def _evict_locked(self) -> Slot[H] | None:
        candidates = [s for s in self._slots.values() if s.phase is not Phase.HANDLING]
        if not candidates:
            return None
        victim = min(candidates, key=lambda s: (s.in_transaction, s.since))
        victim.evicted = True
        del self._slots[id(victim)]
        return victim

    def enter(self, slot: Slot[H], phase: Phase, *, in_transaction: bool = False) -> bool:
        """Record that ``slot``'s connection moved to ``phase``.

        Returns:
            False if the connection lost its slot meanwhile: it must stop without
            serving anything more.
        """
        with self._lock:
            if slot.evicted:
                return False
            if slot.phase is not phase:
                slot.phase = phase
                if phase is not Phase.HANDLING:
                    # When a phase began decides whom to evict, and how long a message
                    # may take; a connection serving a request is never evicted.
                    slot.since = self._clock()
            slot.in_transaction = in_transaction
            return True

    def remove(self, slot: Slot[H]) -> None:
        """Free ``slot`` (its connection is closing); harmless if it was evicted."""
        with self._lock:
            self._slots.pop(id(slot), None)
