"""Raft through PySyncObj, with its defects neutralised (``libraries.md``).

:class:`HardenedSyncObj` subclasses PySyncObj's ``SyncObj`` and replaces the
parts that break Raft's guarantees.  PySyncObj hides them behind name-mangled
methods (``SyncObj.__x`` is ``_SyncObj__x``); a subclass defining a method of
that mangled name overrides it, which is how the fixes hook in.  The version
is pinned (``pysyncobj==0.3.17``) because of that coupling.

Each fix is a mixin of :class:`HardenedSyncObj` in its own module, whose
docstring explains it; each has a test in ``tests/replication/test_replication_raft.py``
(reads: ``tests/replication/test_replication_readindex.py``):

========================  ===============================================================
:mod:`.entries`           **Pickle** (defect 4): cbor2 commands, whitelisted unpickling
:mod:`.config`            **Latency floor** (defect 6), codes, :func:`raft_config`
:mod:`.messages`          **Follower truncation**, **leader nextIndex rewind** (defect 2),
                          **terms in answers**
:mod:`.roles`             **Roles**: voters, standbys and spares in the log
:mod:`.commands`          **Forwarding**: only a leader appends commands; **group commit**
:mod:`.commit`            **Sending before syncing** (thesis §10.2.1): the leader counts
                          its own copy only once durable
:mod:`.transfer`          **Leadership transfer** as Raft's thesis says (§3.10)
:mod:`.reads`             **Linearizable reads**: ReadIndex (thesis §6.4)
:mod:`.remote`            **ReadIndex for followers**: asked of the leader (``/readyz``)
:mod:`.lease`             **Leader lease** (§6.4.1): reads without a round; followers
                          ignore early votes (§4.2.3)
:mod:`.storage`           **Storage failures**: a node that cannot write its log steps aside
:mod:`.stats`             figures for monitoring, read from any thread
:mod:`.tick`              **Adaptive tick**: an idle tick thread sleeps until its next timer
:mod:`.snapshot`          **Snapshot at start**: a log a stop left uncompacted after its
                          snapshot is compacted, not replaced (defect 8)
:mod:`.node`              :class:`HardenedSyncObj` itself, composing them
:mod:`.base`              what the mixins declare to each other (for mypy only)
========================  ===============================================================
"""

from __future__ import annotations

from .commands import Submission
from .config import (
    CANDIDATE,
    FAILURES,
    FOLLOWER,
    LEADER,
    STORAGE_FAILED,
    ApplyHandler,
    PeerNode,
    raft_config,
)
from .entries import role_change, safe_unpickle
from .node import HardenedSyncObj, PeerHealth
from .reads import ReadCallback, ReadResult

__all__ = [
    "CANDIDATE",
    "FAILURES",
    "FOLLOWER",
    "LEADER",
    "STORAGE_FAILED",
    "ApplyHandler",
    "HardenedSyncObj",
    "PeerHealth",
    "PeerNode",
    "ReadCallback",
    "ReadResult",
    "Submission",
    "raft_config",
    "role_change",
    "safe_unpickle",
]
