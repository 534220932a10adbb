"""``dqlitepy backup -s ADDRS DB FILE``: a database of a live cluster as one standalone SQLite file.

The leader's copy comes through DUMP (:meth:`dqlitepy.Client.dump`), as the
Go shell's ``.dump`` gets it: the database file and its WAL.  A dqlitepy node
cuts that WAL after the last commit Raft accepted, so the pair holds committed
transactions only, a prefix of the cluster's history (``docs/backup.md``, "Why
a backup is consistent"); writes go on meanwhile.  Here the pair is written into
a temporary directory beside ``FILE`` and handed to the standard library's
SQLite, which folds the WAL into the file and switches it out of WAL mode (so
the ``sqlite3`` command opens it read-only, with no ``-wal`` beside it); the
result must pass ``PRAGMA integrity_check`` before it is synced and moved to
``FILE`` in one step.  ``FILE`` thus never holds half a backup, and an existing
``FILE`` is replaced only with ``--force``.

Exit codes: 0 done; 2 refused before anything was written (``FILE`` exists, is
a directory or has no directory, the database does not exist, bad options);
1 the cluster or the copy failed (``FILE`` untouched).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dqlitepy

from .clientargs import add_client_arguments, client_tls, servers_of

__all__ = ["BackupError", "BackupSummary", "add_parser", "run", "write_backup"]


class BackupError(Exception):
    """The backup cannot be made; ``status`` is the exit status (2: refused, 1: failed)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class BackupSummary:
    """What a backup file holds."""

    size: int
    tables: int


def _check_target(target: Path, force: bool) -> None:
    """Refuse a ``FILE`` that cannot be written, before asking the cluster for anything."""
    if target.is_dir():
        raise BackupError(f"{str(target)!r} is a directory: give the backup file's path", 2)
    if not target.parent.is_dir():
        raise BackupError(f"{str(target.parent)!r}, where {str(target)!r} goes, is no directory", 2)
    if target.exists() and not force:
        raise BackupError(f"{str(target)!r} exists: give another file, or --force to replace it", 2)


def _fsync(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fold(image: Path, database: str) -> BackupSummary:
    """Fold ``image``'s WAL into it, leave WAL mode, and check it; what it holds.

    Raises:
        BackupError: SQLite cannot read it, or finds it damaged.
    """
    try:
        conn = sqlite3.connect(image, isolation_level=None)
        try:
            # Reading the WAL, checkpointing it and deleting it: SQLite does all of it
            # when a database leaves WAL mode.
            (mode,) = conn.execute("PRAGMA journal_mode=DELETE").fetchone()
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            (tables,) = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"the copy of {database!r} cannot be read by SQLite: {exc}", 1) from exc
    if str(mode).lower() != "delete":
        raise BackupError(f"the copy of {database!r} stayed in {mode} mode", 1)
    if problems != ["ok"]:
        raise BackupError(
            f"the copy of {database!r} fails SQLite's integrity check: {'; '.join(problems[:5])}",
            1,
        )
    if Path(f"{image}-wal").exists():
        raise BackupError(f"the WAL of {database!r} was not folded into the copy", 1)
    return BackupSummary(image.stat().st_size, int(tables))


def _install(image: Path, target: Path, force: bool) -> None:
    """Move the finished ``image`` to ``target`` in one step (replacing it only if ``force``)."""
    if force:
        os.replace(image, target)
        return
    try:
        # A hard link fails if the name exists, even if it was created a moment ago.
        os.link(image, target)
    except FileExistsError:
        raise BackupError(
            f"{str(target)!r} exists: give another file, or --force to replace it", 2
        ) from None
    except OSError:
        # A file system without hard links: check, then rename (a race remains).
        if target.exists():
            raise BackupError(
                f"{str(target)!r} exists: give another file, or --force to replace it", 2
            ) from None
        os.replace(image, target)


def write_backup(
    database: str, files: dict[str, bytes], target: Path, *, force: bool = False
) -> BackupSummary:
    """Turn DUMP's files of ``database`` into the standalone SQLite file ``target``.

    The work happens in a temporary directory beside ``target``, removed
    whatever happens; ``target`` appears, complete and synced, only at the end.

    Raises:
        BackupError: the files are not a database, the copy is damaged, or
            ``target`` exists (without ``force``).
        OSError: the files cannot be written.
    """
    main = files.get(database, b"")
    wal = files.get(f"{database}-wal", b"")
    if not main:
        if wal:
            # SQLite discards a WAL whose database file is empty: nothing could be read.
            raise BackupError(f"DUMP gave a WAL of {database!r} without its database file", 1)
        raise BackupError(f"database {database!r} does not exist: nothing to back up", 2)
    workdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        image = workdir / "backup.db"
        image.write_bytes(main)
        if wal:
            Path(f"{image}-wal").write_bytes(wal)
        summary = _fold(image, database)
        _fsync(image)
        _install(image, target, force)
        _fsync(target.parent, directory=True)
        return summary
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    """Run ``dqlitepy backup``; returns the exit status."""
    target = Path(args.file)
    try:
        _check_target(target, args.force)
        tls = client_tls(args)
    except BackupError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.status
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    try:
        with dqlitepy.Client(servers_of(args), timeout=args.timeout, ssl=tls) as client:
            leader = client.leader()
            if leader is None:
                raise BackupError("no leader: the cluster cannot serve a consistent copy now", 1)
            files = client.dump(args.database, leader.address)
        summary = write_backup(args.database, files, target, force=args.force)
    except BackupError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.status
    except (dqlitepy.Error, OSError) as exc:
        print(f"Error: backup of {args.database!r} failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"backed up {args.database!r} from {leader.address} to {target}: "
        f"{summary.size} bytes, {summary.tables} tables"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``backup`` and its options to the command's subparsers."""
    parser = sub.add_parser(
        "backup",
        help="copy a database of a live cluster into a standalone SQLite file",
        description="Copy database DB of a running cluster, as its leader committed it, "
        "into FILE: one SQLite file (not in WAL mode) that the sqlite3 command opens.",
    )
    add_client_arguments(parser)
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    parser.add_argument("database", metavar="DB")
    parser.add_argument("file", metavar="FILE")
    parser.set_defaults(func=run)
