"""Test an application against real dqlitepy nodes, and under failover: a pytest plugin.

Installed with dqlitepy, pytest loads it in every session (entry point ``pytest11``;
``-p dqlitepy.testing`` loads it where dqlitepy is not installed, ``-p
no:dqlitepy.testing`` keeps it out).  It gives two fixtures, both factories::

    def test_orders_survive_failover(dqlitepy_cluster):
        cluster = dqlitepy_cluster(size=3)        # 3 voters agreeing on a leader
        conn = cluster.connect("shop")            # dqlitepy.connect over every address
        ...
        cluster.kill(cluster.wait_for_leader())   # SIGKILL the leader
        cluster.wait_for_leader()                 # its successor

    def test_one_node(dqlitepy_node):
        node = dqlitepy_node()                    # one standalone node
        engine = create_engine(node.sqlalchemy_url("shop"))

Nodes are ``dqlitepy server`` processes (:class:`ProcessNode`: kill, pause, resume,
restart) or, with ``in_process=True``, :class:`dqlitepy.Node` threads in the test's process
(:class:`EmbeddedNode`: faster, stop and restart only), on free loopback ports, each with a
temporary data directory.  Everything is bounded in time and closed at the end of the test,
passed or failed.  :class:`Cluster`, :class:`ProcessNode` and :class:`EmbeddedNode` work
outside the fixtures too, e.g. for a cluster shared by a session (``with Cluster(3) as
cluster: ...``).  See ``docs/testing-your-app.md``.

This package uses dqlitepy's public API only, and importing it loads neither the server
nor APSW nor PySyncObj (pytest imports it in every session); it needs pytest.
"""

from __future__ import annotations

from ._support import HarnessError, free_port
from .cluster import Cluster
from .nodes import EmbeddedNode, ServerNode
from .plugin import (
    ClusterFactory,
    NodeFactory,
    dqlitepy_cluster,
    dqlitepy_node,
    pytest_addoption,
    pytest_runtest_makereport,
)
from .process import ProcessNode

__all__ = [
    "Cluster",
    "ClusterFactory",
    "EmbeddedNode",
    "HarnessError",
    "NodeFactory",
    "ProcessNode",
    "ServerNode",
    "dqlitepy_cluster",
    "dqlitepy_node",
    "free_port",
    "pytest_addoption",
    "pytest_runtest_makereport",
]
