"""A client does not load the server: ``import dqlitepy`` stays a driver import.

The server (``dqlitepy.server``, ``dqlitepy.engine``, ``dqlitepy.replication``) and
the libraries only it uses (APSW, PySyncObj) are imported when a node is started,
never by ``import dqlitepy``, the driver, the SQLAlchemy dialect or a connection to
servers elsewhere.  Each case runs in a fresh interpreter and reports what it left
in ``sys.modules``.  The time ``import dqlitepy`` took is printed, not asserted
(``benchmarks/import_time.py`` measures it properly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dqlitepy_server import DqlitepyServer

REPO = Path(__file__).resolve().parent.parent

#: What a process that runs no node must not import (a name or a package prefix).
SERVER_ONLY = ("apsw", "pysyncobj", "dqlitepy.server", "dqlitepy.engine", "dqlitepy.replication")

_PROBE = """
import json, sys, time
started = time.perf_counter()
{code}
elapsed = time.perf_counter() - started
loaded = sorted(
    m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in {prefixes!r})
)
print(json.dumps({{"elapsed": elapsed, "loaded": loaded}}))
"""


def _probe(code: str, prefixes: tuple[str, ...] = SERVER_ONLY) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; return its time and the ``prefixes`` it loaded."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(code=code, prefixes=prefixes)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


@pytest.mark.parametrize(
    "code",
    [
        "import dqlitepy",
        "import dqlitepy.client",
        "import dqlitepy.dbapi2",
        "import dqlitepy.sqlalchemy.dialect",
        "import dqlitepy.sqlalchemy",
        # The pytest plugin, which pytest imports in every session where dqlitepy is installed.
        "import dqlitepy.testing",
        # The names a sqlite3 user and an embedder see, without starting anything.
        "from dqlitepy import Node, Client, Connection, connect; dir(__import__('dqlitepy'))",
    ],
)
def test_client_imports_leave_the_server_out(code: str) -> None:
    assert _probe(code)["loaded"] == []


def test_import_time_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    elapsed = min(_probe("import dqlitepy")["elapsed"] for _ in range(3))
    with capsys.disabled():
        print(f"\nimport dqlitepy: {elapsed * 1e3:.1f} ms (best of 3, fresh interpreters)")


def test_sqlalchemy_dialect_leaves_its_test_suite_out() -> None:
    assert _probe("import dqlitepy.sqlalchemy", ("sqlalchemy.testing",))["loaded"] == []


def test_the_driver_leaves_pytest_out() -> None:
    """pytest is no dependency of dqlitepy: only ``dqlitepy.testing`` (the plugin) needs it."""
    assert _probe("import dqlitepy", ("pytest", "_pytest", "dqlitepy.testing"))["loaded"] == []
    assert "pytest" in _probe("import dqlitepy.testing", ("pytest",))["loaded"]  # the control


def test_connection_to_a_server_elsewhere_loads_no_server(
    shared_dqlitepy_node: DqlitepyServer,
) -> None:
    code = (
        "import dqlitepy\n"
        f"conn = dqlitepy.connect('dqlite://{shared_dqlitepy_node.address}/import_cost')\n"
        "assert conn.execute('SELECT 1').fetchall() == [(1,)]\n"
        "conn.close()\n"
    )
    assert _probe(code)["loaded"] == []


def test_the_probe_sees_the_server_when_it_is_loaded() -> None:
    """Positive control: importing the server shows up in the probe's report."""
    loaded = _probe("import dqlitepy.server")["loaded"]
    assert {"apsw", "pysyncobj", "dqlitepy.engine", "dqlitepy.replication"} <= set(loaded)


def test_startup_errors_resolve_on_demand() -> None:
    """``dqlitepy.node``'s startup errors are the server's, loaded when asked for."""
    report = _probe(
        "import dqlitepy.node as node\n"
        "from dqlitepy.server.datadir import StartupRefused\n"
        "assert node.StartupRefused is StartupRefused\n"
        "assert 'DataDirectoryInUse' in dir(node)\n"
    )
    assert "dqlitepy.server" in report["loaded"]


def test_public_names_are_complete() -> None:
    import dqlitepy

    assert "Node" in dqlitepy.__all__
    assert set(dqlitepy.__all__) <= set(dir(dqlitepy))
    assert set(dqlitepy.__all__) <= set(dir(dqlitepy.dbapi2))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        dqlitepy.node.NoSuchName  # noqa: B018 - the module __getattr__ must not swallow typos
