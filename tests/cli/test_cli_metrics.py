"""``dqlitepy server --metrics-address``: the operator's mistakes exit 2, starting nothing.

Serving itself is tested on a cluster of ``dqlitepy server`` processes
(``tests/server/test_metrics_cluster.py``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from dqlitepy_server import free_port

from dqlitepy.cli import main

_REPO = Path(__file__).resolve().parents[2]


def _server(tmp_path: Path, *args: str, pythonpath: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, str(_REPO)) if p)
    env.pop("DQLITEPY_CLUSTER_KEY", None)
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "dqlitepy", "server", "-a", address]
    return subprocess.run(
        [*command, "-d", str(tmp_path / "d"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )


def test_a_busy_metrics_port_exits_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        result = _server(tmp_path, "--metrics-address", busy)
    assert result.returncode == 2, result
    assert f"cannot serve metrics on {busy}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr and "serving on" not in result.stderr


@pytest.mark.parametrize("address", ["nonsense", "@abstract", "127.0.0.1:99999", ""])
def test_a_bad_metrics_address_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], address: str
) -> None:
    # argparse refuses it before the server runs: in process, nothing else happens.
    with pytest.raises(SystemExit) as exit_:
        main(["server", "-d", str(tmp_path / "d"), "--metrics-address", address])
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("usage: dqlitepy server"), stderr
    assert "argument --metrics-address: expected HOST:PORT" in stderr
    assert f"got {address!r}" in stderr
    assert not (tmp_path / "d").exists()


def test_without_prometheus_client_it_says_what_to_install(tmp_path: Path) -> None:
    # A prometheus_client that cannot be imported, ahead of the real one on the path.
    shadow = tmp_path / "shadow" / "prometheus_client"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed (test)')\n")
    metrics = f"127.0.0.1:{free_port()}"
    result = _server(tmp_path, "--metrics-address", metrics, pythonpath=str(shadow.parent))
    assert result.returncode == 2, result
    assert "pip install dqlitepy[metrics]" in result.stderr
    assert "Traceback" not in result.stderr
    # Without a metrics address a node runs without it, and never imports it.
    script = (
        "import sys, dqlitepy\n"
        f"node = dqlitepy.Node('127.0.0.1:0', {str(tmp_path / 'e')!r}).start()\n"
        "conn = node.connect('app.db')\n"
        "assert conn.execute('SELECT 1').fetchone() == (1,)\n"
        "conn.close()\n"
        "node.close()\n"
        "sys.exit('prometheus_client' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(shadow.parent), str(_REPO)))}
    probe = subprocess.run(
        [sys.executable, "-c", script], env=env, timeout=60, check=False, capture_output=True
    )
    assert probe.returncode == 0, probe
