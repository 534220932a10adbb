"""``dqlitepy restore -s ADDRS DB FILE``: load a SQLite file into a new or empty database.

The file is read with the standard library's ``sqlite3`` (read-only) and written
through the driver, so every statement takes the replicated write path and every
node gets the data, as if an application had written it.  Order, so that the
result works and no trigger fires on restored rows:

1. in the first transaction, ``BEGIN IMMEDIATE``, the check that the target
   holds no table, index, view or trigger (else exit 2, nothing changed), then
   the tables (``sqlite_sequence`` comes with the first ``AUTOINCREMENT`` one) and
   their indexes, in the order the file created them;
2. the rows, table by table, by rowid (which is kept), in multi-row ``INSERT``
   statements;
3. in the last transaction, the views and triggers (creation order), the rows
   of ``sqlite_sequence``, ``user_version`` and ``application_id``, and
   ``ANALYZE`` if the file holds statistics.

**Transactions.**  A file whose data fits in ``--transaction-size`` (4 MiB by
default) is restored in one transaction: it is either all there or not at
all.  A larger one is committed every ``--transaction-size`` bytes of row data,
so that no Raft entry grows with the file; until the last transaction commits,
the database holds table :data:`MARKER_TABLE` (created by the first, dropped by
the last), which says that the restore is incomplete.  A restore that fails
midway exits 1 and says what the database holds: nothing, everything (only if
the last COMMIT's outcome is unknown), or a part marked by that table (drop the
database's tables, or pick another name, and run the restore again).

Virtual tables (FTS, R-tree...) are refused: their contents live in shadow
tables that only ``PRAGMA writable_schema`` could restore, which a node refuses.

Exit codes: 0 done; 2 refused before anything changed (the file is missing or
not a sound SQLite database, holds virtual tables, the target database is not
empty, bad options); 1 failed (see above).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dqlitepy

from .clientargs import add_client_arguments, client_tls, servers_of

__all__ = [
    "DEFAULT_TRANSACTION_SIZE",
    "MARKER_TABLE",
    "Restore",
    "RestoreError",
    "RestoreSummary",
    "SourceDatabase",
    "add_parser",
    "run",
]

#: A restore larger than one transaction keeps this table until it is complete.
MARKER_TABLE = "dqlitepy_restore_incomplete"
#: Row data per transaction (bytes), unless ``--transaction-size`` says otherwise.
DEFAULT_TRANSACTION_SIZE = 4 << 20
# dqlite 1.11 sends at most 255 parameters per statement (its tuple schema 0).
_MAX_PARAMETERS = 255
_MAX_ROWS_PER_STATEMENT = 64
_FETCH_ROWS = 1024
# What a value costs besides its text or bytes, in the transaction-size count.
_VALUE_OVERHEAD = 8

_ROWID_NAMES = ("rowid", "oid", "_rowid_")

Row = tuple[Any, ...]


class RestoreError(Exception):
    """The restore cannot go on; ``status`` is the exit status (2: nothing changed, 1: failed)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class _Table:
    """One ordinary table of the file: what its rows are read and written with."""

    name: str
    sql: str
    columns: tuple[str, ...]
    #: A name for the rowid that no column takes (None: WITHOUT ROWID, or every name taken).
    rowid: str | None

    @property
    def select(self) -> str:
        names = ([self.rowid] if self.rowid else []) + [_quote(c) for c in self.columns]
        order = f" ORDER BY {self.rowid}" if self.rowid else ""
        return f"SELECT {', '.join(names)} FROM {_quote(self.name)}{order}"

    @property
    def width(self) -> int:
        return len(self.columns) + (1 if self.rowid else 0)

    def insert(self, rows: int) -> str:
        names = ([self.rowid] if self.rowid else []) + [_quote(c) for c in self.columns]
        one = "(" + ", ".join("?" * self.width) + ")"
        return (
            f"INSERT INTO {_quote(self.name)} ({', '.join(names)}) VALUES {', '.join([one] * rows)}"
        )


class SourceDatabase:
    """What a SQLite file holds, read with the standard library (read-only).

    Args:
        path: the file.

    Raises:
        RestoreError: it is missing, not a SQLite database, damaged, or holds
            virtual tables (status 2).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        #: Ordinary tables, in creation order.
        self.tables: list[_Table] = []
        self.indexes: list[str] = []
        #: Views and triggers, in creation order.
        self.later: list[str] = []
        self.sequence: list[tuple[str, int]] = []
        self.user_version = 0
        self.application_id = 0
        self.statistics = False
        #: Bytes of the file's pages in use: what the row data is at most.
        self.size = 0
        if not path.is_file():
            raise RestoreError(f"{str(path)!r} is no file", 2)
        uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro"
        try:
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise RestoreError(f"cannot open {str(path)!r}: {exc}", 2) from exc
        try:
            self._read()
        except sqlite3.Error as exc:
            self.conn.close()
            raise RestoreError(f"{str(path)!r} is not a SQLite database: {exc}", 2) from exc
        except RestoreError:
            self.conn.close()
            raise

    def close(self) -> None:
        """Close the file."""
        self.conn.close()

    def _pragma(self, name: str) -> int:
        (value,) = self.conn.execute(f"PRAGMA {name}").fetchone()
        return int(value)

    def _read(self) -> None:
        problems = [row[0] for row in self.conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise RestoreError(
                f"{str(self.path)!r} is damaged (PRAGMA quick_check: {'; '.join(problems[:5])})", 2
            )
        self.user_version = self._pragma("user_version")
        self.application_id = self._pragma("application_id")
        self.size = (self._pragma("page_count") - self._pragma("freelist_count")) * self._pragma(
            "page_size"
        )
        schema = self.conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
        ).fetchall()
        virtual = [name for kind, name, sql in schema if sql.upper().startswith("CREATE VIRTUAL")]
        if virtual:
            raise RestoreError(
                f"{str(self.path)!r} holds virtual tables ({', '.join(map(repr, virtual))}), "
                "which restore cannot load: their contents live in shadow tables",
                2,
            )
        for kind, name, sql in schema:
            if kind == "table" and name == "sqlite_sequence":
                self.sequence = [
                    (str(n), int(s))
                    for n, s in self.conn.execute("SELECT name, seq FROM sqlite_sequence")
                ]
            elif kind == "table" and name.startswith("sqlite_stat"):
                self.statistics = True
            elif kind == "table" and not name.startswith("sqlite_"):
                self.tables.append(self._table(name, sql))
            elif kind == "index":
                self.indexes.append(sql)
            elif kind in ("view", "trigger"):
                self.later.append(sql)

    def _table(self, name: str, sql: str) -> _Table:
        # table_info leaves generated columns out: SQLite computes them again.
        columns = tuple(
            str(row[1]) for row in self.conn.execute(f"PRAGMA table_info({_quote(name)})")
        )
        taken = {c.lower() for c in columns}
        rowid = next((n for n in _ROWID_NAMES if n not in taken), None)
        if rowid is not None:
            try:
                self.conn.execute(f"SELECT {rowid} FROM {_quote(name)} LIMIT 0")
            except sqlite3.OperationalError:
                rowid = None  # WITHOUT ROWID
        return _Table(name, sql, columns, rowid)

    def rows(self, table: _Table) -> Iterator[list[Row]]:
        """The rows of ``table``, by rowid, a batch at a time."""
        cursor = self.conn.execute(table.select)
        while batch := cursor.fetchmany(_FETCH_ROWS):
            yield batch


@dataclass(frozen=True, slots=True)
class RestoreSummary:
    """What a restore wrote."""

    tables: int
    rows: int
    transactions: int


def _cost(row: Row) -> int:
    return sum(_VALUE_OVERHEAD + (len(v) if isinstance(v, (str, bytes)) else 0) for v in row)


class _Writer:
    """The target database's side: transactions bounded in size, and what they left."""

    def __init__(self, conn: dqlitepy.Connection, limit: int | None) -> None:
        self._cur = conn.cursor()
        #: None: everything in one transaction.
        self._limit = limit
        self._pending = 0
        self.transactions = 0
        #: Some transaction committed: the database holds a part of the file.
        self.partial = False

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in self._cur.execute(sql, parameters).fetchall()]

    def begin(self) -> None:
        self._cur.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._cur.execute("COMMIT")
        self.transactions += 1
        self._pending = 0

    def commit_part(self) -> None:
        """Commit a transaction of a restore in several, and begin the next one."""
        self.commit()
        self.partial = True
        self.begin()

    def insert(self, table: _Table, rows: list[Row]) -> None:
        """Insert ``rows``, committing whenever the transaction reaches its size."""
        start = 0
        while start < len(rows):
            end = start
            while end < len(rows) and (self._limit is None or self._pending < self._limit):
                self._pending += _cost(rows[end])
                end += 1
            self._insert_run(table, rows[start:end])
            start = end
            if self._limit is not None and self._pending >= self._limit:
                self.commit_part()

    def _insert_run(self, table: _Table, rows: list[Row]) -> None:
        """Insert ``rows`` several to a statement (one prepared statement for the full groups)."""
        per_statement = max(1, min(_MAX_ROWS_PER_STATEMENT, _MAX_PARAMETERS // table.width))
        full = len(rows) - len(rows) % per_statement
        if full:
            groups = (
                [v for row in rows[i : i + per_statement] for v in row]
                for i in range(0, full, per_statement)
            )
            self._cur.executemany(table.insert(per_statement), groups)
        if full < len(rows):
            rest = rows[full:]
            self._cur.execute(table.insert(len(rest)), [v for row in rest for v in row])


def _first_transaction(source: SourceDatabase, writer: _Writer, *, marked: bool) -> None:
    """Check that the target is empty, then create the tables and indexes (and the marker)."""
    writer.begin()
    objects = writer.execute(
        "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!'"
    )
    if objects:
        writer.execute("ROLLBACK")
        names = ", ".join(f"{kind} {name!r}" for kind, name in objects[:5])
        more = f" and {len(objects) - 5} more" if len(objects) > 5 else ""
        raise RestoreError(
            f"the database is not empty ({names}{more}): restore loads a file only into a new "
            "or empty database; give another name, or empty this one first",
            2,
        )
    if marked:
        writer.execute(
            f"CREATE TABLE {MARKER_TABLE} (file TEXT, started TEXT)",
        )
        writer.execute(
            f"INSERT INTO {MARKER_TABLE} VALUES (?, ?)",
            (str(source.path), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        )
    for table in source.tables:
        writer.execute(table.sql)
    for sql in source.indexes:
        writer.execute(sql)


def _last_transaction(source: SourceDatabase, writer: _Writer, *, marked: bool) -> None:
    """Views, triggers, sqlite_sequence, the header's numbers; then commit."""
    for sql in source.later:
        writer.execute(sql)
    if source.sequence:
        # Inserting rows moved each sequence to its table's largest rowid; the file
        # may remember larger values (rows deleted since).
        writer.execute("DELETE FROM sqlite_sequence")
        for name, seq in source.sequence:
            writer.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, seq))
    if source.user_version:
        writer.execute(f"PRAGMA user_version = {int(source.user_version)}")
    if source.application_id:
        writer.execute(f"PRAGMA application_id = {int(source.application_id)}")
    if source.statistics:
        writer.execute("ANALYZE")
    if marked:
        writer.execute(f"DROP TABLE {MARKER_TABLE}")
    writer.commit()


class Restore:
    """Loads ``source`` into the empty database behind ``conn`` (an autocommit connection).

    Args:
        source: the file.
        conn: the target, opened with ``isolation_level=None``.
        transaction_size: row data per transaction; a file whose data fits is
            restored in one.
        progress: called with a line of progress after each table.
    """

    def __init__(
        self,
        source: SourceDatabase,
        conn: dqlitepy.Connection,
        *,
        transaction_size: int = DEFAULT_TRANSACTION_SIZE,
        progress: Callable[[str], None] = lambda line: None,
    ) -> None:
        self._source = source
        self.single = source.size <= transaction_size
        self._writer = _Writer(conn, None if self.single else transaction_size)
        self._progress = progress

    def run(self) -> RestoreSummary:
        """Restore the file; what was written.

        Raises:
            RestoreError: the target is not empty (status 2, nothing changed),
                or the file could not be read midway (status 1).
            dqlitepy.Error: the cluster failed (:meth:`failure` says what is left).
        """
        source, writer = self._source, self._writer
        # Rows go in table by table, so a row may precede the row it refers to.
        writer.execute("PRAGMA foreign_keys = OFF")
        _first_transaction(source, writer, marked=not self.single)
        if not self.single:
            writer.commit_part()
        rows = 0
        for table in source.tables:
            count = 0
            try:
                for batch in source.rows(table):
                    writer.insert(table, batch)
                    count += len(batch)
            except sqlite3.Error as exc:
                raise RestoreError(
                    f"reading table {table.name!r} of the file failed: {exc}", 1
                ) from exc
            rows += count
            self._progress(f"table {table.name!r}: {count} rows")
        _last_transaction(source, writer, marked=not self.single)
        return RestoreSummary(len(source.tables), rows, writer.transactions)

    def failure(self, database: str, exc: Exception) -> str:
        """What a restore that failed with ``exc`` left in ``database``, truthfully."""
        done = f"restore of {database!r} failed: {exc}"
        marked = f"table {MARKER_TABLE!r} marks it"
        if self._writer.partial:
            return (
                f"{done}; the database holds part of the file ({marked}): drop its tables, "
                "or use another name, and restore again"
            )
        if getattr(exc, "outcome", None) != "unknown":
            return f"{done}; nothing was restored"
        if self.single:
            return (
                f"{done}; the outcome of its only COMMIT is unknown: the database holds "
                "either nothing of the file or all of it"
            )
        return (
            f"{done}; the outcome of its first COMMIT is unknown: the database holds "
            f"either nothing or the beginning of the file ({marked})"
        )


def run(args: argparse.Namespace) -> int:
    """Run ``dqlitepy restore``; returns the exit status."""
    try:
        tls = client_tls(args)
        source = SourceDatabase(Path(args.file))
    except RestoreError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.status
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    job: Restore | None = None
    try:
        conn = dqlitepy.connect(
            args.database,
            servers=servers_of(args),
            isolation_level=None,
            ssl=tls,
            request_timeout=args.timeout,
        )
        try:
            job = Restore(
                source,
                conn,
                transaction_size=args.transaction_size,
                progress=lambda line: print(line, file=sys.stderr, flush=True),
            )
            summary = job.run()
        finally:
            conn.close()
    except (RestoreError, dqlitepy.Error) as exc:
        status = exc.status if isinstance(exc, RestoreError) else 1
        if status == 2:
            message = str(exc)
        elif job is None:
            message = f"restore of {args.database!r} failed: {exc}; nothing was restored"
        else:
            message = job.failure(args.database, exc)
        print(f"Error: {message}", file=sys.stderr)
        return status
    finally:
        source.close()
    print(
        f"restored {args.file} into {args.database!r}: {summary.tables} tables, "
        f"{summary.rows} rows, {summary.transactions} transaction(s)"
    )
    return 0


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = number[-1:] if number[-1:] in units else ""
    try:
        value = int(number.removesuffix(unit)) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: expected e.g. 4M") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: must be positive")
    return value


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``restore`` and its options to the command's subparsers."""
    parser = sub.add_parser(
        "restore",
        help="load a SQLite file into a new or empty database of a cluster",
        description="Load the SQLite file FILE into database DB of a cluster, through the "
        "replicated write path; DB must be new or empty.",
    )
    add_client_arguments(parser)
    parser.add_argument(
        "--transaction-size",
        type=_size,
        default=DEFAULT_TRANSACTION_SIZE,
        metavar="BYTES",
        help="row data per transaction; a file whose data fits is restored in one "
        "(K, M, G suffixes; default 4M)",
    )
    parser.add_argument("database", metavar="DB")
    parser.add_argument("file", metavar="FILE")
    parser.set_defaults(func=run)
