"""The workloads: what one client does, over and over, for the measured time.

Every workload opens its own database on the cluster, so each measurement starts from the
same state. ``setup`` runs once, through one connection, before the clients connect;
``make_op`` gives each client (a thread in a worker process, with its own connection)
the operation it repeats. An operation that raises counts as an error of its kind and the
client carries on.

- ``kvwrite``, ``kvreadwrite``: the workloads of go-dqlite's ``dqlite-benchmark``. A table
  ``model (key TEXT, value TEXT, UNIQUE(key))``; a write is
  ``INSERT OR REPLACE INTO model(key, value) VALUES(?, ?)`` with a new random 32-byte key
  and a 1,024-byte value (half one repeated letter, half random letters); ``kvreadwrite``
  flips a coin before each operation and, on heads, reads back a key the client wrote
  (``SELECT value FROM model WHERE key = ?``).
- ``read``: point reads by primary key of a 1,000-row table filled by ``setup``.
- ``scan``: one ``SELECT`` of every row of a 100,000-row table (32-byte values), the whole
  result fetched; an operation is one scan.
- ``tx10mib``: one transaction writing 10 MiB: ``BEGIN``, ten ``INSERT OR REPLACE`` of a
  1 MiB blob (keys 0-9, so the table stays at 10 MiB), ``COMMIT``.

All statements run on autocommit connections (``isolation_level=None``) of dqlitepy's
driver, with explicit ``BEGIN``/``COMMIT`` where a transaction spans statements.
"""

from __future__ import annotations

import contextlib
import os
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

import dqlitepy

__all__ = ["WORKLOADS", "Op", "Workload"]

Op = Callable[[], None]

_LETTERS = string.ascii_letters
KEY_SIZE = 32
VALUE_SIZE = 1024
READ_ROWS = 1_000
SCAN_ROWS = 100_000
BLOB_SIZE = 1024 * 1024
BLOBS_PER_TX = 10


@dataclass(frozen=True)
class Workload:
    """One kind of operation, with the client counts it runs at by default."""

    name: str
    title: str
    clients: tuple[int, ...]
    setup: Callable[[dqlitepy.Connection], None]
    make_op: Callable[[dqlitepy.Connection, random.Random], Op]


def _random_text(rng: random.Random, size: int) -> str:
    return "".join(rng.choices(_LETTERS, k=size))


def _kv_value(rng: random.Random) -> str:
    half = VALUE_SIZE // 2
    return rng.choice(_LETTERS) * half + _random_text(rng, VALUE_SIZE - half)


def _kv_setup(conn: dqlitepy.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS model (key TEXT, value TEXT, UNIQUE(key))")


_KV_WRITE = "INSERT OR REPLACE INTO model(key, value) VALUES(?, ?)"
_KV_READ = "SELECT value FROM model WHERE key = ?"


def _kvwrite_op(conn: dqlitepy.Connection, rng: random.Random) -> Op:
    def op() -> None:
        conn.execute(_KV_WRITE, (_random_text(rng, KEY_SIZE), _kv_value(rng)))

    return op


def _kvreadwrite_op(conn: dqlitepy.Connection, rng: random.Random) -> Op:
    written: list[str] = []

    def op() -> None:
        if written and rng.random() < 0.5:
            row = conn.execute(_KV_READ, (rng.choice(written),)).fetchone()
            if row is None:
                raise LookupError("a key this client wrote is missing")
            return
        key = _random_text(rng, KEY_SIZE)
        conn.execute(_KV_WRITE, (key, _kv_value(rng)))
        written.append(key)

    return op


def _read_key(i: int) -> str:
    return f"{i:0{KEY_SIZE}d}"


def _read_setup(conn: dqlitepy.Connection) -> None:
    _kv_setup(conn)
    rng = random.Random(0)
    conn.execute("BEGIN")
    conn.executemany(_KV_WRITE, [(_read_key(i), _kv_value(rng)) for i in range(READ_ROWS)])
    conn.execute("COMMIT")


def _read_op(conn: dqlitepy.Connection, rng: random.Random) -> Op:
    def op() -> None:
        if conn.execute(_KV_READ, (_read_key(rng.randrange(READ_ROWS)),)).fetchone() is None:
            raise LookupError("a preloaded key is missing")

    return op


def _scan_setup(conn: dqlitepy.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS scan (k INTEGER PRIMARY KEY, v TEXT)")
    # Filled by the server in one statement: 100,000 round trips would time the loader.
    conn.execute(
        "INSERT INTO scan (k, v) "
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "SELECT i, printf('%032d', i) FROM n",
        (SCAN_ROWS,),
    )


def _scan_op(conn: dqlitepy.Connection, rng: random.Random) -> Op:
    def op() -> None:
        rows = conn.execute("SELECT k, v FROM scan").fetchall()
        if len(rows) != SCAN_ROWS:
            raise LookupError(f"scan returned {len(rows)} rows")

    return op


def _tx_setup(conn: dqlitepy.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS big (k INTEGER PRIMARY KEY, v BLOB)")


def _tx_op(conn: dqlitepy.Connection, rng: random.Random) -> Op:
    blobs = [os.urandom(BLOB_SIZE) for _ in range(BLOBS_PER_TX)]

    def op() -> None:
        conn.execute("BEGIN")
        try:
            for k, blob in enumerate(blobs):
                conn.execute("INSERT OR REPLACE INTO big (k, v) VALUES (?, ?)", (k, blob))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(dqlitepy.Error):
                    conn.execute("ROLLBACK")
            raise

    return op


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "kvwrite", "kvwrite (32 B keys, 1 KiB values)", (1, 4, 16, 64), _kv_setup, _kvwrite_op
        ),
        Workload(
            "kvreadwrite", "kvreadwrite (50% reads)", (1, 4, 16, 64), _kv_setup, _kvreadwrite_op
        ),
        Workload("read", "point reads", (1, 16), _read_setup, _read_op),
        Workload("scan", "100k-row scan", (1,), _scan_setup, _scan_op),
        Workload("tx10mib", "10 MiB transaction", (1,), _tx_setup, _tx_op),
    )
}
