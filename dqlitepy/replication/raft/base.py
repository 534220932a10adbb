"""What every part of :class:`~.node.HardenedSyncObj` may assume of the others, for mypy.

:class:`HardenedSyncObj` is PySyncObj's ``SyncObj`` plus one mixin per fix
(:mod:`.entries`, :mod:`.messages`, :mod:`.roles`, :mod:`.commands`,
:mod:`.transfer`, :mod:`.storage`, :mod:`.reads`, :mod:`.lease`, :mod:`.remote`,
:mod:`.stats`, :mod:`.tick`).  Each mixin is written
against :class:`RaftBase`, which only *declares* what they share: PySyncObj's
private state and methods (name-mangled there: ``SyncObj.__x`` is
``_SyncObj__x``), and the attributes and methods one mixin defines and another
uses.  Declarations are annotations and ``TYPE_CHECKING`` stubs, so at run
time this class adds nothing: a stub here must never hide ``SyncObj``'s method
of the same name, which comes after it in the method resolution order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..stats import Histogram
    from .reads import ReadCallback, ReadResult
    from .transfer import Transfer

__all__ = ["RaftBase"]


class RaftBase:
    """Declarations shared by the mixins of :class:`~.node.HardenedSyncObj` (no behaviour)."""

    # -- PySyncObj's private state (written only on its tick thread) --
    _SyncObj__raftState: int
    _SyncObj__raftLeader: Any
    _SyncObj__raftCurrentTerm: int
    _SyncObj__votedForNodeId: Any
    _SyncObj__raftCommitIndex: int
    _SyncObj__raftLastApplied: int
    _SyncObj__leaderCommitIndex: int | None
    _SyncObj__raftElectionDeadline: float
    _SyncObj__transferInProgress: bool
    _SyncObj__noopIDx: int | None
    _SyncObj__raftLog: Any  # a journal: DurableJournal, or PySyncObj's MemoryJournal
    _SyncObj__transport: Any
    _SyncObj__otherNodes: set[Any]  # the voters but this node
    _SyncObj__readonlyNodes: set[Any]  # the standbys
    _SyncObj__connectedNodes: set[Any]
    _SyncObj__raftNextIndex: dict[Any, int]
    _SyncObj__raftMatchIndex: dict[Any, int]
    _SyncObj__lastResponseTime: dict[Any, float]
    _SyncObj__commandsQueue: Any
    _SyncObj__commandsWaitingCommit: Any  # index -> [(term, callback)]
    _SyncObj__newAppendEntriesTime: float  # when the leader sends AppendEntries next
    conf: Any
    selfNode: Any

    # -- shared between the mixins (each is set by its owner's _init_* method) --
    #: Leader side: the term in which each peer last acknowledged entries (a peer
    #: unheard of is not "caught up", however short the log).  Owner: messages.
    _acknowledged: dict[Any, int]
    #: The commit index behind PySyncObj's ``__raftCommitIndex`` property (readers on
    #: other threads read it directly).  Owner: commit.
    _commit_index: int
    #: Reads served under the lease, and the lock of that count.  Owner: lease.
    _lease_reads: int
    _lease_reads_lock: Any
    #: Whether this node votes.  Owner: roles.
    _voting: bool
    #: Every member's role, this node's included (tick thread).  Owner: roles.
    _roles: dict[str, int]
    #: The leadership transfer under way.  Owner: transfer.
    _transfer: Transfer | None
    #: Elections this node started, and won; entries per group commit.  Owner: stats
    #: (counted by storage and commands, on the tick thread).
    _elections: int
    _elections_won: int
    _batch_entries: Histogram
    #: Reads in progress (owner: reads), remote reads waiting (owner: remote), the
    #: journal's probe state (owner: storage): the adaptive tick (owner: tick) reads them.
    _read_round: Any
    _read_queue: list[Any]
    _read_applying: list[Any]
    _remote_waiting: dict[int, Any]
    _storage_down: bool
    _probe_requested: bool
    #: Leader side: index -> (the log's entry, the command as submitted, what its
    #: submitter said it decodes to) for the commands of submit_tracked not applied
    #: yet.  Owner: commands (read by entries).
    _submitted: dict[int, tuple[bytes, bytes, object]]

    if TYPE_CHECKING:
        # -- PySyncObj's methods --
        def _SyncObj__getCurrentLogIndex(self) -> int: ...
        def _SyncObj__getEntries(
            self, fromIDx: int, count: int | None = None, maxSizeBytes: int | None = None
        ) -> list[tuple[Any, int, int]]: ...
        def _SyncObj__setState(self, newState: int) -> None: ...
        def _SyncObj__onLeaderChanged(self) -> None: ...
        def _SyncObj__sendAppendEntries(self) -> None: ...
        def _SyncObj__deleteEntriesFrom(self, fromIDx: int) -> None: ...
        def _SyncObj__changeCluster(self, request: Any) -> bool: ...
        def transferLeadership(self, node: Any = None, callback: Any = None) -> Any: ...
        def addOnTickCallback(self, callback: Callable[[], None]) -> None: ...
        def _applyCommand(self, command: Any, callback: Any, commandType: Any = None) -> None: ...

        # -- PySyncObj's methods that the mixins override --
        def _SyncObj__generateRaftTimeout(self) -> float: ...
        def _SyncObj__setCurrentTerm(self, term: int, votedForNodeId: Any) -> None: ...
        def _SyncObj__sendNextNodeIdx(
            self,
            node: Any,
            reset: bool = False,
            nextNodeIdx: int | None = None,
            success: bool = False,
        ) -> None: ...
        def _SyncObj__parseChangeClusterRequest(self, command: bytes) -> Any: ...
        def _SyncObj__doChangeCluster(self, request: Any, reverse: bool = False) -> bool: ...

        # -- defined by one part, used by others --
        @property
        def raft_state(self) -> int: ...  # node
        def on_tick(self, call: Callable[[], None]) -> None: ...  # node
        def _wake(self) -> None: ...  # node
        def _self_address(self) -> str: ...  # node
        def postpone_election(self) -> None: ...  # node
        @property
        def storage_writable(self) -> bool: ...  # storage
        def _storage_failed(self, cause: BaseException | None) -> None: ...  # storage
        def _log_append(self, entries: list[tuple[bytes, int, int]]) -> None: ...  # storage
        def _watch_storage(self) -> None: ...  # storage
        def _admit_strangers(self) -> None: ...  # roles
        def _read_answer(self, node: Any, message: dict[str, Any]) -> None: ...  # reads
        def _fail_reads(self, result: ReadResult) -> None: ...  # reads
        def _read_arrived(self, callback: ReadCallback) -> None: ...  # reads
        def _read_index_asked(self, node: Any, message: dict[str, Any]) -> None: ...  # remote
        def _read_index_answered(self, node: Any, message: dict[str, Any]) -> None: ...  # remote
        def _heard_leader(self) -> None: ...  # lease
        def _ignores_vote(self, message: dict[str, Any]) -> bool: ...  # lease
        def _timeout_now(self, node: Any, message: dict[str, Any]) -> None: ...  # lease
        def _tag_outgoing(self, message: dict[str, Any]) -> None: ...  # lease
        def _lease_answer(self, node: Any, message: dict[str, Any]) -> None: ...  # lease
        def _lease_read_index(self) -> int | None: ...  # lease
        def _count_lease_read(self) -> None: ...  # lease
        def _tick_wait(self, period: float) -> float: ...  # tick
        def _commands_queued(self) -> bool: ...  # commands
        def _commit_alone(self) -> None: ...  # commit
