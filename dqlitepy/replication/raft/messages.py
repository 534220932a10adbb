"""Raft's messages as Figure 2 says: AppendEntries on a follower, its answers on the leader.

- **Follower truncation (PySyncObj defect 2).**  PySyncObj deletes every
  entry after ``prevLogIdx`` on *any* AppendEntries whose ``prevLogIdx`` is
  behind the log end, even entries it already acknowledged.  Raft (§5.3,
  Figure 2) allows deleting only from the first entry whose term conflicts.
  Our handler skips entries already present with the same term, truncates only
  on a conflict, acknowledges only the entries the message proved, and
  advances the commit index only that far.
- **One sync per message.**  A follower stores the new entries of one
  AppendEntries together (one journal ``add_many``, one fdatasync, all or
  none), then puts the configurations among them in force, in log order.
- **Leader nextIndex rewind (defect 2).**  A late success acknowledgement
  could move ``nextIndex`` back below ``matchIndex + 1``; we clamp it.
- **Terms in answers.**  PySyncObj's followers answer AppendEntries without
  their term and ignore a stale leader's messages, so a deposed leader learns
  its fate only from the new leader or its own silence timeout.  As Raft's
  Figure 2 says, our answers carry the follower's term, a follower answers a
  stale AppendEntries with its newer term, and a leader that sees a newer term
  steps down (and ignores answers from its own earlier terms).

Answers also echo the ``read_round`` of the AppendEntries they answer, for
:mod:`.reads`, and its ``sent_at`` (when it has one), for the leader's lease
(:mod:`.lease`); a follower that accepted a leader recently ignores
RequestVote (see :mod:`.lease`).  Every message passes first through
``__onMessageReceived`` here, which keeps a node whose journal cannot write
from voting (see :mod:`.storage`) and drops forwarded commands (see
:mod:`.commands`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pysyncobj import SyncObj

from ..journal import JournalWriteError
from .base import RaftBase
from .config import FOLLOWER, LEADER
from .reads import ReadResult

__all__ = ["MessagesMixin"]

log = logging.getLogger("dqlitepy.replication")


class MessagesMixin(RaftBase):
    """Handles AppendEntries (follower side) and its answers (leader side)."""

    #: The read_round of the AppendEntries being answered (follower side).
    _answering_round: int | None
    #: Its sent_at (the leader's clock when it sent it), if it had one.
    _answering_sent: float | None

    def _init_messages(self) -> None:
        self._answering_round = None
        self._answering_sent = None
        self._acknowledged = {}

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind in ("request_vote", "timeout_now") and not self.storage_writable:
            # A vote, or the term of an election, that cannot be persisted must
            # not be sent (see "Storage failures").
            return
        try:
            self._on_message(node, message, kind)
        except JournalWriteError as exc:
            self._storage_failed(exc)  # nothing reflecting the failed write was sent

    def _on_message(self, node: Any, message: dict[str, Any], kind: Any) -> None:
        if kind == "append_entries":
            self._answering_round = message.get("read_round")
            self._answering_sent = message.get("sent_at")
            try:
                self._on_append_entries(node, message)
            finally:
                self._answering_round = self._answering_sent = None
            return
        if kind == "request_vote" and self._ignores_vote(message):
            # The leader was heard less than an election timeout ago: this
            # candidate is disruptive, and a lease relies on our silence.
            return
        if kind == "timeout_now":
            self._timeout_now(node, message)
        if kind == "apply_command":
            # Nobody forwards commands in a dqlitepy cluster (see submit()).
            return
        if kind == "read_index":  # a follower's ReadIndex (see .remote)
            self._read_index_asked(node, message)
            return
        if kind == "read_index_answer":
            self._read_index_answered(node, message)
            return
        if kind == "next_node_idx" and self.raft_state == LEADER:
            self._next_node_idx(node, message)
            return
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _on_append_entries(self, node: Any, message: dict[str, Any]) -> None:
        if message["term"] < self._SyncObj__raftCurrentTerm:
            # A stale leader: tell it our term so that it steps down (Figure 2)
            # instead of believing it leads until its silence timeout.
            self._SyncObj__sendNextNodeIdx(node, success=False, reset=False)
            return
        # Before answering: the leader's lease counts from its sending time.
        self._heard_leader()
        if "prevLogIdx" not in message:  # a snapshot chunk
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            return
        if "transmission" in message:
            log.error("refusing a chunked append_entries from %s", node.id)
            return
        self._append_entries(node, message)

    # ------------------------------------------------------------ leader side

    def _next_node_idx(self, node: Any, message: dict[str, Any]) -> None:
        """A follower's answer to AppendEntries, counted without rewinding."""
        term = message.get("term")  # absent from a stock PySyncObj node
        if term is not None and term > self._SyncObj__raftCurrentTerm:
            self._deposed(term)
            return
        if term is not None and term < self._SyncObj__raftCurrentTerm:
            # An answer to a message of an earlier term of ours: the log it
            # describes may not be this term's log.
            return
        match = self._SyncObj__raftMatchIndex
        next_index = self._SyncObj__raftNextIndex
        if node not in match:
            return
        proposed = message["next_node_idx"]
        if message["success"]:
            # Several AppendEntries may be in flight: an early acknowledgement
            # must not send nextIndex back over entries already on their way.
            match[node] = max(match[node], proposed - 1)
            next_index[node] = max(next_index[node], match[node] + 1)
            self._acknowledged[node] = self._SyncObj__raftCurrentTerm
        elif message["reset"]:
            next_index[node] = proposed
            # The follower lacks what comes from `proposed` on: never count it.
            match[node] = min(match[node], proposed - 1)
        self._SyncObj__lastResponseTime[node] = time.monotonic()
        if term is not None:
            self._read_answer(node, message)
            self._lease_answer(node, message)

    def _deposed(self, term: int) -> None:
        """A follower answered with a newer term: another leader may exist; step down."""
        log.info("a follower is at term %d: this leader steps down", term)
        self._SyncObj__setCurrentTerm(term, None)
        self._SyncObj__setState(FOLLOWER)
        self._SyncObj__raftLeader = None
        # Wait for the new leader's heartbeat instead of an election at once.
        self.postpone_election()
        self._fail_reads(ReadResult.LEADERSHIP_LOST)

    # ---------------------------------------------------------- follower side

    def _append_entries(self, node: Any, message: dict[str, Any]) -> None:
        """AppendEntries as Raft's Figure 2 says (see the module docstring)."""
        term = message["term"]
        if term < self._SyncObj__raftCurrentTerm:
            return
        self._follow(node, term)
        leader_commit = message["commit_index"]
        self._SyncObj__leaderCommitIndex = leader_commit

        prev_index, prev_term = message["prevLogIdx"], message["prevLogTerm"]
        entries = message.get("entries") or []
        prev = self._SyncObj__getEntries(prev_index, 1)
        if not prev:
            self._SyncObj__sendNextNodeIdx(node, success=False, reset=True)
            return
        if prev[0][2] != prev_term:
            self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=prev_index, success=False, reset=True)
            return
        start = self._first_missing(entries)
        if not self._store_entries(node, entries[start:]):
            return
        if start < len(entries) and not self._SyncObj__transferInProgress:
            # Storing (a 16 MiB part, fdatasync'd) may have outlasted the election
            # timeout: it runs from now, or the next tick would stand for election
            # before reading the heartbeats that arrived meanwhile.
            self.postpone_election()

        # Only what this message proved matches the leader's log.
        verified = prev_index + len(entries)
        self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=verified + 1, success=True)
        commit = self._SyncObj__raftCommitIndex
        if leader_commit > commit:
            self._SyncObj__raftCommitIndex = min(leader_commit, verified)
            self._SyncObj__raftLog.setRaftCommitIndex(self._SyncObj__raftCommitIndex)

    def _follow(self, node: Any, term: int) -> None:
        """Take ``node`` for the leader of ``term`` (not older than ours) and follow it."""
        if term > self._SyncObj__raftCurrentTerm:
            self._SyncObj__transferInProgress = False
        if not self._SyncObj__transferInProgress:
            self._SyncObj__raftElectionDeadline = (
                time.monotonic() + self._SyncObj__generateRaftTimeout()
            )
        if self._SyncObj__raftLeader != node:
            self._SyncObj__onLeaderChanged()
        self._SyncObj__raftLeader = node
        if term > self._SyncObj__raftCurrentTerm:
            self._SyncObj__setCurrentTerm(term, None)
        self._SyncObj__setState(FOLLOWER)

    def _first_missing(self, entries: list[Any]) -> int:
        """Position in ``entries`` of the first one our log lacks.

        Entries already present with the same term are skipped; the first one
        whose term conflicts is deleted from our log with everything after it.
        """
        last = self._SyncObj__getCurrentLogIndex()
        start = 0
        while start < len(entries) and entries[start][1] <= last:
            ours = self._SyncObj__getEntries(entries[start][1], 1)
            if ours and ours[0][2] == entries[start][2]:
                start += 1
                continue
            self._truncate_from(entries[start][1])
            break
        return start

    def _store_entries(self, node: Any, entries: list[Any]) -> bool:
        """Append ``entries`` to our log (configurations take effect); False if that failed.

        One journal sync for the whole message (``add_many``, all or none).
        """
        if not entries:
            return True
        batch = [(bytes(command), index, entry_term) for command, index, entry_term in entries]
        try:
            self._log_append(batch)
        except JournalWriteError as exc:
            # Configurations of entries that are in our log anyway (a journal
            # without add_many may have taken a prefix) are in force, as Raft says.
            last = self._SyncObj__getCurrentLogIndex()
            self._change_configuration([entry for entry in batch if entry[1] <= last])
            self._storage_failed(exc)
            # Everything up to our log's end matches the leader's (checked
            # before); from there on the leader must send again.
            self._SyncObj__sendNextNodeIdx(
                node,
                nextNodeIdx=self._SyncObj__getCurrentLogIndex() + 1,
                success=False,
                reset=True,
            )
            return False
        self._change_configuration(batch)
        return True

    def _change_configuration(self, batch: list[tuple[bytes, int, int]]) -> None:
        """Put the configurations among newly stored entries in force, in log order."""
        if not self.conf.dynamicMembershipChange:
            return
        for command, _, _ in batch:
            request = self._SyncObj__parseChangeClusterRequest(command)
            if request is not None:
                self._SyncObj__doChangeCluster(request)

    def _truncate_from(self, index: int) -> None:
        """Delete a conflicting suffix, undoing the membership changes it held."""
        if index <= self._SyncObj__raftLastApplied:
            # Committed entries never conflict in Raft; refuse rather than diverge.
            raise RuntimeError(f"refusing to truncate applied entry {index}")
        doomed = self._SyncObj__getEntries(index) if self.conf.dynamicMembershipChange else []
        try:
            self._SyncObj__deleteEntriesFrom(index)
        finally:
            # Undo the membership changes of the entries actually gone (a failed
            # deletion may have cut the log or not).
            last = self._SyncObj__getCurrentLogIndex()
            for command, entry_index, _ in reversed(doomed):
                if entry_index <= last:
                    continue
                request = self._SyncObj__parseChangeClusterRequest(bytes(command))
                if request is not None:
                    self._SyncObj__doChangeCluster(request, reverse=True)

    def _SyncObj__sendNextNodeIdx(
        self,
        node: Any,
        reset: bool = False,
        nextNodeIdx: int | None = None,  # PySyncObj's keyword
        success: bool = False,
    ) -> None:
        # PySyncObj's answer to AppendEntries, plus our term (Raft's responses
        # carry it), the read round of the message answered and its sending time.
        if nextNodeIdx is None:
            nextNodeIdx = self._SyncObj__getCurrentLogIndex() + 1
        answer: dict[str, Any] = {
            "type": "next_node_idx",
            "next_node_idx": nextNodeIdx,
            "reset": reset,
            "success": success,
            "term": self._SyncObj__raftCurrentTerm,
            "read_round": self._answering_round,
        }
        if self._answering_sent is not None:
            answer["sent_at"] = self._answering_sent
        self._SyncObj__transport.send(node, answer)
