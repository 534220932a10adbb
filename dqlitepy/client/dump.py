"""The SQL text that recreates a database: ``Connection.iterdump()``, as ``sqlite3`` writes it.

It runs on the public driver only (queries of ``sqlite_master`` and
``PRAGMA table_info``), so it works the same against any server.  The logic is
written once, as :func:`dump_steps`, a generator that yields the lines of the
dump and the queries it needs answered; :func:`iterdump` answers them with a
blocking cursor, and ``dqlitepy.aio``'s ``iterdump`` with an asyncio one.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Query", "dump_steps", "iterdump"]


class Query:
    """A step of :func:`dump_steps`: run ``sql`` and send back all its rows."""

    __slots__ = ("sql",)

    def __init__(self, sql: str) -> None:
        self.sql = sql


#: Yields a line of the dump (``str``) or a :class:`Query`, which is answered with its rows.
DumpSteps = Generator["str | Query", "list[Any] | None", None]


def iterdump(conn: Connection) -> Iterator[str]:
    """Yield the SQL text that recreates the database behind ``conn``."""
    cur = conn.cursor()
    steps = dump_steps()
    answer: list[Any] | None = None
    while True:
        try:
            step = steps.send(answer)
        except StopIteration:
            return
        answer = None
        if isinstance(step, Query):
            answer = cur.execute(step.sql).fetchall()
        else:
            yield step


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _rows(sql: str) -> Generator[Query, list[Any] | None, list[Any]]:
    rows = yield Query(sql)
    assert rows is not None
    return rows


def dump_steps() -> DumpSteps:
    """The dump as steps: its lines, and the queries whose rows make them."""
    yield "BEGIN TRANSACTION;"
    tables = yield from _rows(
        "SELECT name, type, sql FROM sqlite_master "
        "WHERE sql NOT NULL AND type == 'table' ORDER BY name"
    )
    # sqlite_sequence is restored last, once the AUTOINCREMENT tables that
    # create it exist (as sqlite3 does since gh-79009).
    sequence: list[str] = []
    writable_schema = False
    for name, _type, sql in tables:
        if name == "sqlite_sequence":
            sequence.append('DELETE FROM "sqlite_sequence";')
            sequences = yield from _rows('SELECT * FROM "sqlite_sequence"')
            sequence.extend(
                f'INSERT INTO "sqlite_sequence" VALUES({_quote_literal(seq_name)},{seq});'
                for seq_name, seq in sequences
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
        columns = [row[1] for row in (yield from _rows(f"PRAGMA table_info({table})"))]
        if not columns:
            continue
        values = "||','||".join(f"quote({_quote_identifier(c)})" for c in columns)
        query = (
            f"SELECT 'INSERT INTO ' || {_quote_literal(table)} || ' VALUES(' || {values} || ')' "
            f"FROM {table}"
        )
        for (row,) in (yield from _rows(query)):
            yield f"{row};"
    # In creation order (as sqlite3): a trigger must follow the view it is on.
    others = yield from _rows(
        "SELECT name, type, sql FROM sqlite_master "
        "WHERE sql NOT NULL AND type IN ('index', 'trigger', 'view')"
    )
    for _name, _type, sql in others:
        yield f"{sql};"
    if writable_schema:
        yield "PRAGMA writable_schema=OFF;"
    yield from sequence
    yield "COMMIT;"


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
