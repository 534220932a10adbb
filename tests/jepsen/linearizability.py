"""A linearizability checker for read/write registers.

Theory of operation
-------------------
A history is linearizable (Herlihy & Wing, 1990) if every operation can be given a point in
time between its invocation and its completion such that the operations, applied in the
order of those points to a single register, return what the clients saw.

Outcomes, as Jepsen/Knossos use them:

- ``ok``: the operation took effect and returned what we recorded; it must be linearized
  inside ``[invoke, complete]``.
- ``fail``: the operation provably did not take effect; it is left out of the history.
- ``info``: the outcome is unknown (the connection dropped after the request was sent, the
  leader lost leadership while replicating it).  It may take effect at any time after its
  invocation, *or never*: its completion is infinitely far away and it need not be
  linearized at all.  A read with an unknown outcome tells nothing and is left out.

The search is Wing & Gong's (1993), with Lowe's memoization (2017) as in Porcupine: the
invocation and completion events are kept in time order in a doubly linked list; at each
step the first not yet linearized *invocation* whose operation is legal in the current state
is linearized (its two events are lifted out of the list) and the search starts again from the
head; reaching a *completion* means that operation's point has passed unlinearized, so the
search backtracks to the last choice and tries the next candidate.  A configuration (the set
of operations linearized so far, the register's value) that was reached before is not
explored again, which bounds the search by the number of distinct configurations.  The
history is linearizable once every ``ok`` operation is linearized: what remains are ``info``
writes, which may never take effect.

Two reductions keep it fast without changing the answer, given that every write writes a
value no other write writes (the workload guarantees that):

- an ``info`` write whose value no ``ok`` read returned is dropped: leaving it out of a
  linearization ("it never took effect") changes no read's result;
- keys are independent registers: :func:`check_registers` checks each key on its own.

Besides the search, :func:`stale_reads` names the reads that are certainly wrong by simple
rules (a value overwritten by a write that completed before the read began, a value from the
future, a value nobody wrote): they make failure reports readable.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "CheckResult",
    "Op",
    "check_register",
    "check_registers",
    "stale_reads",
]

Status = Literal["ok", "fail", "info"]
Kind = Literal["read", "write"]


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation on one register.

    Attributes:
        process: the client that ran it (a client runs one operation at a time).
        kind: ``"read"`` or ``"write"``.
        key: the register.
        value: the value written, or the value the read returned (None: never written).
        invoke: monotonic time the client sent it.
        complete: monotonic time the client got its outcome.
        status: ``ok``, ``fail`` or ``info`` (see the module docstring).
    """

    process: int
    kind: Kind
    key: Hashable
    value: Hashable
    invoke: float
    complete: float
    status: Status = "ok"

    def __str__(self) -> str:
        end = "∞" if math.isinf(self.complete) else f"{self.complete:.3f}"
        return (
            f"p{self.process} {self.kind} key={self.key!r} value={self.value!r} "
            f"[{self.invoke:.3f}, {end}] {self.status}"
        )


@dataclass(slots=True)
class CheckResult:
    """The verdict on one register's history.

    Attributes:
        key: the register.
        linearizable: True, False, or None when the search gave up (``max_steps``).
        ops: the operations the search considered.
        steps: search steps taken.
        blocked: when not linearizable: the ``ok`` operation that could not be linearized
            in the deepest partial linearization found, and the register's value there.
        prefix: that deepest partial linearization (operations in linearization order).
    """

    key: Hashable
    linearizable: bool | None
    ops: list[Op]
    steps: int = 0
    blocked: Op | None = None
    blocked_state: Hashable = None
    prefix: list[Op] = field(default_factory=list)

    def explain(self, context: int = 6) -> str:
        """A readable account of a failure: the stuck operation and its neighbours."""
        if self.linearizable:
            return f"key {self.key!r}: linearizable ({len(self.ops)} ops)"
        if self.linearizable is None:
            return f"key {self.key!r}: gave up after {self.steps} steps ({len(self.ops)} ops)"
        lines = [f"key {self.key!r}: NOT linearizable ({len(self.ops)} ops, {self.steps} steps)"]
        lines.append(f"  longest linearizable prefix: {len(self.prefix)} ops, ending:")
        lines += [f"    {op}" for op in self.prefix[-context:]]
        if self.blocked is not None:
            lines.append(
                f"  then the register held {self.blocked_state!r} and this op could not be "
                f"linearized before its completion:\n    {self.blocked}"
            )
            near = sorted(
                (
                    op
                    for op in self.ops
                    if op.invoke <= self.blocked.complete + 0.5
                    and op.complete >= self.blocked.invoke - 0.5
                ),
                key=lambda op: op.invoke,
            )
            lines.append("  operations overlapping it (±0.5 s):")
            lines += [f"    {op}" for op in near[: 4 * context]]
        return "\n".join(lines)


class _Event:
    __slots__ = ("call", "id", "match", "next", "prev", "time")

    def __init__(self, time: float, call: bool, id: int) -> None:
        self.time = time
        self.call = call
        self.id = id
        self.match: _Event | None = None
        self.prev: _Event | None = None
        self.next: _Event | None = None


def _relevant(ops: Iterable[Op]) -> list[Op]:
    """The operations the search needs (see the module docstring)."""
    kept = [
        op for op in ops if op.status != "fail" and not (op.kind == "read" and op.status != "ok")
    ]
    read_values = {op.value for op in kept if op.kind == "read"}
    return [
        op
        for op in kept
        if not (op.kind == "write" and op.status == "info" and op.value not in read_values)
    ]


def check_register(
    ops: Iterable[Op],
    *,
    initial: Hashable = None,
    max_steps: int = 5_000_000,
) -> CheckResult:
    """Whether one register's history is linearizable.

    Args:
        ops: the operations on one register, any order, any status.
        initial: the register's value before the first write.
        max_steps: give up (``linearizable=None``) after this many search steps.
    """
    history = _relevant(ops)
    keys = {op.key for op in history}
    key = next(iter(keys)) if len(keys) == 1 else None
    result = CheckResult(key, True, history)
    # Events in time order; at equal times invocations first (the ops then overlap).
    events: list[_Event] = []
    for i, op in enumerate(history):
        call = _Event(op.invoke, True, i)
        events.append(call)
        if op.status == "ok":
            ret = _Event(op.complete, False, i)
            call.match = ret
            events.append(ret)
    events.sort(key=lambda e: (e.time, not e.call))
    head = _Event(-math.inf, False, -1)
    last = head
    for event in events:
        last.next, event.prev = event, last
        last = event

    def lift(call: _Event) -> None:
        for e in (call, call.match):
            if e is None:
                continue
            assert e.prev is not None
            e.prev.next = e.next
            if e.next is not None:
                e.next.prev = e.prev

    def unlift(call: _Event) -> None:
        for e in (call.match, call):
            if e is None:
                continue
            assert e.prev is not None
            e.prev.next = e
            if e.next is not None:
                e.next.prev = e

    remaining = sum(1 for op in history if op.status == "ok")
    state: Hashable = initial
    linearized = 0
    stack: list[tuple[_Event, Hashable]] = []
    seen: set[tuple[int, Hashable]] = set()
    best = -1
    entry = head.next
    steps = 0
    while remaining:
        steps += 1
        if steps > max_steps:
            result.linearizable = None
            break
        assert entry is not None, "ran past the last completion with ok operations left"
        op = history[entry.id]
        if entry.call:
            if op.kind == "write":
                legal, new_state = True, op.value
            else:
                legal, new_state = state == op.value, state
            if legal:
                config = (linearized | (1 << entry.id), new_state)
                if config not in seen:
                    seen.add(config)
                    stack.append((entry, state))
                    state, linearized = new_state, config[0]
                    lift(entry)
                    if op.status == "ok":
                        remaining -= 1
                    entry = head.next
                    continue
            entry = entry.next
            continue
        # A completion: this ok operation was not linearized in time.
        if len(stack) > best:
            best = len(stack)
            result.blocked, result.blocked_state = op, state
            result.prefix = [history[e.id] for e, _ in stack]
        if not stack:
            result.linearizable = False
            break
        call, state = stack.pop()
        linearized &= ~(1 << call.id)
        unlift(call)
        if history[call.id].status == "ok":
            remaining += 1
        entry = call.next
    result.steps = steps
    if result.linearizable:
        result.blocked, result.prefix = None, []
    return result


def check_registers(
    ops: Iterable[Op], *, initial: Hashable = None, max_steps: int = 5_000_000
) -> dict[Hashable, CheckResult]:
    """:func:`check_register` for each key of a history of independent registers."""
    by_key: dict[Hashable, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    results = {}
    for key, key_ops in by_key.items():
        result = check_register(key_ops, initial=initial, max_steps=max_steps)
        result.key = key
        results[key] = result
    return results


def stale_reads(ops: Sequence[Op], *, initial: Hashable = None) -> list[tuple[Op, str]]:
    """Reads that no linearization can explain, by direct rules (one register, unique writes).

    Returns (read, reason) pairs.  A history with such a read is not linearizable; the
    converse does not hold (:func:`check_register` decides).
    """
    writes = {op.value: op for op in ops if op.kind == "write"}
    ok_writes = [op for op in ops if op.kind == "write" and op.status == "ok"]
    found: list[tuple[Op, str]] = []
    for read in ops:
        if read.kind != "read" or read.status != "ok":
            continue
        source = writes.get(read.value)
        if read.value == initial and source is None:
            newer = next((w for w in ok_writes if w.complete < read.invoke), None)
            if newer is not None:
                found.append((read, f"read the initial value after {newer} completed"))
            continue
        if source is None:
            found.append((read, "read a value no write wrote"))
            continue
        if source.status == "fail":
            found.append((read, f"read the value of a write reported as not run: {source}"))
            continue
        if source.invoke > read.complete:
            found.append((read, f"read a value written only later: {source}"))
            continue
        newer = next(
            (
                w
                for w in ok_writes
                if w is not source and w.invoke > source.complete and w.complete < read.invoke
            ),
            None,
        )
        if newer is not None:
            found.append((read, f"stale: {source} was overwritten by {newer} before the read"))
    return found
