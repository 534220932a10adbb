"""Jepsen-style testing helpers: histories, a linearizability checker, network namespaces.

- :mod:`jepsen.linearizability`: a Wing & Gong / Lowe style checker for registers;
- :mod:`jepsen.history`: operations as clients saw them, outcome classification and the
  figures of a run (unavailability windows, recovery);
- :mod:`jepsen.netns`: one network namespace per node on a bridge, and partitions;
- :mod:`jepsen.nemesis`: the fault schedule (partitions, kills, pauses).
"""
