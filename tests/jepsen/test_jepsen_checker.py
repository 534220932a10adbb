"""The register linearizability checker and the run figures of :mod:`jepsen` (no cluster)."""

from __future__ import annotations

import math
import random
import time

import pytest

import dqlitepy
from jepsen.history import Window, outcome_of, recovery_time, unavailability
from jepsen.linearizability import Op, check_register, check_registers, stale_reads

INF = math.inf


def w(value: int, invoke: float, complete: float, status: str = "ok", process: int = 0) -> Op:
    return Op(process, "write", "k", value, invoke, INF if status == "info" else complete, status)  # type: ignore[arg-type]


def r(value: int | None, invoke: float, complete: float, process: int = 1) -> Op:
    return Op(process, "read", "k", value, invoke, complete)


def linearizable(*ops: Op) -> bool | None:
    return check_register(ops).linearizable


# -- known linearizable histories -----------------------------------------------------------------


def test_empty_and_initial_value() -> None:
    assert linearizable()
    assert linearizable(r(None, 0, 1))


def test_sequential_write_then_read() -> None:
    assert linearizable(w(1, 0, 1), r(1, 2, 3), w(2, 4, 5), r(2, 6, 7))


def test_read_concurrent_with_a_write_may_see_either_value() -> None:
    assert linearizable(w(1, 0, 1), w(2, 2, 5), r(1, 3, 4))
    assert linearizable(w(1, 0, 1), w(2, 2, 5), r(2, 3, 4))


def test_concurrent_writes_in_either_order() -> None:
    # Two overlapping writes; later reads agree on which came last.
    assert linearizable(w(1, 0, 3), w(2, 1, 2), r(1, 4, 5), r(1, 6, 7))
    assert linearizable(w(1, 0, 3), w(2, 1, 2), r(2, 4, 5), r(2, 6, 7))


def test_unknown_write_may_take_effect_late() -> None:
    # The info write (outcome unknown) is read long after its invocation.
    assert linearizable(w(1, 0, 1), w(2, 2, 0, "info"), r(1, 3, 4), r(2, 10, 11))


def test_unknown_write_may_never_take_effect() -> None:
    assert linearizable(w(1, 0, 1), w(2, 2, 0, "info"), r(1, 3, 4), r(1, 10, 11))


def test_failed_operations_are_ignored() -> None:
    assert linearizable(w(1, 0, 1), w(2, 2, 3, "fail"), r(1, 4, 5))


def test_ties_count_as_overlapping() -> None:
    assert linearizable(w(1, 0, 1), r(1, 1, 2))
    assert linearizable(w(1, 0, 1), w(2, 1, 2), r(1, 1, 1.5))


# -- known non-linearizable histories -------------------------------------------------------------


def test_stale_read_after_a_completed_write() -> None:
    ops = [w(1, 0, 1), w(2, 2, 3), r(1, 4, 5)]
    result = check_register(ops)
    assert result.linearizable is False
    assert result.blocked == ops[2]
    assert "NOT linearizable" in result.explain()
    assert [why for _, why in stale_reads(ops)] == [
        f"stale: {ops[0]} was overwritten by {ops[1]} before the read"
    ]


def test_read_of_the_initial_value_after_a_write() -> None:
    ops = [w(1, 0, 1), r(None, 2, 3)]
    assert linearizable(*ops) is False
    assert len(stale_reads(ops)) == 1


def test_read_from_the_future() -> None:
    ops = [r(1, 0, 1), w(1, 2, 3)]
    assert linearizable(*ops) is False
    assert "written only later" in stale_reads(ops)[0][1]


def test_unknown_write_read_before_it_was_invoked() -> None:
    assert linearizable(r(2, 0, 1), w(2, 2, 0, "info")) is False


def test_read_of_a_write_reported_as_not_run() -> None:
    ops = [w(1, 0, 1), w(2, 2, 3, "fail"), r(2, 4, 5)]
    assert linearizable(*ops) is False
    assert "reported as not run" in stale_reads(ops)[0][1]


def test_read_of_a_value_never_written() -> None:
    assert linearizable(w(1, 0, 1), r(7, 2, 3)) is False


def test_values_seen_in_an_impossible_order() -> None:
    # Two long concurrent writes; reads see 1, then 2, then 1 again: with each value
    # written once, the register cannot go back.  No single read is stale by the simple
    # rules: only the search finds it.
    ops = [w(1, 0, 10), w(2, 0, 10, process=2), r(1, 1, 2), r(2, 3, 4), r(1, 5, 6)]
    assert linearizable(*ops) is False
    assert stale_reads(ops) == []


def test_two_readers_disagree_on_the_order_of_two_writes() -> None:
    # Reader A sees 1 then 2, reader B sees 2 then 1, all while both writes run.
    ops = [
        w(1, 0, 20),
        w(2, 0, 20, process=2),
        r(1, 1, 2, process=3),
        r(2, 3, 4, process=3),
        r(2, 1, 2, process=4),
        r(1, 5, 6, process=4),
    ]
    assert linearizable(*ops) is False


def test_keys_are_independent() -> None:
    a = Op(0, "write", "a", 1, 0, 1)
    b = Op(1, "read", "b", None, 2, 3)
    stale = Op(2, "read", "a", None, 2, 3)
    results = check_registers([a, b])
    assert all(res.linearizable for res in results.values())
    assert check_registers([a, b, stale])["a"].linearizable is False


# -- generated histories --------------------------------------------------------------------------


def _generated(seed: int, count: int, processes: int = 5, info_rate: float = 0.05) -> list[Op]:
    """A linearizable history: each op takes effect at a random point of its interval."""
    rng = random.Random(seed)
    clock = [0.0] * processes
    planned: list[tuple[float, int, str, int, float, float, bool]] = []
    for value in range(1, count + 1):
        p = rng.randrange(processes)
        invoke = clock[p] + rng.uniform(0, 0.5)
        complete = invoke + rng.uniform(0.01, 1.0)
        point = rng.uniform(invoke, complete)
        clock[p] = complete
        kind = "write" if rng.random() < 0.5 else "read"
        unknown = kind == "write" and rng.random() < info_rate
        planned.append((point, p, kind, value, invoke, complete, unknown))
    ops: list[Op] = []
    state: int | None = None
    for point, p, kind, v, invoke, complete, unknown in sorted(planned):
        if kind == "write":
            if unknown and rng.random() < 0.5:
                # Never took effect.
                ops.append(Op(p, "write", "k", v, invoke, INF, "info"))
                continue
            state = v
            ops.append(
                Op(
                    p,
                    "write",
                    "k",
                    v,
                    invoke,
                    INF if unknown else complete,
                    "info" if unknown else "ok",
                )
            )
        else:
            ops.append(Op(p, "read", "k", state, invoke, complete))
        del point
    return ops


@pytest.mark.parametrize("seed", range(20))
def test_generated_histories_are_linearizable(seed: int) -> None:
    ops = _generated(seed, 300)
    result = check_register(ops)
    assert result.linearizable, result.explain()
    assert stale_reads(ops) == []


@pytest.mark.parametrize("seed", range(20))
def test_a_stale_read_planted_in_a_generated_history_is_found(seed: int) -> None:
    rng = random.Random(seed)
    ops = _generated(seed, 300)
    ok_writes = sorted(
        (op for op in ops if op.kind == "write" and op.status == "ok"), key=lambda op: op.invoke
    )
    # A write that completed before another write began, and a read after both.
    for first in ok_writes:
        later = [x for x in ok_writes if x.invoke > first.complete]
        if later:
            second = rng.choice(later[:5])
            break
    else:
        pytest.skip("no two sequential writes")  # pragma: no cover - never with 300 ops
    start = second.complete + 0.001
    ops.append(Op(99, "read", "k", first.value, start, start + 0.01))
    result = check_register(ops)
    assert result.linearizable is False
    assert stale_reads(ops)


def test_hundreds_of_concurrent_ops_check_fast() -> None:
    # What a run produces per key: hundreds of ops, several clients, a few unknowns.
    ops = _generated(7, 600, processes=8, info_rate=0.1)
    began = time.monotonic()
    result = check_register(ops)
    assert result.linearizable
    assert time.monotonic() - began < 5


def test_the_search_gives_up_when_told() -> None:
    ops = _generated(3, 200)
    assert check_register(ops, max_steps=10).linearizable is None


# -- outcomes and figures -------------------------------------------------------------------------


def test_outcome_classification() -> None:
    assert outcome_of(dqlitepy.NotLeaderError("not leader")) == "fail"
    assert outcome_of(dqlitepy.NoLeaderError("no leader")) == "fail"
    assert outcome_of(dqlitepy.ConnectionLostError("x", request_sent=False)) == "fail"
    assert outcome_of(dqlitepy.ConnectionLostError("x", request_sent=True)) == "info"
    assert outcome_of(dqlitepy.LeadershipLostError("leadership lost")) == "info"
    assert outcome_of(dqlitepy.OperationalError("something else")) == "info"
    locked = dqlitepy.OperationalError("database is locked")
    locked.sqlite_errorcode = 5
    assert outcome_of(locked) == "fail"


def test_unavailability_windows_and_recovery() -> None:
    oks = [0.1, 0.2, 0.3, 2.0, 2.1, 5.5, 5.6]
    windows = unavailability(oks, 0.0, 6.0, threshold=0.5)
    assert windows == [Window(0.3, 2.0), Window(2.1, 5.5)]
    assert max(x.length for x in windows) == pytest.approx(3.4)
    # A gap before the first success and after the last count too.
    assert unavailability([3.0], 0.0, 7.0) == [Window(0.0, 3.0), Window(3.0, 7.0)]
    assert recovery_time(oks, 4.0) == pytest.approx(1.5)
    assert recovery_time(oks, 6.0) is None
