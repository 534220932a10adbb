"""The snapshot file: written by dqlitepy beside Raft, read back at start and on install.

PySyncObj compacts its log through three callbacks (``serializer``,
``serializeChecker``, ``deserializer``) that :class:`SnapshotFiles` provides.
The file is a cbor2 header — Raft's bookmarks (the last two entries the snapshot
covers), the cluster's members and roles — followed by the server's state as its
``capture`` callback streams it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import cbor2
from pysyncobj.config import SERIALIZER_STATE

from .errors import ReplicationError
from .raft import HardenedSyncObj, PeerNode
from .stats import SnapshotStats

__all__ = ["SNAPSHOT_VERSION", "Entry", "SnapshotFiles"]

#: The header's ``version``: a file of another version is refused, never guessed at.
SNAPSHOT_VERSION = 1

#: A Raft log entry as PySyncObj keeps it: (command, index, term).
Entry = tuple[bytes, int, int]

log = logging.getLogger("dqlitepy.replication")


def _entry(value: Any) -> Entry:
    return (bytes(value[0]), int(value[1]), int(value[2]))


class SnapshotFiles:
    """One node's snapshot file and PySyncObj's callbacks for it.

    Args:
        address: the node's address (for log messages).
        path: the snapshot file (``raft/snapshot``).
        capture: on Raft's thread, capture the server's state at this entry and
            return the function that streams it to a file (raises: not now).
        restore: read the server's state back from a snapshot file.
        core: the Raft node, once there is one.
        check_storage: have Raft probe the log's storage (a write failed).
    """

    def __init__(
        self,
        address: str,
        path: Path,
        *,
        capture: Callable[[], Callable[[BinaryIO], None]],
        restore: Callable[[BinaryIO], None],
        core: Callable[[], HardenedSyncObj | None],
        check_storage: Callable[[], None],
    ) -> None:
        self.address = address
        self.path = path
        self._capture = capture
        self._restore = restore
        self._core = core
        self._check_storage = check_storage
        self._state = SERIALIZER_STATE.NOT_SERIALIZING
        self.stats = SnapshotStats()
        #: The roles recorded in the snapshot being installed (see :meth:`read`).
        self.roles: dict[str, int] | None = None

    def write(self, path: str, raft_data: Any) -> None:
        """PySyncObj's serializer, on Raft's thread: capture now, write in the background.

        Copying gigabytes on Raft's thread would stop heartbeats and depose the
        leader, so only the capture (Raft's bookmarks and the server's state at
        this entry) happens here; a thread streams the databases into a
        separate file and renames it over the snapshot when complete.
        :meth:`progress` tells PySyncObj when it is done, and until
        then it neither compacts the log nor sends the snapshot anywhere.
        """
        last, previous, cluster = raft_data
        header = {
            "version": SNAPSHOT_VERSION,
            "last": [bytes(last[0]), int(last[1]), int(last[2])],
            "previous": [bytes(previous[0]), int(previous[1]), int(previous[2])],
            "cluster": sorted(str(node.id) for node in cluster),
        }
        core = self._core()
        if core is not None:
            header["roles"] = core.roles  # on Raft's thread: as of this moment
        try:
            write_state = self._capture()
        except Exception as exc:
            # E.g. pages still queued for the applier: PySyncObj tries again later.
            log.warning("%s postponed a snapshot: %s", self.address, exc)
            self._state = SERIALIZER_STATE.FAILED
            return
        final = path.removesuffix(".tmp")
        self._state = SERIALIZER_STATE.SERIALIZING
        started = time.monotonic()

        def run() -> None:
            partial = final + ".partial"
            try:
                with open(partial, "wb") as f:
                    cbor2.dump(header, f)
                    write_state(f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(partial, final)
                log.info("%s wrote a snapshot at entry %d", self.address, last[1])
                self.stats.succeeded("written", time.monotonic() - started)
                self._state = SERIALIZER_STATE.SUCCESS
            except Exception as exc:
                log.exception("%s could not write a snapshot", self.address)
                self.stats.failed("written")
                self._state = SERIALIZER_STATE.FAILED
                if isinstance(exc, OSError):
                    self._check_storage()  # a full disk: the log's next append fails too

        threading.Thread(target=run, name="dqlitepy-snapshot", daemon=True).start()

    def progress(self) -> int:
        """PySyncObj's serializeChecker: SUCCESS or FAILED are reported once."""
        state = self._state
        if state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
            self._state = SERIALIZER_STATE.NOT_SERIALIZING
        return int(state)

    def head(self) -> tuple[Entry, Entry] | None:
        """The last two entries of this node's snapshot (Raft's thread, at start); None: none."""
        path = self.path
        try:
            with path.open("rb") as f:
                header = cbor2.load(f)
        except FileNotFoundError:
            return None
        if not isinstance(header, dict) or header.get("version") != SNAPSHOT_VERSION:
            raise ReplicationError(f"{path}: not a dqlitepy snapshot")
        previous, last = header["previous"], header["last"]
        return (
            (bytes(previous[0]), int(previous[1]), int(previous[2])),
            (bytes(last[0]), int(last[1]), int(last[2])),
        )

    def read(self, path: str) -> tuple[Any, Any, set[PeerNode]]:
        """PySyncObj's deserializer: install the state, give Raft its bookmarks back."""
        started = time.monotonic()
        try:
            installed = self._install(path)
        except BaseException:
            self.stats.failed("installed")
            raise
        self.stats.succeeded("installed", time.monotonic() - started)
        return installed

    def _install(self, path: str) -> tuple[Any, Any, set[PeerNode]]:
        core = self._core()
        if core is not None and not core.storage_writable:
            # The log could not be replaced by the snapshot's entries: installing the
            # databases alone would put them ahead of the log.  The leader sends it again.
            raise ReplicationError(f"{path}: not installed while the Raft log cannot be written")
        with open(path, "rb") as f:
            header = cbor2.load(f)
            if not isinstance(header, dict) or header.get("version") != SNAPSHOT_VERSION:
                raise ReplicationError(f"{path}: not a dqlitepy snapshot")
            self._restore(f)
        roles = header.get("roles")
        self.roles = None if roles is None else {str(a): int(r) for a, r in roles.items()}
        last = tuple(header["last"])
        previous = tuple(header["previous"])
        log.info("%s installed a snapshot at entry %d", self.address, last[1])
        if core is not None:
            # Installing took Raft's thread a while; the leader's messages are
            # waiting in the socket, not missing: do not start an election.
            core.postpone_election()
        return last, previous, {PeerNode(a) for a in header["cluster"]}
