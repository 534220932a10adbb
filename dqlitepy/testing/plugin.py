"""The pytest side of :mod:`dqlitepy.testing`: two fixtures, an option, failure reports.

``dqlitepy_node`` and ``dqlitepy_cluster`` are *factories*: a test calls them, with the
size and kind of nodes it wants, as often as it needs; whatever they started is closed
when the test ends, passed or failed (processes killed by PID, directories removed).
When a test fails, its report gets a section per fixture with each node's state, the
leader it names and the end of its log; ``--dqlitepy-logs DIR`` (or the ini option
``dqlitepy_logs``) keeps the full logs of failed tests in ``DIR/<test>/``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from ssl import SSLContext
from typing import Any

import pytest

from ._support import tail
from .cluster import LOG_TAIL, Cluster, check_options
from .nodes import EmbeddedNode, ServerNode
from .process import ProcessNode

__all__ = [
    "ClusterFactory",
    "NodeFactory",
    "dqlitepy_cluster",
    "dqlitepy_node",
    "pytest_addoption",
    "pytest_runtest_makereport",
]

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_FACTORIES = pytest.StashKey[list["_Factory"]]()


class _Factory:
    """What one fixture started for one test, under one temporary directory."""

    fixture = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[Cluster | ServerNode] = []

    def report(self) -> str:
        parts = []
        for thing in self.made:
            if isinstance(thing, Cluster):
                parts.append(f"{thing!r}\n{thing.report()}")
            else:
                parts.append(f"--- {thing!r}\n{tail(thing.log(), LOG_TAIL)}")
        return "\n".join(parts)

    def close(self, keep_logs: Path | None) -> None:
        """Close everything (killing processes), keeping the logs in ``keep_logs``."""
        made, self.made = self.made, []
        for thing in made:
            thing.close()
        if keep_logs is not None:
            for log in sorted(self.root.rglob("*.log")):
                target = keep_logs / log.relative_to(self.root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, target)
        shutil.rmtree(self.root, ignore_errors=True)


class ClusterFactory(_Factory):
    """The ``dqlitepy_cluster`` fixture: call it to start a cluster for the test."""

    fixture = "dqlitepy_cluster"

    def __call__(
        self,
        size: int = 3,
        *,
        in_process: bool = False,
        options: Sequence[str] | Mapping[str, Any] | None = None,
        cluster_key: str | None = None,
        ssl: SSLContext | None = None,
        timeout: float = 60.0,
    ) -> Cluster:
        """Start a cluster of ``size`` voters and return it once they agree on a leader.

        Args:
            size: how many nodes.
            in_process: nodes in the test's process (faster; no kill or pause).
            options: more ``dqlitepy server`` arguments (a list) for process nodes, more
                :class:`dqlitepy.Node` keyword arguments (a mapping) for in-process ones.
            cluster_key: the nodes' key (a random one if None).
            ssl: the client TLS context, when ``options`` make the nodes serve TLS.
            timeout: how long the cluster may take to form.

        Raises:
            HarnessError: it did not form within ``timeout``.
        """
        cluster = Cluster(
            size,
            root=self.root / f"cluster{len(self.made)}",
            in_process=in_process,
            options=options,
            cluster_key=cluster_key,
            ssl=ssl,
        )
        self.made.append(cluster)
        return cluster.start(timeout)


class NodeFactory(_Factory):
    """The ``dqlitepy_node`` fixture: call it to start a node for the test."""

    fixture = "dqlitepy_node"

    def __call__(
        self,
        *,
        in_process: bool = False,
        options: Sequence[str] | Mapping[str, Any] | None = None,
        cluster_key: str | None = None,
        ssl: SSLContext | None = None,
        timeout: float = 60.0,
    ) -> ServerNode:
        """Start one node and return it once it accepts connections.

        Args:
            in_process: a :class:`dqlitepy.Node` in the test's process (faster; no kill
                or pause) instead of a ``dqlitepy server`` process.
            options: as for ``dqlitepy_cluster``.
            cluster_key: make it a one-node replicated cluster with this key (more can
                join it); a standalone node if None.
            ssl: the client TLS context, when ``options`` make the node serve TLS.
            timeout: how long it may take to start.
        """
        check_options(options, in_process)
        name = f"node{len(self.made)}"
        node: ServerNode
        if in_process:
            node = EmbeddedNode(
                self.root / name,
                cluster_key=cluster_key,
                options=options if isinstance(options, Mapping) else None,
                ssl=ssl,
                name=name,
            )
        else:
            node = ProcessNode(
                self.root / name,
                cluster_key=cluster_key,
                options=None if options is None or isinstance(options, Mapping) else list(options),
                ssl=ssl,
                name=name,
            )
        self.made.append(node)
        return node.start(timeout)


def _logs_dir(config: pytest.Config) -> Path | None:
    option = config.getoption("dqlitepy_logs")
    if option:
        return Path(config.invocation_params.dir, option)
    ini = str(config.getini("dqlitepy_logs"))
    return Path(config.rootpath, ini) if ini else None


def _failed(item: pytest.Item) -> bool:
    return any(r.failed for r in item.stash.get(_REPORTS, {}).values())


def _fixture(request: pytest.FixtureRequest, factory: _Factory) -> Iterator[Any]:
    item = request.node
    item.stash.setdefault(_FACTORIES, []).append(factory)
    try:
        yield factory
    finally:
        keep = _logs_dir(request.config) if _failed(item) else None
        if keep is not None:
            keep = keep / re.sub(r"[^\w.-]+", "_", item.nodeid)[-150:]
        factory.close(keep)


@pytest.fixture
def dqlitepy_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterFactory]:
    """A factory of dqlitepy clusters: ``cluster = dqlitepy_cluster(size=3)``.

    Each call starts a cluster (``dqlitepy server`` processes, or ``in_process=True``
    nodes) on free loopback ports in a temporary directory and returns a
    :class:`~dqlitepy.testing.Cluster` once its nodes agree on a leader: ``connect()``,
    ``wait_for_leader()``, ``kill()``, ``pause()``, ``resume()``, ``restart()``... Every
    cluster is closed at the end of the test.
    """
    yield from _fixture(request, ClusterFactory(tmp_path_factory.mktemp("dqlitepy")))


@pytest.fixture
def dqlitepy_node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeFactory]:
    """A factory of single dqlitepy nodes: ``node = dqlitepy_node()``.

    Each call starts a standalone node (a ``dqlitepy server`` process, or
    ``in_process=True``) on a free loopback port in a temporary directory and returns a
    :class:`~dqlitepy.testing.ServerNode`: ``connect()``, ``kill()``, ``restart()``...
    Every node is closed at the end of the test.
    """
    yield from _fixture(request, NodeFactory(tmp_path_factory.mktemp("dqlitepy")))


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--dqlitepy-logs DIR`` and the ini option ``dqlitepy_logs``."""
    group = parser.getgroup("dqlitepy", "dqlitepy test nodes (dqlitepy.testing)")
    group.addoption(
        "--dqlitepy-logs",
        metavar="DIR",
        help="keep the logs of the dqlitepy nodes of each failed test in DIR/<test id>/ "
        "(default: the ini option dqlitepy_logs, else not kept; the end of each log is "
        "shown in the failure report either way)",
    )
    parser.addini(
        "dqlitepy_logs",
        "directory (relative to the rootdir) for the dqlitepy node logs of failed tests",
        default="",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report; add the nodes' state and logs to a failed test's."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    if report.failed and report.when in ("setup", "call"):
        for factory in item.stash.get(_FACTORIES, []):
            text = factory.report()
            if text:
                report.sections.append((f"{factory.fixture}: nodes and their logs", text))
    return report
