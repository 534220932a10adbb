"""The SQL text that recreates a database: ``Connection.iterdump()``, as ``sqlite3`` writes it.

It runs on the public driver only (queries of ``sqlite_master`` and
``PRAGMA table_info``), so it works the same against any server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["iterdump"]


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def iterdump(conn: Connection) -> Iterator[str]:
    """Yield the SQL text that recreates the database behind ``conn``."""
    cur = conn.cursor()
    yield "BEGIN TRANSACTION;"
    tables = cur.execute(
        "SELECT name, type, sql FROM sqlite_master "
        "WHERE sql NOT NULL AND type == 'table' ORDER BY name"
    ).fetchall()
    # sqlite_sequence is restored last, once the AUTOINCREMENT tables that
    # create it exist (as sqlite3 does since gh-79009).
    sequence: list[str] = []
    writable_schema = False
    for name, _type, sql in tables:
        if name == "sqlite_sequence":
            sequence.append('DELETE FROM "sqlite_sequence";')
            sequence.extend(
                f'INSERT INTO "sqlite_sequence" VALUES({_quote_literal(seq_name)},{seq});'
                for seq_name, seq in cur.execute('SELECT * FROM "sqlite_sequence"').fetchall()
            )
            continue
        if name == "sqlite_stat1":
            yield 'ANALYZE "sqlite_master";'
        elif name.startswith("sqlite_"):
            continue
        elif sql.startswith("CREATE VIRTUAL TABLE"):
            if not writable_schema:
                writable_schema = True
                yield "PRAGMA writable_schema=ON;"
            yield (
                "INSERT INTO sqlite_master(type,name,tbl_name,rootpage,sql)"
                f"VALUES('table',{_quote_literal(name)},{_quote_literal(name)},0,"
                f"{_quote_literal(sql)});"
            )
        else:
            yield f"{sql};"
        table = _quote_identifier(name)
        columns = [row[1] for row in cur.execute(f"PRAGMA table_info({table})").fetchall()]
        if not columns:
            continue
        values = "||','||".join(f"quote({_quote_identifier(c)})" for c in columns)
        query = (
            f"SELECT 'INSERT INTO ' || {_quote_literal(table)} || ' VALUES(' || {values} || ')' "
            f"FROM {table}"
        )
        for (row,) in cur.execute(query).fetchall():
            yield f"{row};"
    # In creation order (as sqlite3): a trigger must follow the view it is on.
    others = cur.execute(
        "SELECT name, type, sql FROM sqlite_master "
        "WHERE sql NOT NULL AND type IN ('index', 'trigger', 'view')"
    ).fetchall()
    for _name, _type, sql in others:
        yield f"{sql};"
    if writable_schema:
        yield "PRAGMA writable_schema=OFF;"
    yield from sequence
    yield "COMMIT;"


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
