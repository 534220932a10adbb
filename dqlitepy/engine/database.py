"""The databases of one node's data directory: :class:`Engine`.

An :class:`Engine` names each database's file (:func:`database_filename`), opens
sessions on them, and does what replication needs with the files themselves:
cutting a WAL back to its last committed frame, making a snapshot image, staging
and installing a received snapshot, writing a replicated transaction's pages, and
setting the files aside while a node rebuilds them from the Raft log.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

import apsw

from .errors import SQLITE_CORRUPT, EngineError, translate
from .session import Session
from .wal import Transaction, apply_pages, committed_prefix, prefix_length

__all__ = ["Engine", "database_filename"]

_SAFE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_MAX_FILENAME = 200


#: Database file paths an :class:`Engine` keeps at most (see ``Engine.path``).
_PATHS_CACHED = 1024


def database_filename(name: str) -> str:
    """Return the file name a database name is stored under.

    Names are opaque strings chosen by clients: every character outside
    ``[A-Za-z0-9_-]`` is percent-encoded (so ``../x`` and ``/etc/x`` stay inside
    the data directory) and over-long names are shortened with a hash.
    """
    encoded = "".join(
        c
        if c in _SAFE_NAME_CHARS
        else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        for c in name
    )
    if len(encoded) > _MAX_FILENAME:
        import hashlib

        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
        encoded = encoded[:64] + "~" + digest
    return f"db-{encoded}.sqlite"


def _copy_exactly(source: BinaryIO, out: BinaryIO, size: int) -> int:
    """Copy ``size`` bytes (fewer if ``source`` ends first); return how many were copied."""
    copied = 0
    while copied < size:
        chunk = source.read(min(size - copied, 1 << 20))
        if not chunk:
            break
        out.write(chunk)
        copied += len(chunk)
    return copied


def _fold_wal(path: Path) -> None:
    """Checkpoint the WAL beside ``path`` into it and remove the WAL and its index."""
    try:
        db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchall()
            db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.Error as exc:
            raise translate(exc, db) from exc
        finally:
            db.close(True)
    except apsw.Error as exc:
        raise translate(exc) from exc
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


class Engine:
    """The databases in one node's data directory.

    Args:
        data_dir: where database files live (created if missing).
        busy_timeout_ms: how long a writer waits for another writer.
        synchronous: SQLite's ``synchronous`` for every session; FULL makes a
            single node durable on its own.
        checkpoint_on_close: see :class:`Session` (False on a replicated node).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = 5000,
        synchronous: str = "FULL",
        checkpoint_on_close: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.checkpoint_on_close = checkpoint_on_close
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        # Each name's file: a follower looks it up several times per commit it applies,
        # and joining a Path costs a dozen Python calls.  Names come from clients, so
        # the cache is emptied rather than let grow without bound.
        self._paths: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        """The file of database ``name``; always inside the data directory."""
        path = self._paths.get(name)
        if path is None:
            if len(self._paths) >= _PATHS_CACHED:
                self._paths.clear()
            path = self._paths[name] = self.data_dir / database_filename(name)
        return path

    def exists(self, name: str) -> bool:
        """True if database ``name`` has been created."""
        return self.path(name).exists()

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Each database's name with the bytes of its file and of its WAL (for monitoring).

        A name too long to be a file name comes back as stored: shortened, with
        its hash (:func:`database_filename`).
        """
        found: dict[str, tuple[int, int]] = {}
        for path in self.data_dir.glob("db-*.sqlite"):
            try:
                size = path.stat().st_size
            except OSError:
                continue  # removed (or being swapped) meanwhile
            try:
                wal = Path(f"{path}-wal").stat().st_size
            except OSError:
                wal = 0
            name = unquote(path.name[len("db-") : -len(".sqlite")], errors="surrogatepass")
            found[name] = (size, wal)
        return found

    def session(self, name: str) -> Session:
        """Open a session on database ``name``, creating the database on first use."""
        return Session(
            self.path(name),
            busy_timeout_ms=self.busy_timeout_ms,
            synchronous=self.synchronous,
            checkpoint_on_close=self.checkpoint_on_close,
        )

    def remove(self, name: str) -> None:
        """Delete database ``name``'s files (replication rebuilds them from the log)."""
        path = self.path(name)
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(path) + suffix).unlink(missing_ok=True)

    def remove_all(self) -> None:
        """Delete every database file of this node."""
        for path in self.data_dir.glob("db-*.sqlite*"):
            path.unlink(missing_ok=True)  # staged snapshot files too

    @property
    def previous_dir(self) -> Path:
        """Where :meth:`set_aside` keeps the files a rebuild replaces."""
        return self.data_dir.with_name(self.data_dir.name + ".previous")

    def set_aside(self) -> Path | None:
        """Move the database files aside so that they can be rebuilt; return where to.

        Nothing is deleted: the files move (one rename) to :attr:`previous_dir`
        and an empty directory takes their place.  If an earlier start left
        files aside already, it never finished its rebuild: what it rebuilt is
        deleted and the files set aside before stay.  Returns None when there
        was nothing to set aside.
        """
        previous = self.previous_dir
        if previous.exists():
            self.remove_all()
            return previous
        if not any(self.data_dir.glob("db-*.sqlite*")):
            return None
        os.rename(self.data_dir, previous)
        self.data_dir.mkdir()
        fd = os.open(self.data_dir.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename is durable before anything is rebuilt
        finally:
            os.close(fd)
        return previous

    def discard_previous(self) -> None:
        """Delete the files :meth:`set_aside` kept (the rebuild is complete)."""
        shutil.rmtree(self.previous_dir, ignore_errors=True)

    def restore_committed(self, name: str, salts: tuple[int, int] | None, frames: int) -> None:
        """Drop WAL frames past the last committed one and fold the rest into the file.

        Every session on the database must be closed.  ``salts``/``frames``
        identify the WAL generation and frame count of the last transaction
        replication committed; a different generation holds only frames that
        were never committed (a restart happens after a complete checkpoint).
        Afterwards the database file alone holds the committed state, and the
        WAL is empty, so pages can be written into the file directly.
        """
        path = self.path(name)
        if not os.path.exists(f"{path}-wal") and not os.path.exists(f"{path}-shm"):
            # What a follower finds at each commit it applies (the last one left
            # no WAL): nothing to cut, remove or fold.
            return
        wal = Path(str(path) + "-wal")
        if wal.exists():
            os.truncate(wal, min(committed_prefix(wal, salts, frames), wal.stat().st_size))
        Path(str(path) + "-shm").unlink(missing_ok=True)
        if not path.exists() or not wal.exists() or wal.stat().st_size == 0:
            wal.unlink(missing_ok=True)  # nothing to fold
            return
        _fold_wal(path)

    def snapshot_image(
        self, name: str, salts: tuple[int, int] | None, frames: int, workdir: Path
    ) -> Path | None:
        """Make a self-contained copy of database ``name`` as of its last committed frame.

        The database file and the WAL's committed prefix are copied into
        ``workdir`` and folded together there, so frames Raft has not committed
        are left out and the live files are not touched.  Returns the image's
        path, or None if the database has no file.  The caller keeps
        checkpoints of this database from running meanwhile.
        """
        path = self.path(name)
        if not path.exists():
            return None
        image = workdir / "image.db"
        image_wal = Path(str(image) + "-wal")
        for stale in (image, image_wal, Path(str(image) + "-shm")):
            stale.unlink(missing_ok=True)
        shutil.copyfile(path, image)
        wal = Path(str(path) + "-wal")
        keep = committed_prefix(wal, salts, frames)
        if keep:
            with wal.open("rb") as src, image_wal.open("wb") as dst:
                _copy_exactly(src, dst, keep)
        _fold_wal(image)
        return image

    def stage(self, name: str, source: BinaryIO, size: int, tag: int) -> Path:
        """Copy ``size`` bytes of ``source`` into a new file beside database ``name``'s.

        The file is not the database's until :meth:`install` swaps it in; ``tag``
        keeps files staged one after the other apart.
        """
        staged = Path(f"{self.path(name)}.staged-{tag}")
        with staged.open("wb") as out:
            if _copy_exactly(source, out, size) < size:
                staged.unlink(missing_ok=True)
                raise EngineError(SQLITE_CORRUPT, f"snapshot of {name!r} is truncated")
        return staged

    def install(self, name: str, staged: Path) -> None:
        """Make a file from :meth:`stage` database ``name``'s (no session may be open)."""
        path = self.path(name)
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        os.replace(staged, path)

    def apply(self, name: str, *transactions: Transaction) -> None:
        """Write replicated transactions' pages, in order, into database ``name``'s file.

        The database must have no open session and an empty WAL (see
        :meth:`restore_committed`).
        """
        apply_pages(self.path(name), *transactions)

    def dump(
        self, name: str, committed: tuple[tuple[int, int] | None, int] | None = None
    ) -> list[tuple[str, bytes]]:
        """Return the database file and its WAL, read inside one read transaction.

        Args:
            name: the database.
            committed: on a replicated node, the WAL generation (salts) and frame
                count of the last commit Raft accepted: the WAL is cut there, so
                the files hold committed transactions only, even while later
                commits wait for Raft in the same WAL (``docs/replication.md``,
                rule 3).  None (a single node): the whole WAL, where SQLite
                itself ignores frames past the last complete commit.

        A database that does not exist gives two empty files, as dqlite 1.11 does.
        The caller keeps checkpoints and rebuilds of this database from running
        meanwhile.
        """
        path = self.path(name)
        if not path.exists():
            return [(name, b""), (name + "-wal", b"")]
        session = self.session(name)
        try:
            # The read transaction keeps SQLite from restarting the WAL over the
            # frames it reads while they are copied (when it reads any).
            with session.read_transaction():
                main = path.read_bytes()
                wal_path = Path(str(path) + "-wal")
                wal = wal_path.read_bytes() if wal_path.exists() else b""
        finally:
            session.close()
        if committed is not None:
            # Measured on the copy itself: should SQLite have restarted the WAL
            # meanwhile (possible only once every frame was in the database file),
            # the copied header names another generation and nothing of it is kept.
            wal = wal[: prefix_length(wal, *committed)]
        return [(name, main), (name + "-wal", wal)]
