"""Runs SQLAlchemy's and Alembic's compliance suites against a dqlitepy node.

Wiring as in SQLAlchemy's README.dialects.rst: this conftest loads SQLAlchemy's
pytest plugin; ``setup.cfg`` (``[sqla_testing]``, ``[db]``) names the
requirements class and the database URL, ``sqlite+dqlitepy:///sqla_test.db``.
That URL has no host, so the driver takes its servers from
``DQLITEPY_SERVERS``: unless that is already set (to run the suites against
another cluster, C dqlite included), the session starts one ``dqlitepy server``
process on a free loopback port with a temporary data directory, points
``DQLITEPY_SERVERS`` at it and stops it at the end.  The dialect's own tests
(``test_dialect.py``) use the same servers, and start 3-node C dqlite
(``dqlite-demo``) and dqlitepy clusters for failover.

Other databases: ``--db pysqlite`` (or ``--dburi URL``) runs the same suites,
with the same requirements, against SQLAlchemy's own SQLite driver on a file.

Run with ``tox -e sqlalchemy``, or ``python -m pytest tests_sqlalchemy`` from a checkout.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from sqlalchemy.dialects import registry

_REPO = Path(__file__).resolve().parent.parent

# An installed dqlitepy declares the dialect as entry points (setup.cfg); from a
# source checkout that is not installed, register it the way the entry points would.
_DIALECTS = {
    "sqlite.dqlitepy": "dqlitepy.sqlalchemy",
    "dqlite": "dqlitepy.sqlalchemy",
    "sqlite.dqlitepy_async": "dqlitepy.sqlalchemy.dialect_async",
}
_declared = {ep.name for ep in entry_points(group="sqlalchemy.dialects")}
for _name, _module in _DIALECTS.items():
    if _name not in _declared:
        registry.register(_name, _module, "dialect")

pytest.register_assert_rewrite("sqlalchemy.testing.assertions")

from sqlalchemy.testing.plugin import plugin_base  # noqa: E402
from sqlalchemy.testing.plugin import pytestplugin as _sqla_plugin  # noqa: E402
from sqlalchemy.testing.plugin.pytestplugin import *  # noqa: E402, F403

sys.path.insert(0, str(_REPO / "tests"))
from dqlitepy_server import DqlitepyServer  # noqa: E402

_node: DqlitepyServer | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _node
    _sqla_plugin.pytest_configure(config)
    # This directory has its own pytest.ini, which makes it pytest's rootdir; the
    # suites' [sqla_testing] and [db] sections are in the repository's setup.cfg.
    plugin_base.read_config(_REPO)
    if os.environ.get("DQLITEPY_SERVERS"):
        return
    _node = DqlitepyServer().start()
    os.environ["DQLITEPY_SERVERS"] = _node.address


def pytest_sessionstart(session: pytest.Session) -> None:
    _sqla_plugin.pytest_sessionstart(session)
    # What Alembic's own conftest does once SQLAlchemy's plugin is set up.
    from alembic.testing import warnings

    warnings.setup_filters()


def pytest_report_header(config: pytest.Config) -> list[str]:
    servers = os.environ.get("DQLITEPY_SERVERS", "")
    where = f"session node {servers}" if _node is not None else f"DQLITEPY_SERVERS={servers}"
    return [f"dqlitepy: {where}" if servers else "dqlitepy: no servers (embedded node)"]


def pytest_unconfigure(config: pytest.Config) -> None:
    global _node
    _sqla_plugin.pytest_unconfigure(config)
    if _node is not None:
        os.environ.pop("DQLITEPY_SERVERS", None)
        _node.close()
        _node = None
