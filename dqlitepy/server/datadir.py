"""A node's data directory: one process at a time, one cluster for life.

See ``docs/architecture.md``, "Operating safely".

Two operator mistakes cost clusters their data before this module existed: a
second node started on a live member's directory deleted its databases before
it failed on the Raft journal's lock, and a member restarted without the
cluster key came up as a standalone node on the replicated data, led itself
and acknowledged writes its cluster never saw.  So, before anything else reads
or changes the directory:

- :class:`DataDirectory` takes an exclusive ``flock`` on the directory itself
  and holds it for the life of the node: a directory cannot be swapped under a
  running node short of moving the whole directory, whereas a lock file can be
  deleted by an operator clearing a "stale lock" (which once let a second
  process in, to move the live databases aside).  It also locks ``LOCK``, the
  file older versions lock, and writes its pid and address there once it
  serves, so that a second process is told whom it collided with (its pid
  comes from ``/proc/locks`` when the file is gone).  A start that is refused
  writes nothing: not even ``LOCK``.  The lock belongs to the open file, not
  the process: a second node in the same process is refused too.
- ``cluster.json`` records what the directory belongs to: a replicated
  cluster, with a fingerprint of its key (HMAC-SHA256 of a fixed label, never
  the key), or a standalone node.  A replicated directory is never started
  without its key or with another key; a standalone directory holding
  databases is never started with a key (its databases are in no Raft log, and
  replication would rebuild the directory from the log); an empty one may
  become replicated.  A directory written by a version without the record is
  replicated if it has a Raft journal (``raft/``); its first keyed start
  records the key.

A node joining a cluster with a fresh directory also proves, before it asks to
be added, that the cluster holds the same key (``join.py``, with
:func:`~dqlitepy.replication.transport.check_cluster_key`); only then is the
key recorded here.

The record also holds the **cluster id** (``cluster_id``), so that two clusters
sharing a key (one key file for staging and production) stay apart: the first
node of a cluster draws it at random; a joining node takes the one its
cluster's leader names in the key check; the leader puts it in the Raft log,
so every member (and a directory of a version without ids, at its first start
that replays or receives that entry) records it.  A member never joins, nor
talks Raft with, a cluster naming another id (:class:`ClusterIdMismatch`, and
the transport's ``ClusterMismatch``).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Final

from ..replication.journal import JournalError, check_journal

__all__ = [
    "IDENTITY_FILE",
    "LOCK_FILE",
    "ClusterIdMismatch",
    "ClusterIdentityError",
    "ClusterKeyRejected",
    "DataDirectory",
    "DataDirectoryInUse",
    "JournalUnreadable",
    "StartupRefused",
    "key_fingerprint",
    "new_cluster_id",
]

LOCK_FILE: Final = "LOCK"
IDENTITY_FILE: Final = "cluster.json"
_IDENTITY_VERSION: Final = 1
_FINGERPRINT_LABEL: Final = b"dqlitepy key fingerprint"
_FINGERPRINT_BYTES: Final = 16
_KEY_SOURCES: Final = "--cluster-key-file or DQLITEPY_CLUSTER_KEY"
_HOLDER_MAX: Final = 4096


class StartupRefused(RuntimeError):
    """The node refuses to start: something the operator gave it is wrong.

    Nothing in the data directory was changed.  The command line exits with
    status 2 and the message.
    """


class DataDirectoryInUse(StartupRefused):
    """Another process (or another node of this one) holds the data directory."""


class ClusterIdentityError(StartupRefused):
    """The data directory belongs to another cluster, or to none, than the node was given."""


class ClusterIdMismatch(ClusterIdentityError):
    """The cluster this node was asked to join (or met) is another cluster than its own.

    Both hold the same key; their cluster ids differ.
    """


class ClusterKeyRejected(StartupRefused):
    """The cluster this node was asked to join holds another key than this node."""


class JournalUnreadable(StartupRefused):
    """The directory's Raft journal cannot be opened: damaged, truncated, or not a file."""


def key_fingerprint(cluster_key: bytes) -> str:
    """A short public digest of the cluster key: equal keys give equal fingerprints.

    HMAC-SHA256 keyed by the cluster key over a fixed label, truncated to 16
    bytes; the key cannot be computed back from it (short of guessing it).
    """
    mac = hmac.new(cluster_key, _FINGERPRINT_LABEL, hashlib.sha256).digest()
    return mac[:_FINGERPRINT_BYTES].hex()


def new_cluster_id() -> str:
    """A random cluster id (128 bits, hex), drawn by the first node of a cluster."""
    return uuid.uuid4().hex


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename is durable only once the directory itself is synced.
    fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recorded_holder(path: Path) -> tuple[int | None, str | None]:
    """The pid and address the holder wrote into ``LOCK`` (None for what is missing)."""
    try:
        with path.open("rb") as f:  # read only: a refused start creates nothing
            record = json.loads(f.read(_HOLDER_MAX).decode())
    except (OSError, ValueError):
        return None, None  # deleted, not written yet (or by something else)
    if not isinstance(record, dict):
        return None, None
    pid, address = record.get("pid"), record.get("address")
    return (
        pid if isinstance(pid, int) else None,
        address if isinstance(address, str) else None,
    )


def _flock_holder(fd: int) -> int | None:
    """The pid that holds a ``flock`` on the file ``fd`` is open on, from ``/proc/locks``."""
    st = os.fstat(fd)
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None  # not Linux
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF" (waiters have "->" after "1:")
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        major, minor, inode = fields[5].split(":")
        if int(inode) == st.st_ino and (int(major, 16), int(minor, 16)) == (
            os.major(st.st_dev),
            os.minor(st.st_dev),
        ):
            return int(fields[4])
    return None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class DataDirectory:
    """Holds a node's data directory: its lock, and the record of its cluster.

    Creating one locks the directory and checks that the node may use it with
    ``cluster_key``; it changes nothing else except writing a standalone
    node's record.  A replicated node calls :meth:`record_cluster` once it
    knows its key is the cluster's.  :meth:`close` releases the lock.

    Args:
        path: the data directory (it must exist).
        address: the node's address (:meth:`record_address` writes the one it serves on).
        cluster_key: the cluster key, or None for a standalone node.

    Raises:
        DataDirectoryInUse: another node holds the directory.
        ClusterIdentityError: the directory belongs to a replicated cluster and
            the key is missing or another one, or it holds a standalone node's
            databases and a key was given.
        OSError: the directory or its files cannot be used.
    """

    def __init__(self, path: Path, *, address: str, cluster_key: bytes | None) -> None:
        self.path = path
        self._key = cluster_key
        self._address = address
        self._fd = -1  # LOCK, once it exists
        # Serialises rewrites of the record (start-up, and Raft's thread adopting an id).
        self._record_lock = threading.Lock()
        self._dir_fd = self._lock()
        try:
            self._record = self._check()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- lock

    def _lock(self) -> int:
        """Lock the directory, then ``LOCK`` if it exists; write nothing."""
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC
        dir_fd = os.open(self.path, flags)
        try:
            if not _try_lock(dir_fd):
                self._in_use(_flock_holder(dir_fd))
            try:
                fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return dir_fd  # created once the node serves (record_address)
            if not _try_lock(fd):  # held by a node of a version that locked only LOCK
                holder = _flock_holder(fd)
                os.close(fd)
                self._in_use(holder)
            self._fd = fd
        except BaseException:
            os.close(dir_fd)
            raise
        return dir_fd

    def _in_use(self, pid: int | None) -> None:
        recorded_pid, holder = _recorded_holder(self.path / LOCK_FILE)
        if pid is None:
            pid = recorded_pid
        elif recorded_pid != pid:
            holder = None  # the record of an earlier holder
        who = "another process" if pid is None else f"process {pid}"
        where = f" (the node serving on {holder})" if holder else ""
        raise DataDirectoryInUse(
            f"data directory {str(self.path.absolute())!r} is in use by {who}{where}; "
            "stop that node first, or give this one a directory of its own"
        )

    def record_address(self, address: str) -> None:
        """Write the node's pid and the address it serves on (its port, once bound) into ``LOCK``.

        Called once the node's checks passed and it serves, so that a refused
        start leaves ``LOCK`` as it was.
        """
        if self._dir_fd < 0:
            return
        if self._fd < 0:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if not _try_lock(fd):
                holder = _flock_holder(fd)
                os.close(fd)
                self._in_use(holder)
            self._fd = fd
        data = json.dumps({"pid": os.getpid(), "address": address}).encode() + b"\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def close(self) -> None:
        """Release the directory (idempotent)."""
        fds = (self._fd, self._dir_fd)
        self._fd = self._dir_fd = -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    # --------------------------------------------------------------- identity

    def _read_record(self) -> dict[str, Any] | None:
        path = self.path / IDENTITY_FILE
        try:
            record = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ClusterIdentityError(f"unreadable cluster record {str(path)!r}: {exc}") from exc
        if (
            not isinstance(record, dict)
            or record.get("version") != _IDENTITY_VERSION
            or not isinstance(record.get("replicated"), bool)
        ):
            raise ClusterIdentityError(f"unrecognised cluster record {str(path)!r}")
        return record

    def _has_databases(self) -> bool:
        return any((self.path / "databases").glob("db-*.sqlite*"))

    def _check(self) -> dict[str, Any] | None:
        record = self._read_record()
        # Before the record existed, a Raft journal was what made a directory replicated.
        replicated = (self.path / "raft").is_dir() if record is None else record["replicated"]
        where = str(self.path.absolute())
        if self._key is None:
            if replicated:
                raise ClusterIdentityError(
                    f"data directory {where!r} belongs to a replicated cluster; start the node "
                    f"with the cluster key ({_KEY_SOURCES}): without it, it would serve the "
                    "cluster's data alone and acknowledge writes the cluster never sees"
                )
            if record is None:
                record = self._new_record(replicated=False, origin="standalone")
            return record
        if replicated:
            recorded = record.get("key_fingerprint") if record is not None else None
            if recorded is not None and not hmac.compare_digest(
                str(recorded), key_fingerprint(self._key)
            ):
                raise ClusterIdentityError(
                    f"the cluster key does not match the one data directory {where!r} was "
                    f"created with; start the node with its cluster's key ({_KEY_SOURCES})"
                )
        elif self._has_databases():
            raise ClusterIdentityError(
                f"data directory {where!r} holds a standalone node's databases, which are in "
                "no Raft log: a replicated node cannot take them over; start it without a "
                "cluster key, or give the replicated node a new directory"
            )
        return record

    def _new_record(
        self, *, replicated: bool, origin: str, cluster_id: str | None = None
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "version": _IDENTITY_VERSION,
            "replicated": replicated,
            "key_fingerprint": key_fingerprint(self._key) if replicated and self._key else None,
            # The cluster's id: None until known (older versions wrote no such field).
            "cluster_id": cluster_id,
            # This directory's own id.
            "id": uuid.uuid4().hex,
            "origin": origin,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._write_record(record)
        return record

    def _write_record(self, record: dict[str, Any]) -> None:
        _write_atomically(self.path / IDENTITY_FILE, json.dumps(record, indent=2).encode() + b"\n")

    @property
    def cluster_id(self) -> str | None:
        """The id of the cluster the directory belongs to, None while it records none."""
        record = self._record
        value = None if record is None else record.get("cluster_id")
        return value if isinstance(value, str) and value else None

    def adopt_cluster_id(self, cluster_id: str) -> bool:
        """Record ``cluster_id`` if the directory records none yet; True if it did.

        Raises:
            ClusterIdMismatch: the directory records another id (nothing is changed).
        """
        with self._record_lock:
            recorded = self.cluster_id
            if recorded == cluster_id:
                return False
            if recorded is not None:
                raise ClusterIdMismatch(
                    f"data directory {str(self.path.absolute())!r} belongs to cluster "
                    f"{recorded}, not to cluster {cluster_id}"
                )
            if self._record is None or self._dir_fd < 0:
                raise ValueError("the directory records no replicated cluster")
            record = dict(self._record)
            record["cluster_id"] = cluster_id
            record["cluster_id_adopted"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._write_record(record)
            self._record = record
            return True

    def check_journal(self) -> None:
        """Refuse a Raft journal that cannot be opened, before anything reads or moves a file.

        Raises:
            JournalUnreadable: with the file, the reason and what to do.
        """
        try:
            check_journal(self.path / "raft" / "journal")
        except JournalError as exc:
            raise JournalUnreadable(
                f"the Raft journal cannot be used: {exc}; nothing was changed. Restore the "
                "data directory from a file-system backup, or rebuild this member: remove it "
                "from the cluster (.remove) and join it again with an empty directory"
            ) from exc

    @property
    def key_recorded(self) -> bool:
        """True when the directory records the cluster key's fingerprint."""
        return self._record is not None and self._record.get("key_fingerprint") is not None

    @property
    def fresh(self) -> bool:
        """True when the directory has never been part of a cluster (no record, no journal)."""
        has_journal = (self.path / "raft").is_dir()
        return not has_journal and (self._record is None or not self._record["replicated"])

    def record_cluster(self, origin: str, cluster_id: str | None = None) -> None:
        """Record that the directory belongs to the cluster of this node's key.

        Call it once the key is known to be the cluster's: when the node starts
        a cluster, joins one after checking the key, or restarts an existing
        member (``origin`` says which, for the operator reading the file), with
        the cluster's id if it is known.
        """
        if self._key is None:
            raise ValueError("a standalone node has no cluster to record")
        if self.key_recorded:
            if cluster_id is not None:
                self.adopt_cluster_id(cluster_id)
            return
        with self._record_lock:
            self._record = self._new_record(replicated=True, origin=origin, cluster_id=cluster_id)
