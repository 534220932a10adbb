"""CPython's own ``test_sqlite3``, run with dqlitepy in place of ``sqlite3`` (embedded node).

The work is done by ``tests/client/cpython_sqlite3/run.py`` in subprocesses; this test fails
if any test that dqlitepy runs fails or errors, and prints the counts next to the standard
library's.  The exclusions, each with its reason, are in
``tests/client/cpython_sqlite3/exclusions.py``.

The test modules come with the interpreter (``test.test_sqlite3``).  Debian's python3 does
not ship them: then set ``DQLITEPY_CPYTHON_TESTS`` to a directory holding CPython's
``Lib/test/test_sqlite3`` of the same version, or
``DQLITEPY_NO_CPYTHON_TESTS=1`` to skip this test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUNNER = Path(__file__).parent / "cpython_sqlite3" / "run.py"
# The whole run takes a few seconds; these bound a hang (each runner process, and the runner).
PROCESS_TIMEOUT = 120
TIMEOUT = 240


def _tests_available() -> bool:
    if os.environ.get("DQLITEPY_CPYTHON_TESTS"):
        return (Path(os.environ["DQLITEPY_CPYTHON_TESTS"]) / "test_sqlite3").is_dir()
    try:
        return importlib.util.find_spec("test.test_sqlite3") is not None
    except ImportError:
        return False


def test_cpython_test_sqlite3_passes_on_dqlitepy(tmp_path: Path) -> None:
    if not _tests_available():
        if os.environ.get("DQLITEPY_NO_CPYTHON_TESTS") == "1":
            pytest.skip("DQLITEPY_NO_CPYTHON_TESTS=1: CPython's test_sqlite3 is not run")
        pytest.fail(
            "CPython's test_sqlite3 is not installed with this interpreter: set "
            "DQLITEPY_CPYTHON_TESTS to a directory holding Lib/test/test_sqlite3 of Python "
            f"{sys.version.split()[0]}, or DQLITEPY_NO_CPYTHON_TESTS=1 to skip this test",
            pytrace=False,
        )
    report_file = tmp_path / "report.json"
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            str(RUNNER),
            "--backend",
            "both",
            "--json",
            str(report_file),
            "--timeout",
            str(PROCESS_TIMEOUT),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    elapsed = time.monotonic() - started
    print(proc.stdout)
    print(f"(whole run: {elapsed:.1f} s)")
    assert proc.returncode in (0, 1), f"the runner failed:\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(report_file.read_text())
    stdlib = report["counts"]["stdlib"]["total"]
    ours = report["counts"]["dqlitepy"]["total"]
    # Every test of the stdlib run was run (or reported excluded) on dqlitepy too.
    assert sum(ours.values()) == sum(stdlib.values()) > 0
    assert set(report["outcomes"]["dqlitepy"]) == set(report["outcomes"]["stdlib"])
    broken = {
        test_id: info["detail"]
        for test_id, info in report["outcomes"]["dqlitepy"].items()
        if info["outcome"] in ("failed", "error")
    }
    assert not broken, proc.stdout
    # An excluded test is reported as such (skipped, never run as passed), each with a reason.
    excluded = [t for t, i in report["outcomes"]["dqlitepy"].items() if i["outcome"] == "excluded"]
    assert all(report["outcomes"]["dqlitepy"][t]["detail"] for t in excluded)
    assert ours["passed"] > 0
