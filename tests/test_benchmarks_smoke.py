"""``python -m benchmarks --quick`` runs end to end and prints a table of both systems.

A smoke test only: the smallest configuration (one workload, one client, one node, one
round, about a second each), under a timeout. No figure is checked: speed targets are
measured by the suite, never asserted by a unit test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` in the checkout with it first on the path; it must exit 0."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _suite(options: str) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks`` at its smallest (1 client, 1 s, 1 round) with ``options``."""
    smallest = ["--clients", "1", "--seconds", "1", "--rounds", "1"]
    return _run(["-m", "benchmarks", *smallest, *options.split()], timeout=120)


@pytest.mark.dqlite
@pytest.mark.skipif(
    os.environ.get("DQLITEPY_NO_DQLITE") == "1", reason="DQLITEPY_NO_DQLITE=1: no dqlite-demo"
)
def test_quick_run_prints_both_systems_and_a_ratio() -> None:
    # Without dqlite-demo the suite exits with status 2 and says what to install: a failure.
    run = _suite("--quick --workloads kvwrite --nodes 1 --async-levels 1")
    lines = run.stdout.splitlines()
    assert any("ratio" in line and "ops/s" in line for line in lines), run.stdout
    rows = [line.split() for line in lines]
    assert ["kvwrite", "1", "dqlite"] in [r[:3] for r in rows], run.stdout
    ours = [r for r in rows if r[:1] == ["dqlitepy"]]
    assert ours and "ratio:" in ours[0], run.stdout
    # The asyncio driver's comparison runs too, on a dqlitepy node.
    assert ["1", "read", "1"] in [r[:3] for r in rows], run.stdout
    assert ["1", "write", "1"] in [r[:3] for r in rows], run.stdout


def test_the_async_driver_rows_survive_results_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--replot`` rebuilds the asyncio driver's table from results.json."""
    # benchmarks/ is no installed package: tox runs the tests against the installed
    # dqlitepy, from the checkout, with only tests/ on the import path.
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks import report
    from benchmarks.driver_async import Row

    results = report.Results()
    results.driver_async = [
        Row(1, "read", 16, 1000.0, 900.0),
        Row(1, "read", 256, 1.0, 1500.0),
        Row(3, "write", 1, 50.0, 60.0),
    ]
    table = report.driver_async_markdown(results)
    assert "| 1 | point reads | 256 | 1.00 | 1500 | 1500 |" in table
    assert "async at 256 tasks 1500 ops/s, sync at 16 threads 1000 ops/s (target met)" in table
    again, _meta = report.Results.from_json(report.to_json(results, {"machine": {}}))
    assert report.driver_async_markdown(again) == table
    assert report.driver_async_text(again) == report.driver_async_text(results)
    empty, _meta = report.Results.from_json(report.to_json(report.Results(), {}))
    assert empty.driver_async == [] and report.driver_async_markdown(empty) == ""


def test_driver_async_benchmark_runs() -> None:
    """``benchmarks/driver_async.py`` at its smallest: both drivers, two levels, one round."""
    run = _run(
        [
            str(REPO / "benchmarks" / "driver_async.py"),
            "--seconds",
            "0.3",
            "--levels",
            "1,2",
            "--rounds",
            "1",
        ],
        timeout=120,
    )
    rows = [line.split() for line in run.stdout.splitlines()]
    assert [r[:2] for r in rows] == [["read", "1"], ["read", "2"], ["write", "1"], ["write", "2"]]
    assert all("sync" in r and "async" in r for r in rows), run.stdout


@pytest.mark.dqlite
@pytest.mark.skipif(
    os.environ.get("DQLITEPY_NO_DQLITE") == "1", reason="DQLITEPY_NO_DQLITE=1: no dqlite-demo"
)
def test_read_floor_serves_real_rows_next_to_both_systems() -> None:
    """``benchmarks/read_floor.py``: its floor server answers the real client with the rows.

    The script checks every answer (one ROWS message with the row), so a floor server that
    cut a corner the protocol needs would fail here instead of looking fast.
    """
    run = _run(
        [
            str(REPO / "benchmarks" / "read_floor.py"),
            "--reads",
            "200",
            "--rounds",
            "1",
        ],
        timeout=180,
    )
    systems = [line.split()[0] for line in run.stdout.splitlines()[2:]]
    assert systems == ["dqlite", "dqlitepy", "python"], run.stdout


def test_the_python_floor_serves_the_suites_read_and_scan_workloads_only() -> None:
    """``--systems python-floor``: the floor server answers the suite's own driver clients.

    Every read checks that its key came back and every scan that all its rows did (the
    replayed ones too), so a floor that answered wrongly would count errors instead of
    operations. The floor serves ``read`` and ``scan`` and a single node, so the
    ``kvwrite`` measurement and the 3-node cluster are skipped for it.
    """
    run = _suite(
        "--workloads read,kvwrite,scan --nodes 1,3 --systems python-floor --no-async-driver"
    )
    rows = [line.split() for line in run.stdout.splitlines()]
    measured = [r for r in rows if "python-floor" in r]
    assert [r[:3] for r in measured] == [
        ["read", "1", "python-floor"],
        ["scan", "1", "python-floor"],
    ], run.stdout
    assert all(float(r[3]) > 0 for r in measured), run.stdout
    progress = [line for line in run.stderr.splitlines() if "python-floor " in line]
    assert len(progress) == 2 and all(" 0 errors" in line for line in progress), run.stderr
