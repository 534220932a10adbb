"""Jepsen-style test: register, bank and append workloads under partitions, kills and pauses.

Three ``dqlitepy server`` processes, each in a network namespace of its own on a bridge
(:mod:`jepsen.netns`); the clients run in this process, in the root namespace, and always
reach every node.  A nemesis (:mod:`jepsen.nemesis`) isolates a node, isolates the leader,
makes a majority-rings ("bridge") partition, kills and restarts a node, or pauses one, one
fault at a time, every few seconds, then heals everything.  Meanwhile:

- register: clients read and write single keys (a value is never written twice); the
  history is checked for linearizability per key (:mod:`jepsen.linearizability`), after a
  final read of every key;
- bank: transfers between accounts in transactions, and reads of the total, which must
  always be the same;
- append: inserts of unique rows; every acknowledged row must be there exactly once at the
  end, and no row the client was told did not run.

Every run prints a report (operations, outcomes, errors, anomalies, unavailability windows,
recovery after the final heal) and asserts the targets of the "never stuck, never stale"
issue.  The default run is short (``DQLITEPY_JEPSEN_SECONDS=40`` s of faults); the long one is
``DQLITEPY_JEPSEN_SECONDS=200 pytest tests/jepsen/test_jepsen_partitions.py -s``.
``DQLITEPY_FAULT_SEED`` replays a nemesis schedule, ``DQLITEPY_JEPSEN_LOG_DIR`` keeps the
nodes' logs, ``DQLITEPY_JEPSEN_MAX_WINDOW`` changes the unavailability target.  Without root
or ``ip`` the test fails, unless ``DQLITEPY_NO_NETNS=1`` says to skip it.
"""

from __future__ import annotations

import datetime
import itertools
import math
import os
import random
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import dqlitepy
from jepsen.cluster import NetnsCluster
from jepsen.history import Recorder, Status, Window, outcome_of, recovery_time, unavailability
from jepsen.linearizability import CheckResult, Op, check_registers, stale_reads
from jepsen.nemesis import Fault, Nemesis
from jepsen.netns import NETNS_SKIP_ENV, Network, NetworkError, netns_problem

#: Seconds of faults (the nemesis's run); the whole test takes about 10 s more.
RUN_SECONDS = float(os.environ.get("DQLITEPY_JEPSEN_SECONDS") or 40)
#: The longest acceptable window without any successful operation, in seconds: twice the
#: election timeout's upper bound (1.2 s, replication/raft/config.py) plus 1 s.
MAX_WINDOW = float(os.environ.get("DQLITEPY_JEPSEN_MAX_WINDOW") or 3.4)
#: The longest acceptable time from the final heal to the first successful operation.
MAX_RECOVERY = 10.0
#: Gaps between successes shorter than this are the normal spacing of operations.
WINDOW_THRESHOLD = 0.5
DATABASE = "jepsen"
REGISTER_CLIENTS = 4
#: Registers in use at a time; each gets about OPS_PER_KEY operations, then a fresh set of
#: keys takes over, so that every key's history stays small for the checker.
KEYS = 5
OPS_PER_KEY = 150
ACCOUNTS = 5
BALANCE = 100


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def network() -> Iterator[Network]:
    skip = os.environ.get(NETNS_SKIP_ENV) == "1"
    problem = netns_problem()
    if problem is None:
        net = Network(3)
        try:
            net.create()
        except NetworkError as exc:
            problem = f"could not create network namespaces: {exc}"
        else:
            try:
                yield net
            finally:
                net.close()
            return
    if skip:
        pytest.skip(f"{NETNS_SKIP_ENV}=1: {problem}")
    pytest.fail(
        f"{problem}; the partition tests need root and iproute2's `ip` "
        f"(apt-get install iproute2), or set {NETNS_SKIP_ENV}=1 to skip them",
        pytrace=False,
    )


@pytest.fixture
def cluster(network: Network, monkeypatch: pytest.MonkeyPatch) -> Iterator[NetnsCluster]:
    # Compact the log every 200 entries: snapshots are taken, and installed on nodes that
    # come back from a kill or a partition, while the workloads run.
    monkeypatch.setenv("DQLITEPY_SNAPSHOT_ENTRIES", "200")
    with NetnsCluster.formed_in(network) as c:
        try:
            yield c
        finally:
            keep = os.environ.get("DQLITEPY_JEPSEN_LOG_DIR")
            if keep:
                # The nodes' logs (wall-clock times, as the report's) outlive the run.
                Path(keep).mkdir(parents=True, exist_ok=True)
                for i, node in enumerate(c.nodes):
                    (Path(keep) / f"n{i}.log").write_text(node.log())
                print(f"node logs kept in {keep}")


def _connect(
    cluster: NetnsCluster,
    *,
    leader_timeout: float = 5,
    request_timeout: float = 2,
    isolation_level: str | None = None,
) -> dqlitepy.Connection:
    # Short budgets, as an application that wants to stay responsive would set them: an
    # operation that cannot find a leader fails (and says it did not run) instead of
    # hiding a long outage inside one call.  A paused leader is indistinguishable from a
    # slow one: its clients wait out request_timeout before they look for the new leader,
    # so that timeout is the floor of the unavailability a leader pause causes.
    return dqlitepy.connect(
        DATABASE,
        servers=cluster.addresses,
        isolation_level=isolation_level,
        leader_timeout=leader_timeout,
        attempt_timeout=1,
        request_timeout=request_timeout,
    )


# -- workloads ------------------------------------------------------------------------------------


@dataclass
class Run:
    """The shared state of one run's clients."""

    cluster: NetnsCluster
    seed: int
    recorder: Recorder = field(default_factory=Recorder)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The register history.
    register_ops: list[Op] = field(default_factory=list)
    #: Bank totals read, and the reads that saw a wrong one.
    totals: Counter[int] = field(default_factory=Counter)
    bank_violations: list[str] = field(default_factory=list)
    #: Append outcomes by row (worker, seq).
    appends: dict[tuple[int, int], str] = field(default_factory=dict)
    #: Errors no fault explains (a bug in the client loop or the driver).
    unexpected: list[str] = field(default_factory=list)
    _op_numbers: Iterator[int] = field(default_factory=itertools.count)
    _values: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def client(self, name: str, body: Callable[[int, random.Random], None]) -> threading.Thread:
        process = self.recorder.process()
        rng = random.Random(f"{self.seed}-{process}")

        def main() -> None:
            try:
                body(process, rng)
            except Exception as exc:  # reported, not lost in a thread
                with self.lock:
                    self.unexpected.append(f"{name} client {process}: {exc!r}")

        return threading.Thread(target=main, name=f"{name}-{process}")

    def pace(self, rng: random.Random, failed: bool) -> None:
        # About 50 operations per second per client: enough to measure unavailability to a
        # tenth of a second, few enough for a 2-core machine and for the checker.
        self.stop.wait(0.05 if failed else rng.uniform(0.005, 0.03))

    # register ----------------------------------------------------------------------------------

    def register(self, process: int, rng: random.Random) -> None:
        conn = _connect(self.cluster)
        try:
            while not self.stop.is_set():
                number = next(self._op_numbers)
                key = (number // (KEYS * OPS_PER_KEY)) * KEYS + rng.randrange(KEYS)
                write = rng.random() < 0.5
                value: int | None = next(self._values) if write else None
                invoke = time.monotonic()
                status: Status = "ok"
                error: dqlitepy.Error | None = None
                try:
                    if write:
                        conn.execute(
                            "INSERT INTO registers (k, v) VALUES (?, ?) "
                            "ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                            (key, value),
                        )
                    else:
                        row = conn.execute("SELECT v FROM registers WHERE k = ?", (key,)).fetchone()
                        value = None if row is None else int(row[0])
                except dqlitepy.Error as exc:
                    # A read that failed tells nothing: dropped by the checker either way.
                    status, error = (outcome_of(exc) if write else "fail"), exc
                event = self.recorder.record(
                    "register", process, "write" if write else "read", invoke, status, error
                )
                complete = math.inf if status == "info" else event.complete
                op = Op(process, "write" if write else "read", key, value, invoke, complete, status)
                with self.lock:
                    self.register_ops.append(op)
                self.pace(rng, status != "ok")
        finally:
            conn.close()

    # bank --------------------------------------------------------------------------------------

    def bank(self, process: int, rng: random.Random) -> None:
        conn = _connect(self.cluster, isolation_level="")
        try:
            while not self.stop.is_set():
                a, b = rng.sample(range(ACCOUNTS), 2)
                amount = rng.randint(1, 10)
                invoke = time.monotonic()
                try:
                    with conn:
                        conn.execute(
                            "UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, a)
                        )
                        conn.execute(
                            "UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, b)
                        )
                    self.recorder.record("bank", process, "transfer", invoke, "ok")
                except dqlitepy.Error as exc:
                    self.recorder.record("bank", process, "transfer", invoke, outcome_of(exc), exc)
                    self.pace(rng, True)
                    continue
                invoke = time.monotonic()
                try:
                    total = conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
                except dqlitepy.Error as exc:
                    self.recorder.record("bank", process, "read", invoke, "fail", exc)
                    self.pace(rng, True)
                    continue
                event = self.recorder.record("bank", process, "read", invoke, "ok")
                with self.lock:
                    self.totals[total] += 1
                    if total != ACCOUNTS * BALANCE:
                        self.bank_violations.append(
                            f"total {total} read at {event.complete:.3f} by client {process}"
                        )
                self.pace(rng, False)
        finally:
            conn.close()

    # append ------------------------------------------------------------------------------------

    def append(self, process: int, rng: random.Random) -> None:
        conn = _connect(self.cluster)
        try:
            for seq in itertools.count():
                if self.stop.is_set():
                    break
                invoke = time.monotonic()
                status: Status = "ok"
                error: dqlitepy.Error | None = None
                try:
                    conn.execute("INSERT INTO appends (worker, seq) VALUES (?, ?)", (process, seq))
                except dqlitepy.Error as exc:
                    status, error = outcome_of(exc), exc
                self.recorder.record("append", process, "append", invoke, status, error)
                with self.lock:
                    self.appends[(process, seq)] = status
                self.pace(rng, status != "ok")
        finally:
            conn.close()


def _setup(cluster: NetnsCluster) -> None:
    conn = _connect(cluster, leader_timeout=30)
    try:
        conn.execute("CREATE TABLE registers (k INTEGER PRIMARY KEY, v INTEGER)")
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
        conn.executemany(
            "INSERT INTO accounts VALUES (?, ?)", [(i, BALANCE) for i in range(ACCOUNTS)]
        )
        # No unique constraint: a row applied twice must show up as a duplicate.
        conn.execute("CREATE TABLE appends (worker INTEGER, seq INTEGER)")
    finally:
        conn.close()


# -- the end state --------------------------------------------------------------------------------


@dataclass
class Final:
    total: int
    registers: list[Op]
    appends: Counter[tuple[int, int]]


def _final(cluster: NetnsCluster) -> Final:
    """The end state, read through the leader (generous timeouts: it may be catching up)."""
    conn = _connect(cluster, leader_timeout=60, request_timeout=60)
    try:
        total = conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
        invoke = time.monotonic()
        rows = conn.execute("SELECT k, v FROM registers").fetchall()
        complete = time.monotonic()
        appends = Counter(
            (int(w), int(s)) for w, s in conn.execute("SELECT worker, seq FROM appends")
        )
    finally:
        conn.close()
    registers = [Op(-1, "read", int(k), int(v), invoke, complete) for k, v in rows]
    return Final(int(total), registers, appends)


def _node_contents(cluster: NetnsCluster, address: str) -> tuple[object, ...]:
    """What one node's own copy of the database holds (DUMP, opened with sqlite3)."""
    with dqlitepy.Client([address], timeout=10) as client:
        files = client.dump(DATABASE)
    with tempfile.TemporaryDirectory(prefix="dqlitepy-dump-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        db = sqlite3.connect(Path(tmp) / DATABASE)
        try:
            return (
                db.execute("SELECT * FROM registers ORDER BY k").fetchall(),
                db.execute("SELECT * FROM accounts ORDER BY id").fetchall(),
                db.execute("SELECT * FROM appends ORDER BY worker, seq").fetchall(),
            )
        finally:
            db.close()


def _converged(cluster: NetnsCluster, timeout: float = 30.0) -> str | None:
    """None once every node holds the same data, else what differs at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        contents: dict[str, object] = {}
        for node in cluster.nodes:
            try:
                contents[node.address] = _node_contents(cluster, node.address)
            except (dqlitepy.Error, sqlite3.Error) as exc:
                contents[node.address] = repr(exc)
        if len({repr(c) for c in contents.values()}) == 1:
            return None
        if time.monotonic() > deadline:
            sizes = {
                a: [len(t) for t in c] if isinstance(c, tuple) else c for a, c in contents.items()
            }
            return f"nodes differ {timeout:g}s after the end: rows per table {sizes}"
        time.sleep(1)


# -- the report -----------------------------------------------------------------------------------


def _culprit(window: Window, faults: list[Fault]) -> tuple[Fault | None, str]:
    """The fault behind a window, and whether the window began during it or after its heal.

    A window begins at the last success before an outage, so the fault behind it is the
    last one begun by then (or within 0.5 s after: the operations in flight still succeed).
    """
    before = [f for f in faults if f.start <= window.start + 0.5]
    if not before:
        return None, "before any fault"
    fault = before[-1]
    if fault.end is not None and window.start >= fault.end:
        return fault, "after the heal"
    return fault, "during"


def _blame(window: Window, faults: list[Fault]) -> str:
    fault, phase = _culprit(window, faults)
    if fault is None:
        text = phase
    elif phase == "after the heal" and fault.end is not None:
        text = f"{window.start - fault.end:.1f}s after the heal of {fault}"
    else:
        text = f"during {fault}"
    # A window that outlasts its fault into the next one is not the work of one fault.
    later = [f for f in faults if window.start + 0.5 < f.start < window.end]
    return text + "".join(f"; then {f}" for f in later)


@pytest.mark.slow
@pytest.mark.timeout(int(RUN_SECONDS * 3) + 300)
def test_workloads_under_partitions(cluster: NetnsCluster) -> None:
    seed = int(os.environ.get("DQLITEPY_FAULT_SEED") or random.randrange(1 << 30))
    print(
        f"\nseed {seed} (replay with DQLITEPY_FAULT_SEED), {RUN_SECONDS:g}s of faults, "
        f"nodes {cluster.addresses} in namespaces {cluster.network.namespaces}"
    )
    _setup(cluster)
    run = Run(cluster, seed)
    clients = [run.client("register", run.register) for _ in range(REGISTER_CLIENTS)]
    clients += [run.client("bank", run.bank) for _ in range(2)]
    clients += [run.client("append", run.append)]
    nemesis = Nemesis(cluster, seed, RUN_SECONDS, progress=lambda: run.recorder.last_ok)
    started = time.monotonic()
    wall = time.time() - started

    def clock(t: float) -> str:
        """A monotonic time as the wall-clock time the nodes' logs show."""
        return datetime.datetime.fromtimestamp(wall + t).strftime("%H:%M:%S.%f")[:-3]

    for client in clients:
        client.start()
    try:
        nemesis.start()
        nemesis.join(RUN_SECONDS + 240)
        assert not nemesis.is_alive(), "the nemesis did not finish"
        healed = nemesis.healed_at
        assert healed is not None, f"the nemesis did not heal: {nemesis.crash}"
        # Keep the clients going until they succeed again (and 2 s more), or give up.
        until = healed + MAX_RECOVERY + 5
        while time.monotonic() < until:
            oks = [e.complete for e in run.recorder.snapshot() if e.status == "ok"]
            if recovery_time(oks, healed) is not None and time.monotonic() > healed + 2:
                break
            time.sleep(0.2)
        ended = time.monotonic()
    finally:
        run.stop.set()
        nemesis.stop.set()
        for client in clients:
            client.join(60)
    stuck = [c.name for c in clients if c.is_alive()]
    oks = [e.complete for e in run.recorder.snapshot() if e.status == "ok"]
    if stuck or recovery_time(oks, healed) is None:
        # Stuck: say what each node believes and where its threads are, before anything else
        # (the final read below may hang on the same cause).
        print(f"clients stuck: {stuck}; no success since the final heal?\n{cluster.evidence()}")

    final = _final(cluster)
    divergence = _converged(cluster)
    events = run.recorder.snapshot()
    ok_times = [e.complete for e in events if e.status == "ok"]

    # register
    history = run.register_ops + final.registers
    results = check_registers(history)
    bad: list[CheckResult] = [r for r in results.values() if r.linearizable is False]
    undecided = [r for r in results.values() if r.linearizable is None]
    by_key: dict[object, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    stale = [s for ops in by_key.values() for s in stale_reads(ops)]
    # append
    acked = {row for row, status in run.appends.items() if status == "ok"}
    not_run = {row for row, status in run.appends.items() if status == "fail"}
    unknown = {row for row, status in run.appends.items() if status == "info"}
    lost = sorted(acked - set(final.appends))
    duplicated = sorted(row for row, n in final.appends.items() if n > 1)
    ran_anyway = sorted(not_run & set(final.appends))
    phantom = sorted(set(final.appends) - set(run.appends))
    # availability
    windows = unavailability(ok_times, started, ended, WINDOW_THRESHOLD)
    longest = max(windows, key=lambda w: w.length, default=None)
    recovery = recovery_time(ok_times, healed)

    statuses = Counter((e.workload, e.status) for e in events)
    lines = [
        "== jepsen report",
        f"seed {seed}; {ended - started:.1f}s of clients, {len(nemesis.faults)} faults "
        f"({dict(Counter(f.kind for f in nemesis.faults))})",
        "operations (ok / fail = did not run / info = unknown):",
    ]
    for workload in ("register", "bank", "append"):
        ok, fail, info = (statuses[(workload, s)] for s in ("ok", "fail", "info"))
        lines.append(
            f"  {workload:9} {ok + fail + info:6} attempted, {ok} ok, {fail} fail, {info} info"
        )
    lines.append(f"errors: {dict(run.recorder.errors.most_common())}")
    lines.append(
        f"register: {len(results)} keys, {len(history)} ops; non-linearizable keys {len(bad)}, "
        f"undecided {len(undecided)}, stale reads {len(stale)}"
    )
    lines.append(
        f"bank: {sum(run.totals.values())} total reads {dict(run.totals)}; violations "
        f"{len(run.bank_violations)}; final total {final.total}"
    )
    lines.append(
        f"append: {len(acked)} acknowledged, {len(unknown)} unknown "
        f"({len(unknown & set(final.appends))} present), {len(not_run)} not run; "
        f"lost {len(lost)}, duplicated {len(duplicated)}, ran though reported not run "
        f"{len(ran_anyway)}, never attempted {len(phantom)}"
    )
    lines.append(
        f"unavailability (no ok op for ≥{WINDOW_THRESHOLD}s): {len(windows)} windows, "
        f"total {sum(w.length for w in windows):.1f}s, longest "
        f"{longest.length if longest else 0:.2f}s"
        + (
            f" at +{longest.start - started:.1f}s, {_blame(longest, nemesis.faults)}"
            if longest
            else ""
        )
    )
    for w in sorted(windows, key=lambda w: -w.length)[:8]:
        lines.append(
            f"  {w.length:5.2f}s at +{w.start - started:6.1f}s ({clock(w.start)}): "
            f"{_blame(w, nemesis.faults)}"
        )
    worst: dict[str, float] = {}
    for window in windows:
        fault, phase = _culprit(window, nemesis.faults)
        kind = "none" if fault is None else f"{fault.kind} ({phase})"
        worst[kind] = max(worst.get(kind, 0.0), window.length)
    lines.append(
        "longest window by fault kind: "
        + ", ".join(f"{kind} {length:.2f}s" for kind, length in sorted(worst.items()))
    )
    lines.append(
        "recovery after the final heal: "
        + (f"{recovery:.2f}s" if recovery is not None else f"none within {ended - healed:.1f}s")
    )
    lines.append(f"nodes converged: {'yes' if divergence is None else divergence}")
    lines.append("faults:")
    lines += [f"  +{f.start - started:6.1f}s ({clock(f.start)}) {f}" for f in nemesis.faults]
    print("\n".join(lines))
    for result in bad[:3]:
        print(result.explain())
    for read, reason in stale[:10]:
        print(f"stale read: {read}: {reason}")

    # The targets.  Safety first: these must hold whatever the machine's load.
    assert nemesis.crash is None, f"nemesis failed: {nemesis.crash}"
    assert not run.unexpected, run.unexpected
    assert not stuck, f"clients stuck in a call after the end: {stuck}"
    assert not bad, "non-linearizable register history:\n" + "\n".join(r.explain() for r in bad[:3])
    assert not stale, f"stale reads: {[f'{r}: {why}' for r, why in stale[:5]]}"
    assert not undecided, f"checker gave up on keys {[r.key for r in undecided]}"
    assert not run.bank_violations, run.bank_violations[:10]
    assert final.total == ACCOUNTS * BALANCE
    assert not lost, f"acknowledged appends lost: {lost[:10]}"
    assert not duplicated, f"appends present twice: {duplicated[:10]}"
    assert not ran_anyway, f"appends reported as not run are present: {ran_anyway[:10]}"
    assert not phantom, f"rows nobody wrote: {phantom[:10]}"
    assert divergence is None, divergence
    # Liveness.
    assert len(nemesis.faults) >= max(1, int(RUN_SECONDS // 10)), "the nemesis did too little"
    assert all(statuses[(w, "ok")] for w in ("register", "bank", "append")), statuses
    assert recovery is not None and recovery <= MAX_RECOVERY, (
        f"no successful operation within {MAX_RECOVERY}s of the final heal"
    )
    assert longest is None or longest.length <= MAX_WINDOW, (
        f"unavailable for {longest.length:.2f}s (target {MAX_WINDOW}s) "
        f"{_blame(longest, nemesis.faults)}"
    )
