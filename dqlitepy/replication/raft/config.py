"""The vocabulary of the Raft core: PySyncObj's codes, our failure reason, members, settings.

**Latency floor (PySyncObj defect 6).**  :func:`raft_config` sets
``appendEntriesUseBatch=False``: each command is sent as soon as it is queued.
It also sets the batch size so large that PySyncObj never takes its chunked
"transmission" path (defect 5, see :mod:`.entries`).

**One clock.**  PySyncObj reads ``CLOCK_MONOTONIC_RAW`` (through a Python
lambda, its ``monotonicTime``); dqlitepy's mixins, the lease and the server
read ``time.monotonic()`` (``CLOCK_MONOTONIC``).  The two drift apart by NTP's
slewing (0.11 s after 16 h of uptime on the test machine, growing with
uptime), and several deadlines were set on one clock and compared on the
other: the commit announcement of :mod:`.commit` (never early: it fell back
to the heartbeat), a postponed election, peers' last answer times (PySyncObj's
2 s leader fallback), the adaptive tick's wait.  :func:`_one_clock` makes
PySyncObj's modules read ``time.monotonic`` too (a C call instead of a lambda,
about 15 fewer Python calls per commit on a leader).
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable
from typing import Any

from pysyncobj import SyncObjConf
from pysyncobj.config import FAIL_REASON
from pysyncobj.node import Node, TCPNode

__all__ = [
    "CANDIDATE",
    "FAILURES",
    "FOLLOWER",
    "LEADER",
    "MEMBERSHIP",
    "NO_OP",
    "REGULAR",
    "STORAGE_FAILED",
    "VERSION",
    "ApplyHandler",
    "PeerNode",
    "raft_config",
]

# PySyncObj's command type byte (syncobj._COMMAND_TYPE).
REGULAR = 0
NO_OP = 1
MEMBERSHIP = 2
VERSION = 3

# PySyncObj's raft states (syncobj._RAFT_STATE).
FOLLOWER = 0
CANDIDATE = 1
LEADER = 2

#: A command's failure reason (ours, beside PySyncObj's FAIL_REASON): its entry
#: could not be appended because this node's journal cannot write, and the
#: journal proved it absent.  The callback's result is the JournalWriteError.
STORAGE_FAILED = 100

#: PySyncObj's failure reasons, by name.
FAILURES = {
    value: name
    for name, value in vars(FAIL_REASON).items()
    if not name.startswith("_") and isinstance(value, int)
}
FAILURES[STORAGE_FAILED] = "STORAGE_FAILED"

#: PySyncObj's modules that read its clock (each imports ``monotonicTime`` by name).
_CLOCK_READERS = ("syncobj", "transport", "tcp_connection", "dns_resolver")


def _one_clock() -> None:
    """Make PySyncObj read ``time.monotonic``, the clock dqlitepy reads (see above)."""
    for name in _CLOCK_READERS:
        module = importlib.import_module(f"pysyncobj.{name}")
        if hasattr(module, "monotonicTime"):
            setattr(module, "monotonicTime", time.monotonic)  # noqa: B010  # untyped module


_one_clock()

#: What :class:`~.node.HardenedSyncObj` calls with ``(index, command, decoded)`` for each
#: committed entry: ``decoded`` is what the submitter of :meth:`submit_tracked` said the
#: command decodes to, when this node submitted that very entry, and None otherwise.
ApplyHandler = Callable[[int, bytes, object], Any]


class PeerNode(TCPNode):  # type: ignore[misc]
    """A cluster member; its PySyncObj id is its dqlite address (one address per node)."""

    # PySyncObj pickles members into its own membership entries: they name the
    # class by the module it is imported from (and the whitelist of
    # ``entries.safe_unpickle`` accepts that name), not by this file.
    __module__ = "dqlitepy.replication.raft"

    # PySyncObj keys its per-member state by node and reads ``node.id`` ~150 times
    # per replicated entry on a 3-node leader (hashes, comparisons, lookups), each
    # a property call.  Cached in the instance dict (a non-data descriptor, so
    # PySyncObj's guard on assigning ``id`` is not involved), later reads are a
    # plain attribute lookup; hashing and equality read the id directly.
    @functools.cached_property
    def id(self) -> Any:
        """The member's address: its identity for PySyncObj (immutable)."""
        return self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and self._id == other._id

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into membership entries: the same state as before the cache.
        state = dict(self.__dict__)
        state.pop("id", None)
        return state


def raft_config(**overrides: Any) -> Any:
    """PySyncObj configuration tuned for dqlitepy (see the module docstring)."""
    settings: dict[str, Any] = {
        "autoTick": True,
        "autoTickPeriod": 0.01,
        "appendEntriesUseBatch": False,
        # Heartbeats every 100 ms and elections after 0.8-1.2 s of silence: a
        # loaded 2-core machine (server threads share the GIL with the tick
        # thread) must not see spurious elections, and failover stays ~1 s.
        "appendEntriesPeriod": 0.1,
        "raftMinTimeout": 0.8,
        "raftMaxTimeout": 1.2,
        "connectionTimeout": 3.5,
        "connectionRetryTime": 0.5,
        "leaderFallbackTimeout": 2.0,
        # One message may carry a large transaction: never take the chunked path.
        "appendEntriesBatchSizeBytes": 1 << 30,
        "dynamicMembershipChange": True,
        "commandsWaitLeader": False,
        # Snapshots are taken by dqlitepy, not by PySyncObj's pickle of the object.
        "logCompactionMinEntries": 1 << 62,
        "logCompactionMinTime": 1 << 40,
        "useFork": False,
    }
    settings.update(overrides)
    return SyncObjConf(**settings)
