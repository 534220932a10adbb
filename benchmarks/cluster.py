"""3-node clusters, dqlitepy next to dqlite: a thin entry point to the suite.

``python benchmarks/cluster.py [--seconds 5] [suite options]`` is
``python -m benchmarks --nodes 3 --workloads kvwrite,read [...]``: writers and point
readers at every client count, in alternated rounds (see ``benchmarks/suite.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.suite import main

if __name__ == "__main__":
    sys.exit(main(["--nodes", "3", "--workloads", "kvwrite,read", *sys.argv[1:]]))
