"""One node, dqlitepy next to dqlite: a thin entry point to the suite.

``python benchmarks/single_node.py [--seconds 5] [suite options]`` is
``python -m benchmarks --nodes 1 --workloads kvwrite,read,scan [...]``: writes, point
reads and a 100,000-row scan on one node of each system, in alternated rounds (see
``benchmarks/suite.py``). ``--systems dqlite,dqlitepy,dqlitepy-standalone`` adds a
dqlitepy node without a cluster key (no Raft).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.suite import main

if __name__ == "__main__":
    sys.exit(main(["--nodes", "1", "--workloads", "kvwrite,read,scan", *sys.argv[1:]]))
