"""Liveness of the replicated write path while leadership keeps moving.

Reported: "4 writers, one admin TRANSFER every 0.7 s: a node got stuck after 5,
35 and 106 transfers in three runs; a stuck leader stays elected but never
ready, so no write succeeds until restarted."  This module replays that
workload on a real 3-process cluster and asserts that acknowledged writes keep
flowing (no gap longer than :data:`MAX_GAP`), and that at the end every node
holds the same rows: each acknowledged row exactly once, each row whose
outcome the client could not know at most once, and no row the client was told
did not run.

The default is the reported scenario.  Environment variables make it longer,
shorter or harsher without changing the code:

- ``DQLITEPY_TRANSFER_ROUNDS``: transfers issued (default 200, about 3 minutes);
- ``DQLITEPY_LIVENESS_WRITERS``: writer threads (default 4);
- ``DQLITEPY_LIVENESS_TRANSACTIONS=1``: each write is ``BEGIN``, two inserts
  and a read, ``COMMIT`` (an interactive transaction) instead of one autocommit
  insert;
- ``DQLITEPY_LIVENESS_READS=1``: writers also read between their writes.

When no write is acknowledged for :data:`STALL_ABORT` seconds the run stops
early: the test prints what each node says about the leader and whether it
serves leader-only requests, and, if ``py-spy`` is on ``PATH``, every server's
thread stacks, then fails.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from dqlitepy_server import DqlitepyCluster

import dqlitepy

ROUNDS = int(os.environ.get("DQLITEPY_TRANSFER_ROUNDS") or 200)
WRITERS = int(os.environ.get("DQLITEPY_LIVENESS_WRITERS") or 4)
TRANSACTIONS = os.environ.get("DQLITEPY_LIVENESS_TRANSACTIONS") == "1"
READS = os.environ.get("DQLITEPY_LIVENESS_READS") == "1"
#: The reported pace of the admin's transfers.
TRANSFER_PERIOD = 0.7
#: The longest acceptable pause in acknowledged writes.  A transfer costs a
#: leader change and a barrier, well under a second on loopback; 5 s leaves room
#: for a slow, shared machine without hiding a node that stopped serving.
MAX_GAP = 5.0
#: No acknowledged write for this long: the cluster is stuck, not slow.  The
#: run stops here instead of waiting out every round.
STALL_ABORT = 30.0
#: The writes a run must acknowledge at least (hundreds, so the gaps measured
#: are between real writes, not a handful).
MIN_ACKNOWLEDGED = 300
DATABASE = "liveness"
_SQLITE_BUSY = 5


@pytest.fixture
def cluster() -> Iterator[DqlitepyCluster]:
    with DqlitepyCluster.formed() as c:
        yield c


@dataclass
class _Ledger:
    """What the writers were told, shared under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Monotonic time of every acknowledged write.
    acked_at: list[float] = field(default_factory=list)
    #: (writer, seq) of rows the cluster acknowledged.
    acknowledged: set[tuple[int, int]] = field(default_factory=set)
    #: Rows whose write failed after it may have run.
    unknown: set[tuple[int, int]] = field(default_factory=set)
    #: Rows whose write provably did not run.
    not_run: set[tuple[int, int]] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)
    #: The error each failed row's write met (where rows disagree, says why).
    failed_with: dict[tuple[int, int], str] = field(default_factory=dict)
    #: The first message of each kind of error, for the report.
    examples: dict[str, str] = field(default_factory=dict)
    #: Errors no leadership change explains (constraint, misuse, ...).
    unexpected: list[str] = field(default_factory=list)
    #: Monotonic time of every error: during a stall, they tell writers that
    #: kept failing from writers blocked in a call.
    error_times: list[float] = field(default_factory=list)


def _kind(exc: BaseException) -> str:
    if isinstance(exc, dqlitepy.ConnectionLostError):
        return f"ConnectionLostError(request_sent={exc.request_sent})"
    name = getattr(exc, "sqlite_errorname", None)
    return f"{type(exc).__name__}[{name}]" if name else type(exc).__name__


def _did_not_run(exc: dqlitepy.Error) -> bool:
    """These errors mean the write did not run (docs/architecture.md, "What users see")."""
    if isinstance(exc, dqlitepy.ConnectionLostError):
        return not exc.request_sent
    if isinstance(exc, (dqlitepy.NotLeaderError, dqlitepy.NoLeaderError)):
        return True
    # "database is locked": the writer never got the database.
    code = exc.sqlite_errorcode
    return code is not None and code & 0xFF == _SQLITE_BUSY


def _connect(cluster: DqlitepyCluster) -> dqlitepy.Connection:
    # Short leader and attempt budgets: a writer facing a stuck leader reports
    # it (NoLeaderError) and tries again, instead of hiding in one long call.
    return dqlitepy.connect(
        f"dqlite://{','.join(cluster.addresses)}/{DATABASE}",
        isolation_level=None,
        leader_timeout=10,
        attempt_timeout=1,
        request_timeout=15,
    )


def _writer(cluster: DqlitepyCluster, worker: int, ledger: _Ledger, stop: threading.Event) -> None:
    conn: dqlitepy.Connection | None = None
    seq = 0
    while not stop.is_set():
        rows = [(worker, seq), (worker, seq + 1)] if TRANSACTIONS else [(worker, seq)]
        seq += len(rows)
        try:
            if conn is None:
                conn = _connect(cluster)
            if TRANSACTIONS:
                conn.execute("BEGIN")
                for row in rows:
                    conn.execute("INSERT INTO t (writer, seq) VALUES (?, ?)", row)
                conn.execute("SELECT count(*) FROM t WHERE writer = ?", (worker,)).fetchall()
                conn.execute("COMMIT")
            else:
                conn.execute("INSERT INTO t (writer, seq) VALUES (?, ?)", rows[0])
            now = time.monotonic()
            with ledger.lock:
                ledger.acked_at.append(now)
                ledger.acknowledged.update(rows)
            if READS:
                conn.execute("SELECT max(seq) FROM t WHERE writer = ?", (worker,)).fetchall()
        except dqlitepy.OperationalError as exc:
            # What a leadership change may cause: counted, then a fresh
            # connection finds the new leader (the old one's session is gone).
            with ledger.lock:
                ledger.errors[_kind(exc)] += 1
                ledger.examples.setdefault(_kind(exc), str(exc))
                ledger.error_times.append(time.monotonic())
                (ledger.not_run if _did_not_run(exc) else ledger.unknown).update(rows)
                ledger.failed_with.update(dict.fromkeys(rows, _kind(exc)))
            if conn is not None:
                with contextlib.suppress(dqlitepy.Error):
                    conn.close()
                conn = None
            stop.wait(0.05)
        except Exception as exc:
            # Anything else is a bug to report, not to retry around; the thread
            # must not die with it (pytest turns that into a warning, an error).
            with ledger.lock:
                ledger.errors[_kind(exc)] += 1
                ledger.examples.setdefault(_kind(exc), str(exc))
                ledger.unexpected.append(f"writer {worker}: {exc!r}")
                ledger.unknown.update(rows)
            return
    if conn is not None:
        with contextlib.suppress(dqlitepy.Error):
            conn.close()


class _Nemesis(threading.Thread):
    """Asks for a leadership transfer every TRANSFER_PERIOD seconds, ROUNDS times."""

    def __init__(self, cluster: DqlitepyCluster, seed: int) -> None:
        super().__init__(name="transfer-nemesis")
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        #: Transfers acknowledged, and those whose reply was lost (the old
        #: leader may drop its connections as leadership moves).
        self.done = 0
        self.unknown = 0
        #: Monotonic time of each transfer that went through or may have.
        self.sent_at: list[float] = []
        #: Transfers refused or failed before they ran, by kind of error.
        self.failed: Counter[str] = Counter()
        self.crash: str | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported by the test, not lost in a thread
            self.crash = repr(exc)

    def _run(self) -> None:
        client = dqlitepy.Client(self.cluster.addresses, timeout=5, attempt_timeout=1)
        try:
            ids: list[int] = []
            next_at = time.monotonic()
            for _ in range(ROUNDS):
                # A fixed pace, like an admin's script: a slow transfer does
                # not push the next one back.
                next_at += TRANSFER_PERIOD
                if self.stop.wait(max(0.0, next_at - time.monotonic())):
                    return
                try:
                    if not ids:
                        ids = [n.id for n in client.cluster() if n.role == 0 and n.id]
                    leader = client.leader()
                    others = [i for i in ids if leader is None or i != leader.id]
                    # id 0 lets the leader pick; otherwise a named other voter.
                    target = self.rng.choice([0, *others])
                    client.transfer(target)
                    self.done += 1
                    self.sent_at.append(time.monotonic())
                except dqlitepy.ConnectionLostError as exc:
                    if exc.request_sent:
                        self.unknown += 1
                        self.sent_at.append(time.monotonic())
                    else:
                        self.failed[_kind(exc)] += 1
                except dqlitepy.Error as exc:
                    self.failed[_kind(exc)] += 1
        finally:
            client.close()


def _py_spy(pid: int) -> str:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return "(py-spy not on PATH: no stacks)"
    try:
        done = subprocess.run(
            [py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "(py-spy timed out)"
    return done.stdout + done.stderr


def _evidence(cluster: DqlitepyCluster) -> str:
    """What each node says: the leader it names, whether it serves leader-only requests."""
    lines: list[str] = []
    for node in cluster.nodes:
        pid = node.process.pid if node.process is not None else None
        named: dqlitepy.NodeInfo | None = None
        try:
            with dqlitepy.Client([node.address], timeout=3, attempt_timeout=1) as one:
                named = one.leader()
            leader = f"{named.id}@{named.address}" if named else "none"
        except dqlitepy.Error as exc:
            leader = f"error {exc!r}"
        ready = ""
        if named and named.address == node.address:
            # LEADER answers from Raft alone; opening a database needs a leader
            # that is also ready (its barrier done), which is what clients wait for.
            began = time.monotonic()
            try:
                probe = dqlitepy.connect(
                    DATABASE, servers=[node.address], leader_timeout=1, request_timeout=15
                )
                probe.close()
                ready = "; opens the database"
            except dqlitepy.Error as exc:
                ready = f"; cannot open the database ({time.monotonic() - began:.1f}s): {exc!r}"
        lines.append(f"node {node.address} pid {pid}: names leader {leader}{ready}")
    for node in cluster.nodes:
        if node.process is not None:
            lines.append(f"--- py-spy dump of {node.address} (pid {node.process.pid})")
            lines.append(_py_spy(node.process.pid))
    return "\n".join(lines)


def _rows_on(cluster: DqlitepyCluster, address: str) -> Counter[tuple[int, int]]:
    """The rows as ``address`` itself serves them."""
    rows = cluster.read_on(address, DATABASE, "SELECT writer, seq FROM t")
    return Counter((int(w), int(s)) for w, s in rows)


def _gaps(acked_at: list[float], start: float, end: float) -> tuple[float, float]:
    """The longest pause in acknowledged writes over [start, end], and where it began."""
    points = [start, *sorted(t for t in acked_at if start <= t <= end), end]
    gap, at = max((b - a, a) for a, b in itertools.pairwise(points))
    return gap, at - start


@pytest.mark.slow
@pytest.mark.timeout(max(600, int(ROUNDS * TRANSFER_PERIOD * 2) + 300))
def test_writes_keep_flowing_while_leadership_moves(cluster: DqlitepyCluster) -> None:
    seed = int(os.environ.get("DQLITEPY_FAULT_SEED") or random.randrange(1 << 30))
    mode = "transactions" if TRANSACTIONS else "autocommit"
    print(
        f"seed {seed} (replay with DQLITEPY_FAULT_SEED), {WRITERS} writers ({mode}"
        f"{', reads' if READS else ''}), {ROUNDS} transfers every {TRANSFER_PERIOD}s"
    )
    # No unique constraint: a row applied twice must show up as a duplicate.
    setup = _connect(cluster)
    setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, writer INTEGER, seq INTEGER)")
    setup.close()

    ledger = _Ledger()
    stop = threading.Event()
    writers = [
        threading.Thread(target=_writer, args=(cluster, i, ledger, stop), name=f"writer-{i}")
        for i in range(WRITERS)
    ]
    nemesis = _Nemesis(cluster, seed)
    started = time.monotonic()
    for thread in writers:
        thread.start()
    nemesis.start()
    stalled: str | None = None
    stalled_after: int | None = None
    ended: float | None = None
    try:
        while True:
            nemesis.join(1.0)
            now = time.monotonic()
            with ledger.lock:
                last = max(ledger.acked_at, default=started)
            # Stuck, not slow: stop early.  Or the transfers are over while no
            # write has been acknowledged for a while: whatever holds the
            # cluster still holds it, look at it now.
            stuck = now - last > STALL_ABORT
            if stuck or not nemesis.is_alive():
                ended = now
                if stuck or now - last > MAX_GAP:
                    # The transfers that went through up to the last acknowledged
                    # write: the stall began with the next one (or right after).
                    stalled_after = sum(1 for t in nemesis.sent_at if t <= last)
                    stalled = _evidence(cluster)
                break
    finally:
        ended = ended or time.monotonic()
        nemesis.stop.set()
        nemesis.join(60)
        stop.set()
        for thread in writers:
            thread.join(60)

    gap, gap_at = _gaps(ledger.acked_at, started, ended)
    in_gap = sum(1 for t in ledger.error_times if 0 <= t - started - gap_at <= gap)
    print(
        f"transfers done {nemesis.done}, outcome unknown {nemesis.unknown}, "
        f"failed {sum(nemesis.failed.values())} "
        f"{dict(nemesis.failed)}; writes acknowledged {len(ledger.acked_at)} "
        f"({len(ledger.acknowledged)} rows), unknown rows {len(ledger.unknown)}, "
        f"not-run rows {len(ledger.not_run)}; errors {dict(ledger.errors)}; "
        f"longest gap {gap:.2f}s at +{gap_at:.1f}s of {ended - started:.1f}s "
        f"({in_gap} errors during it)"
    )
    for kind, message in ledger.examples.items():
        print(f"  {kind}: {message}")
    if stalled is not None:
        print(
            f"STALLED after {stalled_after} transfers "
            f"({len(nemesis.sent_at)} by the end):\n{stalled}"
        )
    assert stalled is None, (
        f"no write acknowledged for {ended - last:.1f}s, after {stalled_after} transfers"
    )
    assert nemesis.crash is None, f"the nemesis failed: {nemesis.crash}"
    assert not ledger.unexpected, f"unexpected errors: {ledger.unexpected[:5]}"
    assert all(not t.is_alive() for t in writers), "a writer is still blocked in a call"
    assert gap <= MAX_GAP, f"no write acknowledged for {gap:.2f}s (from +{gap_at:.1f}s)"
    assert len(ledger.acked_at) >= MIN_ACKNOWLEDGED
    assert len(nemesis.sent_at) >= ROUNDS // 2, "most transfers should have gone through"

    # Writers are stopped: make every node the leader in turn (its barrier
    # applies everything committed) and read what it holds.
    cluster.leader(timeout=30)
    tables = {address: _rows_on(cluster, address) for address in cluster.addresses}
    problems: list[str] = []
    for address, rows in tables.items():
        duplicated = sorted(r for r, n in rows.items() if n > 1)
        missing = sorted(ledger.acknowledged - rows.keys())
        stray = sorted(rows.keys() - ledger.acknowledged - ledger.unknown)
        print(
            f"{address}: {sum(rows.values())} rows, {len(duplicated)} duplicated, "
            f"{len(missing)} acknowledged missing, {len(stray)} not-run present"
        )
        if duplicated:
            problems.append(f"rows present more than once on {address}: {duplicated[:5]}")
        if missing:
            problems.append(f"acknowledged rows missing on {address}: {missing[:5]}")
        if stray:
            problems.append(f"rows the client was told did not run, on {address}: {stray[:5]}")
    first = cluster.addresses[0]
    for address, rows in tables.items():
        if rows != tables[first]:
            only_here = sorted((rows - tables[first]).keys())
            only_first = sorted((tables[first] - rows).keys())
            why = {r: ledger.failed_with.get(r, "acknowledged") for r in only_here + only_first}
            problems.append(
                f"{address} and {first} hold different rows: only on {address} "
                f"{only_here[:5]} ({len(only_here)}), only on {first} {only_first[:5]} "
                f"({len(only_first)}); their writes met {dict(list(why.items())[:10])}"
            )
    assert not problems, "\n".join(problems)
