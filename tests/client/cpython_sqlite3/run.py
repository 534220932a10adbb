#!/usr/bin/env python3
"""Run CPython's own ``test_sqlite3`` with dqlitepy in place of ``sqlite3``, next to the stdlib.

The test modules are the interpreter's installed ones (``test.test_sqlite3.test_dbapi``
...), loaded at run time; nothing of CPython is copied here.  Each backend runs in a
fresh subprocess whose working directory is an empty temporary directory (the tests
create files such as ``TESTFN`` there):

- ``stdlib``: the modules as they are, against the standard library's ``sqlite3``;
- ``dqlitepy``: ``sys.modules["sqlite3"]`` (and ``"sqlite3.dbapi2"``) are dqlitepy
  before the modules are imported, no servers are configured, so every
  ``connect()`` goes to the embedded node, whose data directory
  (``DQLITEPY_DATA_DIR``) is a new temporary directory.  The tests listed in
  ``exclusions.EXCLUDED`` are reported as skipped with their reason; those in
  ``exclusions.ISOLATED`` run one per process, each with its own data directory.

Usage::

    python tests/client/cpython_sqlite3/run.py                   # both backends, a table of counts
    python tests/client/cpython_sqlite3/run.py --backend dqlitepy -v --json result.json

Where the interpreter lacks its test suite (Debian's python3 ships ``test.support``
but not ``test_sqlite3``), point ``--tests-dir`` or ``DQLITEPY_CPYTHON_TESTS`` at a
directory holding CPython's ``Lib/test/test_sqlite3`` of the same version.

Exit status: 0 when no test that dqlitepy runs failed, 1 when one did, 2 when a run
could not be completed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PACKAGE = "test.test_sqlite3"
#: The modules whose subject can cross a wire (not hooks, user functions or backup).
MODULES = (
    "test_dbapi",
    "test_types",
    "test_regression",
    "test_transactions",
    "test_factory",
    "test_dump",
)
BACKENDS = ("stdlib", "dqlitepy")
OUTCOMES = ("passed", "failed", "error", "skipped", "excluded")
TESTS_DIR_ENV = "DQLITEPY_CPYTHON_TESTS"
_EXCLUDED_PREFIX = "excluded: "
# The worse outcome wins when a test reports several (subtests).
_RANK = {"passed": 0, "skipped": 1, "excluded": 1, "failed": 2, "error": 3}


# --------------------------------------------------------------------------- child side


class _Collector(unittest.TestResult):
    """Keeps one outcome per test id (the worst of its subtests) and the first failure."""

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: dict[str, dict[str, str]] = {}

    def _record(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        test_id = test.id()
        previous = self.outcomes.get(test_id)
        if previous is None or _RANK[outcome] > _RANK[previous["outcome"]]:
            self.outcomes[test_id] = {"outcome": outcome, "detail": detail}

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._record(test, "passed")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "failed", self._exc_info_to_string(err, test))

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._record(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        if reason.startswith(_EXCLUDED_PREFIX):
            self._record(test, "excluded", reason[len(_EXCLUDED_PREFIX) :])
        else:
            self._record(test, "skipped", reason)

    def addSubTest(self, test: unittest.TestCase, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            detail = f"{subtest.id()}\n{self._exc_info_to_string(err, test)}"
            self._record(test, "failed" if failed else "error", detail)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "passed")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "failed", "unexpected success")


def _flatten(suite: unittest.TestSuite | unittest.TestCase) -> Iterator[unittest.TestCase]:
    if isinstance(suite, unittest.TestSuite):
        for item in suite:
            yield from _flatten(item)
    else:
        yield suite


def _relative_id(test_id: str) -> str:
    return test_id.removeprefix(PACKAGE + ".")


def _exclude(test: unittest.TestCase, reason: str) -> None:
    """Make ``test`` report a skip with ``reason`` before its setUp runs."""

    def excluded() -> None:
        raise AssertionError("an excluded test must not run")

    excluded.__unittest_skip__ = True  # type: ignore[attr-defined]
    excluded.__unittest_skip_why__ = _EXCLUDED_PREFIX + reason  # type: ignore[attr-defined]
    setattr(test, test._testMethodName, excluded)


def _load(backend: str, tests_dir: str | None) -> list[unittest.TestCase]:
    if backend == "dqlitepy":
        import dqlitepy

        # Before any test module (or the test_sqlite3 package) imports sqlite3.
        sys.modules["sqlite3"] = dqlitepy
        sys.modules["sqlite3.dbapi2"] = dqlitepy.dbapi2
    if tests_dir:
        import test

        test.__path__.insert(0, tests_dir)
    loader = unittest.TestLoader()
    tests: list[unittest.TestCase] = []
    for name in MODULES:
        module = __import__(f"{PACKAGE}.{name}", fromlist=["_"])
        if backend == "dqlitepy":
            # Make sure the module really got dqlitepy, not a cached stdlib sqlite3.
            sqlite = getattr(module, "sqlite", None)
            if sqlite is not None and sqlite.__name__ != "dqlitepy":
                raise RuntimeError(f"{name} imported {sqlite.__name__}, not dqlitepy")
        tests.extend(_flatten(loader.loadTestsFromModule(module)))
    return tests


def child(args: argparse.Namespace) -> int:
    """Run the selected tests in this process and write their outcomes as JSON."""
    from exclusions import EXCLUDED, ISOLATED, lookup

    tests = _load(args.child, args.tests_dir)
    only = set(args.only or ())
    selected = []
    for test in tests:
        rel = _relative_id(test.id())
        if only and rel not in only:
            continue
        if args.skip_isolated and lookup(ISOLATED, rel) is not None:
            continue
        if args.child == "dqlitepy":
            reason = lookup(EXCLUDED, rel)
            if reason is not None:
                _exclude(test, reason)
        selected.append(test)
    result = _Collector()
    started = time.monotonic()
    unittest.TestSuite(selected).run(result)
    elapsed = time.monotonic() - started
    outcomes = {_relative_id(k): v for k, v in result.outcomes.items()}
    Path(args.result).write_text(
        json.dumps({"outcomes": outcomes, "seconds": elapsed, "all": [
            _relative_id(t.id()) for t in tests
        ]})
    )
    return 0


# -------------------------------------------------------------------------- parent side


def _module_of(test_id: str) -> str:
    for name in MODULES:
        if test_id.startswith(name + ".") or f"{PACKAGE}.{name}." in test_id:
            return name
    return "other"


def _spawn(
    backend: str, extra: list[str], tests_dir: str | None, timeout: float
) -> dict[str, Any]:
    """Run one child process in a fresh working and data directory; return its JSON."""
    work = Path(tempfile.mkdtemp(prefix=f"cpython-sqlite3-{backend}-"))
    try:
        env = dict(os.environ)
        env.pop("DQLITEPY_SERVERS", None)  # the tests must use the embedded default
        env["DQLITEPY_DATA_DIR"] = str(work / "dqlitepy-data")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), str(HERE), env.get("PYTHONPATH", "")) if p
        )
        result_file = work / "result.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            backend,
            "--result",
            str(result_file),
            *(["--tests-dir", tests_dir] if tests_dir else []),
            *extra,
        ]
        cwd = work / "cwd"
        cwd.mkdir()
        try:
            proc = subprocess.run(
                command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"{backend} run {extra} did not finish within {timeout:.0f} s\n"
                f"{_tail(exc.stderr)}"
            ) from None
        if proc.returncode != 0 or not result_file.exists():
            raise RuntimeError(
                f"{backend} run {extra} failed (exit status {proc.returncode})\n"
                f"{_tail(proc.stdout)}\n{_tail(proc.stderr)}"
            )
        data: dict[str, Any] = json.loads(result_file.read_text())
        return data
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


def run_backend(backend: str, tests_dir: str | None, timeout: float) -> dict[str, Any]:
    """All outcomes of one backend: ``{"outcomes": {id: {...}}, "seconds": float}``."""
    from exclusions import ISOLATED, lookup

    started = time.monotonic()
    if backend == "stdlib":
        data = _spawn(backend, [], tests_dir, timeout)
        return {"outcomes": data["outcomes"], "seconds": time.monotonic() - started}
    main = _spawn(backend, ["--skip-isolated"], tests_dir, timeout)
    outcomes: dict[str, dict[str, str]] = dict(main["outcomes"])
    isolated = [t for t in main["all"] if lookup(ISOLATED, t) is not None]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        runs = pool.map(
            lambda test_id: _spawn(backend, ["--only", test_id], tests_dir, timeout), isolated
        )
        for data in runs:
            outcomes.update(data["outcomes"])
    return {"outcomes": outcomes, "seconds": time.monotonic() - started}


def count(outcomes: dict[str, dict[str, str]]) -> dict[str, dict[str, int]]:
    """Per module (and ``"total"``) counts of each outcome."""
    table = {name: dict.fromkeys(OUTCOMES, 0) for name in (*MODULES, "total")}
    for test_id, info in outcomes.items():
        module = _module_of(test_id)
        table.setdefault(module, dict.fromkeys(OUTCOMES, 0))[info["outcome"]] += 1
        table["total"][info["outcome"]] += 1
    return table


def render(report: dict[str, Any]) -> str:
    """The comparison table, as text."""
    counts = report["counts"]
    lines = [
        f"CPython {report['python']} test_sqlite3, SQLite {report['sqlite_version']} "
        f"(stdlib) vs dqlitepy on its embedded node",
        "",
        f"{'module':<18} | {'stdlib':^26} | {'dqlitepy':^39}",
        f"{'':<18} | {'pass':>5} {'fail':>5} {'err':>5} {'skip':>5}   | "
        f"{'pass':>5} {'fail':>5} {'err':>5} {'skip':>5} {'excl':>5}",
    ]
    lines.append("-" * len(lines[-1]))
    for name in (*MODULES, "total"):
        if name == "total":
            lines.append("-" * len(lines[3]))
        row = f"{name:<18} |"
        if "stdlib" in counts:
            s = counts["stdlib"][name]
            row += f" {s['passed']:>5} {s['failed']:>5} {s['error']:>5} {s['skipped']:>5}   |"
        else:
            row += f" {'':>26} |"
        if "dqlitepy" in counts:
            d = counts["dqlitepy"][name]
            row += (
                f" {d['passed']:>5} {d['failed']:>5} {d['error']:>5} {d['skipped']:>5}"
                f" {d['excluded']:>5}"
            )
        lines.append(row)
    for backend, seconds in report["seconds"].items():
        lines.append(f"{backend}: {seconds:.1f} s")
    return "\n".join(lines)


def _details(outcomes: dict[str, dict[str, str]], kinds: tuple[str, ...]) -> Iterator[str]:
    for test_id in sorted(outcomes):
        info = outcomes[test_id]
        if info["outcome"] in kinds:
            yield f"{info['outcome'].upper()}: {test_id}"
            if info["outcome"] in ("failed", "error"):
                yield "    " + "\n    ".join(_tail(info["detail"], 12).splitlines())
            elif info["detail"]:
                yield f"    {info['detail']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=(*BACKENDS, "both"), default="both")
    parser.add_argument("--json", help="write the outcomes and counts to this file")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per process")
    parser.add_argument(
        "--tests-dir",
        default=os.environ.get(TESTS_DIR_ENV) or None,
        help=f"a directory holding CPython's test_sqlite3 package (env {TESTS_DIR_ENV})",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="list every test that did not pass"
    )
    # Internal: the process that runs the tests.
    parser.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--only", action="append", help=argparse.SUPPRESS)
    parser.add_argument("--skip-isolated", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(HERE))
        return child(args)

    sys.path.insert(0, str(HERE))
    import sqlite3

    from exclusions import EXCLUDED, ISOLATED

    backends = BACKENDS if args.backend == "both" else (args.backend,)
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "sqlite_version": sqlite3.sqlite_version,
        "modules": list(MODULES),
        "outcomes": {},
        "counts": {},
        "seconds": {},
        "excluded": EXCLUDED,
        "isolated": ISOLATED,
    }
    try:
        for backend in backends:
            result = run_backend(backend, args.tests_dir, args.timeout)
            report["outcomes"][backend] = result["outcomes"]
            report["counts"][backend] = count(result["outcomes"])
            report["seconds"][backend] = result["seconds"]
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "dqlitepy" in report["outcomes"]:
        ran = report["outcomes"]["dqlitepy"]
        report["unmatched_exclusions"] = [
            key
            for key in (*EXCLUDED, *ISOLATED)
            if not any(t == key or t.startswith(key + ".") for t in ran)
        ]
    print(render(report))
    for backend in backends:
        kinds = ("failed", "error", "skipped", "excluded") if args.verbose else ("failed", "error")
        details = list(_details(report["outcomes"][backend], kinds))
        if details:
            print(f"\n{backend}:")
            print("\n".join(details))
    for key in report.get("unmatched_exclusions", ()):
        print(f"note: exclusion {key!r} matches no test of this Python version")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, sort_keys=True))
    failing = report["counts"].get("dqlitepy", {}).get("total", {})
    return 1 if failing.get("failed") or failing.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
