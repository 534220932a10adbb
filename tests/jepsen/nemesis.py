"""The nemesis: one fault at a time, every few seconds, on a :class:`NetnsCluster`.

Faults (each healed before the next one starts, so a majority is always reachable again):

- ``isolate``: a random node is cut off from the other two;
- ``isolate-leader``: the 1|2 split with the leader in the minority;
- ``bridge``: the majority-rings partition: two nodes cannot reach each other, both reach the
  third (each side sees a majority through the bridge node);
- ``kill``: SIGKILL a node (the leader half of the time), restart it a moment later;
- ``pause``: SIGSTOP a node (the leader half of the time), SIGCONT it a moment later.

Kinds are dealt from a shuffled deck, so a short run still sees each kind once.
"""

from __future__ import annotations

import random
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import dqlitepy

from .cluster import NetnsCluster

__all__ = ["FAULT_KINDS", "Fault", "Nemesis"]

FAULT_KINDS = ("isolate", "isolate-leader", "bridge", "kill", "pause")


@dataclass
class Fault:
    """One fault: what, on whom, from when until it was healed (monotonic times)."""

    kind: str
    description: str
    start: float
    end: float | None = None

    def __str__(self) -> str:
        span = f"{self.end - self.start:.1f}s" if self.end is not None else "not healed"
        return f"{self.kind}: {self.description} ({span})"


class Nemesis:
    """Injects faults until ``stop`` is set or ``duration`` has passed, then heals all.

    Args:
        cluster: the cluster (its ``network`` carries the partitions).
        seed: makes the schedule (kinds, targets, durations) reproducible.
        duration: seconds of faults.
        hold: how long a partition or a pause lasts (min, max).
        quiet: the time between two faults (min, max), counted from the first success after
            the heal (see ``progress``).
        progress: the monotonic time of the clients' latest success (None: none yet).  The
            next fault waits until the cluster served again after the last heal (10 s at
            most), so that the unavailability a fault causes, including what its heal
            causes, is measured alone and not merged with the next fault's.
    """

    def __init__(
        self,
        cluster: NetnsCluster,
        seed: int,
        duration: float,
        *,
        hold: tuple[float, float] = (2.0, 3.5),
        quiet: tuple[float, float] = (2.5, 4.0),
        progress: Callable[[], float | None] = lambda: None,
    ) -> None:
        self._thread = threading.Thread(target=self._main, name="nemesis", daemon=True)
        self.cluster = cluster
        self.network = cluster.network
        self.rng = random.Random(seed)
        self.duration = duration
        self.hold = hold
        self.quiet = quiet
        self.progress = progress
        self.stop = threading.Event()
        self.faults: list[Fault] = []
        #: When the last fault was healed (everything back up).
        self.healed_at: float | None = None
        self.crash: str | None = None
        self._deck: list[str] = []

    # -- helpers ---------------------------------------------------------------------------------

    def _leader(self) -> int | None:
        try:
            return self.cluster.index(self.cluster.leader(timeout=3))
        except (AssertionError, dqlitepy.Error, StopIteration):
            return None

    def _pick(self) -> tuple[int, str]:
        """The leader half of the time (when one is known), else a random node."""
        leader = self._leader()
        if leader is not None and self.rng.random() < 0.5:
            return leader, "leader"
        i = self.rng.randrange(len(self.cluster.nodes))
        return i, "leader" if i == leader else "follower"

    def _label(self, i: int) -> str:
        return f"n{i} ({self.cluster.nodes[i].address})"

    def _next_kind(self) -> str:
        if not self._deck:
            self._deck = list(FAULT_KINDS)
            self.rng.shuffle(self._deck)
        return self._deck.pop()

    # -- the schedule ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        try:
            deadline = time.monotonic() + self.duration
            while not self.stop.wait(self.rng.uniform(*self.quiet)):
                if time.monotonic() >= deadline:
                    break
                fault = self._fault(self._next_kind())
                assert fault.end is not None
                served_by = time.monotonic() + 10.0
                while (latest := self.progress()) is None or latest < fault.end:
                    if time.monotonic() > served_by or self.stop.wait(0.05):
                        break
        except Exception:  # reported by the test, not lost in a thread
            self.crash = traceback.format_exc()
        finally:
            try:
                self.heal_all()
            except Exception:
                self.crash = (self.crash or "") + "heal failed: " + traceback.format_exc()

    def _fault(self, kind: str) -> Fault:
        hold = self.rng.uniform(*self.hold)
        if kind in ("isolate", "isolate-leader"):
            if kind == "isolate-leader":
                i, role = self._leader(), "leader"
                if i is None:
                    i, role = self.rng.randrange(len(self.cluster.nodes)), "no leader known"
            else:
                i, role = self._pick()
            fault = Fault(kind, f"{self._label(i)}, {role}, alone", time.monotonic())
            self.faults.append(fault)
            self.network.isolate(i)
            self.stop.wait(hold)
            self.network.heal()
        elif kind == "bridge":
            leader = self._leader()
            middle = self.rng.randrange(len(self.cluster.nodes))
            a, b = (j for j in range(len(self.cluster.nodes)) if j != middle)
            known = f"n{leader}" if leader is not None else "unknown"
            fault = Fault(
                kind,
                f"n{a} x n{b}, both reach bridge n{middle}; leader was {known}",
                time.monotonic(),
            )
            self.faults.append(fault)
            self.network.block(a, b)
            self.stop.wait(hold)
            self.network.heal()
        elif kind == "kill":
            i, role = self._pick()
            node = self.cluster.nodes[i]
            fault = Fault(kind, f"SIGKILL {self._label(i)}, {role}", time.monotonic())
            self.faults.append(fault)
            node.stop(signal.SIGKILL)
            self.stop.wait(self.rng.uniform(0.5, 2.0))
            node.start(timeout=60)
        elif kind == "pause":
            i, role = self._pick()
            process = self.cluster.nodes[i].process
            assert process is not None
            fault = Fault(kind, f"SIGSTOP {self._label(i)}, {role}", time.monotonic())
            self.faults.append(fault)
            process.send_signal(signal.SIGSTOP)
            self.stop.wait(hold)
            process.send_signal(signal.SIGCONT)
        else:
            raise AssertionError(f"unknown fault kind {kind!r}")
        fault.end = time.monotonic()
        return fault

    def heal_all(self) -> None:
        """Remove every partition, resume every node, restart every stopped one."""
        self.network.heal()
        for node in self.cluster.nodes:
            if node.process is None:
                node.start(timeout=60)
            else:
                node.process.send_signal(signal.SIGCONT)
        self.healed_at = time.monotonic()
