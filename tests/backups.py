"""SQLite files for the backup, restore and recovery tests, and what they hold.

:func:`make_source` writes a file that uses what a restore must carry over; :func:`contents`
reads everything a file holds with the standard library; :func:`node_copy` does it for one
node's own copy of a database (its DUMP, made standalone as ``dqlitepy backup`` does).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import dqlitepy
from dqlitepy.cli.backup import write_backup

__all__ = ["contents", "make_source", "node_copy"]


def make_source(path: Path, rows: int = 3000) -> None:
    """A SQLite file using what restore must carry over (see the assertions on it)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        """
        PRAGMA user_version = 42;
        PRAGMA application_id = 4660;
        CREATE TABLE acct (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, bal REAL,
                           photo BLOB);
        CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
        CREATE TABLE plain (a, b);
        CREATE TABLE gen (x INTEGER, y INTEGER GENERATED ALWAYS AS (x * 2) VIRTUAL);
        CREATE INDEX plain_b ON plain (b);
        CREATE INDEX acct_rich ON acct (bal) WHERE bal > 100;
        CREATE VIEW rich AS SELECT name, bal FROM acct WHERE bal > 100;
        -- Restored last: they must not fire on the restored rows.
        CREATE TRIGGER acct_audit AFTER INSERT ON acct
            BEGIN INSERT INTO plain VALUES ('audit', new.id); END;
        CREATE TRIGGER rich_insert INSTEAD OF INSERT ON rich
            BEGIN INSERT INTO acct (name, bal) VALUES (new.name, new.bal); END;
        """
    )
    conn.execute("BEGIN")
    for i in range(200):
        conn.execute(
            "INSERT INTO acct (name, bal, photo) VALUES (?, ?, ?)",
            (f"name {i} é", i * 1.5, bytes([i % 256]) * (i % 7)),
        )
    # sqlite_sequence stays at 200, above the largest id left.
    conn.execute("DELETE FROM acct WHERE id > 190")
    conn.execute("DELETE FROM plain")
    conn.executemany(
        "INSERT INTO plain (rowid, a, b) VALUES (?, ?, ?)",  # rowids with gaps: kept
        [(i * 3, f"text {i}" * 5, i % 17 if i % 5 else None) for i in range(1, rows)],
    )
    conn.executemany(
        "INSERT INTO kv VALUES (?, ?)",
        [
            ("min", -(2**63)),
            ("max", 2**63 - 1),
            ("float", 0.1),
            ("empty", b""),
            ("big", b"\x00\xff" * 50_000),
            ("null", None),
        ],
    )
    conn.executemany("INSERT INTO gen (x) VALUES (?)", [(i,) for i in range(10)])
    conn.execute("COMMIT")
    conn.close()


def contents(path: Path) -> dict[str, Any]:
    """Everything a database holds, read with the standard library (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        schema = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master "
            "WHERE name NOT LIKE 'sqlite!_stat%' ESCAPE '!' ORDER BY type, name"
        ).fetchall()
        rows = {}
        for kind, name, _table, _sql in schema:
            if kind != "table":
                continue
            quoted = '"' + name.replace('"', '""') + '"'
            try:
                rows[name] = conn.execute(
                    f"SELECT rowid, * FROM {quoted} ORDER BY rowid"
                ).fetchall()
            except sqlite3.OperationalError:  # WITHOUT ROWID
                rows[name] = conn.execute(f"SELECT * FROM {quoted} ORDER BY 1").fetchall()
        pragmas = {
            p: conn.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("user_version", "application_id", "integrity_check", "journal_mode")
        }
        return {"schema": schema, "rows": rows, "pragmas": pragmas}
    finally:
        conn.close()


def node_copy(address: str, database: str, path: Path) -> dict[str, Any] | None:
    """The contents of ``database`` as node ``address`` itself holds it (its DUMP).

    None while the node has no file for it yet (a follower that has not applied its creation).
    """
    with dqlitepy.Client([address], timeout=10) as client:
        files = client.dump(database, address)
    if not files.get(database):
        return None
    write_backup(database, files, path, force=True)
    return contents(path)
