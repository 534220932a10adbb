"""dqlitepy's pytest plugin (``dqlitepy.testing``), as a user's project meets it.

The sample user module (``sample/test_app_failover.py``, also the complete example of
``docs/testing-your-app.md``) runs in a pytest session of its own, in a fresh directory,
with the plugin loaded through the ``pytest11`` entry point that ``setup.cfg`` declares: a
test there kills a leader, one pauses it, one restarts a node, one a single node.  The same
session has a test that fails on purpose with a node running, to show that the node is
killed, its directory removed, its log kept (``--dqlitepy-logs``) and shown in the report.

The project's own tests use the plugin too (``tests/conftest.py`` loads it): the
in-process cluster below, and the replication and failover tests that start clusters.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from waiting import wait_until

import dqlitepy
from dqlitepy.testing import Cluster, ClusterFactory, HarnessError, ProcessNode, free_port
from dqlitepy.testing._support import process_state

REPO = Path(__file__).resolve().parents[2]
SAMPLE = Path(__file__).with_name("sample") / "test_app_failover.py"


def _declared_entry_points() -> list[str]:
    """The ``pytest11`` lines of setup.cfg's ``[options.entry_points]``."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options.entry_points"].get("pytest11", "")
    return [line.strip() for line in lines.splitlines() if line.strip()]


@pytest.fixture
def entry_point_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on ``PYTHONPATH`` with a distribution declaring setup.cfg's pytest11
    entry points, as an installed dqlitepy does (without installing this checkout)."""
    site = tmp_path / "site"
    info = site / "dqlitepy_entry_points-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: dqlitepy-entry-points\nVersion: 0\n"
    )
    lines = "\n".join(_declared_entry_points())
    (info / "entry_points.txt").write_text(f"[pytest11]\n{lines}\n")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    )
    return site


def _alive(pid: int, marker: str) -> bool:
    """True if process ``pid`` runs and is the one whose command line names ``marker``
    (a PID may be reused; a zombie has no command line)."""
    if process_state(pid) in (None, "Z"):
        return False
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


# -- the plugin as a user's project loads it ----------------------------------------------------


def test_setup_cfg_registers_the_plugin_under_its_module_name() -> None:
    assert _declared_entry_points() == ["dqlitepy.testing = dqlitepy.testing"]


def test_the_documented_example_is_the_sample_that_runs() -> None:
    doc = (REPO / "docs" / "testing-your-app.md").read_text()
    assert f"```python\n{SAMPLE.read_text()}```" in doc


def test_the_installed_distribution_declares_the_plugin() -> None:
    dist = importlib.metadata.distribution("dqlitepy")
    declared = {(ep.name, ep.value) for ep in dist.entry_points if ep.group == "pytest11"}
    if not declared and any(ep.group == "console_scripts" for ep in dist.entry_points):
        pytest.skip(
            "the installed dqlitepy metadata predates its pytest11 entry point: reinstall "
            "this checkout (pip install -e .) to check it; the entry point itself is "
            "checked through setup.cfg by the sample run"
        )
    assert declared == {("dqlitepy.testing", "dqlitepy.testing")}


_FAILS_ON_PURPOSE = """
from pathlib import Path

from dqlitepy.testing import NodeFactory


def test_fails_with_a_node_running(dqlitepy_node: NodeFactory) -> None:
    node = dqlitepy_node()
    Path("node.txt").write_text(f"{node.pid}\\n{node.data_dir}")
    raise AssertionError("failing on purpose")
"""

_LOADED_THROUGH_THE_ENTRY_POINT = """
import pytest

import dqlitepy.testing


def test_the_plugin_came_through_its_entry_point(pytestconfig: pytest.Config) -> None:
    registered = pytestconfig.pluginmanager.list_plugin_distinfo()
    assert [p for p, _ in registered if p is dqlitepy.testing], registered
"""


@pytest.mark.slow
def test_the_sample_module_passes_with_the_plugin_from_its_entry_point(
    pytester: pytest.Pytester, entry_point_site: Path
) -> None:
    pytester.makepyfile(
        test_app_failover=SAMPLE.read_text(),
        test_fails_on_purpose=_FAILS_ON_PURPOSE,
        test_loaded=_LOADED_THROUGH_THE_ENTRY_POINT,
    )
    started = time.monotonic()
    # No -p: pytest finds the plugin through the entry point, as in a user's project.
    result = pytester.runpytest_subprocess(
        "-W", "error", "-p", "no:cacheprovider", "-rA", "--dqlitepy-logs=kept", timeout=240
    )
    print(f"sample session: {time.monotonic() - started:.1f} s")
    output = result.stdout.str()
    result.assert_outcomes(passed=6, failed=1)
    # The failed test's node: killed, its directory removed, its log kept and reported.
    pid, data_dir = (pytester.path / "node.txt").read_text().split("\n")
    assert not _alive(int(pid), data_dir)
    assert not Path(data_dir).exists()
    kept = list((pytester.path / "kept").glob("*test_fails_with_a_node_running*/node0.log"))
    assert len(kept) == 1 and "serving on" in kept[0].read_text()
    assert "dqlitepy_node: nodes and their logs" in output
    assert "ProcessNode node0" in output


def test_the_option_and_the_entry_point_load_the_plugin_once(
    pytester: pytest.Pytester, entry_point_site: Path
) -> None:
    pytester.makepyfile(
        """
        import dqlitepy.testing

        def test_registered_once(pytestconfig, dqlitepy_cluster, dqlitepy_node):
            manager = pytestconfig.pluginmanager
            assert [p for p in manager.get_plugins() if p is dqlitepy.testing] == [
                dqlitepy.testing
            ]
            assert callable(dqlitepy_cluster) and callable(dqlitepy_node)
        """
    )
    result = pytester.runpytest_subprocess("-W", "error", "-p", "dqlitepy.testing", timeout=120)
    result.assert_outcomes(passed=1)


# -- what the harness does -----------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_process_nodes_die_with_the_test_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "orphan"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from dqlitepy.testing import ProcessNode
        node = ProcessNode(Path({str(data_dir)!r})).start()
        print(node.pid, node.address, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid, address = parent.stdout.readline().split()
        # The control: the node serves while its parent lives.
        assert _alive(int(pid), str(data_dir))
        with dqlitepy.Client([address], timeout=5) as client:
            assert client.leader() is not None  # a standalone node names itself
    finally:
        parent.send_signal(signal.SIGKILL)  # no teardown, no atexit: only the kernel is left
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
    wait_until(lambda: not _alive(int(pid), str(data_dir)), "the orphaned node to die", 10)


def test_in_process_clusters_fail_over_on_a_graceful_stop(dqlitepy_cluster: ClusterFactory) -> None:
    cluster = dqlitepy_cluster(size=3, in_process=True)
    conn = cluster.connect("inproc", isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    old = cluster.stop(cluster.wait_for_leader())  # a leader hands over as it stops
    new = cluster.wait_for_leader(timeout=10)
    assert new is not old and not old.running
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    with pytest.raises(NotImplementedError, match="cannot be killed"):
        cluster.kill(new)
    # Two of three down: no leader, and the wait says what each node answered.
    cluster.stop(cluster.followers()[0])
    with pytest.raises(HarnessError, match="waiting for a leader") as info:
        cluster.wait_for_leader(timeout=1)
    assert "EmbeddedNode node" in str(info.value)
    cluster.restart(old)
    assert cluster.wait_for_leader() in cluster.nodes
    conn.execute("INSERT INTO t VALUES (2)")
    assert cluster.connect("inproc").execute("SELECT count(*) FROM t").fetchone() == (2,)


def test_options_are_checked_against_the_kind_of_node() -> None:
    with pytest.raises(TypeError, match="process nodes take options as dqlitepy server"):
        Cluster(1, options={"max_connections": 8})
    with pytest.raises(TypeError, match=r"in-process nodes take options as dqlitepy\.Node"):
        Cluster(1, in_process=True, options=["--max-connections", "8"])
    with pytest.raises(ValueError, match="at least one node"):
        Cluster(0)


def test_urls_name_every_node() -> None:
    cluster = Cluster(2)  # not started: addresses are chosen at construction
    try:
        a, b = cluster.addresses
        assert cluster.dqlite_url("app") == f"dqlite://{a},{b}/app"
        assert cluster.sqlalchemy_url("app") == f"sqlite+dqlitepy://[{a},{b}]/app"
        assert cluster.nodes[0].dqlite_url("app") == f"dqlite://{a}/app"
        with pytest.raises(KeyError, match="no node"):
            cluster.node("127.0.0.1:1")
    finally:
        cluster.close()


def test_free_ports_are_never_handed_out_twice() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(p < low for p in ports)  # below the range the kernel picks client ports from


def test_a_node_that_cannot_start_says_why(tmp_path: Path) -> None:
    node = ProcessNode(tmp_path / "n", options=["--max-connections", "0"])
    with pytest.raises(HarnessError, match="exited early") as info:
        node.start(timeout=30)
    assert "expected a positive integer" in str(info.value)  # the end of its log
    assert not node.running
