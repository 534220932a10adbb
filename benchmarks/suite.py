"""``python -m benchmarks``: dqlitepy against dqlite, same clients, alternated rounds.

For each cluster size (``--nodes``), each round (``--rounds``) starts a fresh cluster of
each system in turn, dqlite then dqlitepy (A B A B ...), so that a machine getting slower
or faster during the run affects both alike, and runs every workload at every client count
on it, each in a database of its own. The table printed at the end gives, per workload and
client count, the median over the rounds of successful ops/s, p50 and p99 latency and the
servers' CPU seconds per operation, the errors by kind, and the ratio dqlitepy / dqlite.

``--write-docs`` also writes the results into ``docs/performance.md`` (between its
``results`` markers), ``docs/performance/*.svg`` (with matplotlib) and
``docs/performance/results.json``.

Every process started (servers, client workers) is stopped by its PID and every
temporary directory removed, also on Ctrl-C or SIGTERM; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from . import driver_async, go_client, report
from .measure import Sample, measure
from .report import Results
from .systems import ONLY_WORKLOADS, REPO, SINGLE_NODE, SYSTEMS, missing_programs
from .workloads import WORKLOADS

__all__ = ["main"]

DOC = REPO / "docs" / "performance.md"
FIGURES = REPO / "docs" / "performance"
START_MARK = "<!-- results:start (written by python -m benchmarks --write-docs) -->"
END_MARK = "<!-- results:end -->"

QUICK_SECONDS = 1.0
QUICK_CLIENTS = (1, 16)
#: The asyncio driver's concurrency levels (tasks, and threads for the blocking driver).
ASYNC_LEVELS = driver_async.LEVELS
QUICK_ASYNC_LEVELS = (1, 16)


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need numbers of at least 1: {text!r}")
    return values


def _workloads(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {unknown}; choose among {', '.join(WORKLOADS)}"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="dqlitepy against dqlite (dqlite-demo): the same clients, alternated runs.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK_SECONDS:g} s per measurement, 1 round, 1 node, "
        f"clients {','.join(map(str, QUICK_CLIENTS))} at most",
    )
    parser.add_argument(
        "--workloads",
        type=_workloads,
        default=list(WORKLOADS),
        help=f"comma-separated, among {','.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument(
        "--clients",
        type=_ints,
        default=None,
        help="client counts for every workload (default: each workload's own: "
        + "; ".join(f"{w.name} {','.join(map(str, w.clients))}" for w in WORKLOADS.values())
        + ")",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="measured time of each run of a workload (default 5, quick 1)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="alternated rounds, each system once per round (default 3, quick 1)",
    )
    parser.add_argument(
        "--nodes", type=_ints, default=None, help="cluster sizes (default 1,3; quick 1)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=4,
        help="client worker processes at most; clients are threads dealt to them (default 4)",
    )
    parser.add_argument(
        "--systems",
        default="dqlite,dqlitepy",
        help="which systems, in the order of each round (default dqlite,dqlitepy)",
    )
    parser.add_argument(
        "--go-client",
        action="store_true",
        help="on 1 node, also run go-dqlite's dqlite-benchmark (C dqlite with its Go client "
        "in one process) for kvwrite and kvreadwrite, as a baseline",
    )
    parser.add_argument(
        "--async-levels",
        type=_ints,
        default=None,
        help="tasks (and threads) for the asyncio driver against the blocking one "
        f"(default {','.join(map(str, ASYNC_LEVELS))}; quick "
        f"{','.join(map(str, QUICK_ASYNC_LEVELS))})",
    )
    parser.add_argument(
        "--no-async-driver",
        action="store_true",
        help="skip the asyncio driver's comparison (benchmarks/driver_async.py), which "
        "runs on dqlitepy clusters of each --nodes size after the systems' workloads",
    )
    parser.add_argument(
        "--async-driver-only",
        action="store_true",
        help="measure only the asyncio driver's comparison; with --write-docs its table "
        "replaces the one in docs/performance/results.json, the systems' figures are kept",
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="measure nothing: rewrite docs/performance.md and the plots from "
        "docs/performance/results.json (e.g. once matplotlib is installed)",
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="write the results into docs/performance.md and docs/performance/",
    )
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = QUICK_SECONDS if args.quick else 5.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.nodes is None:
        args.nodes = [1] if args.quick else [1, 3]
    if args.async_levels is None:
        args.async_levels = list(QUICK_ASYNC_LEVELS if args.quick else ASYNC_LEVELS)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.systems or any(s not in SYSTEMS for s in args.systems):
        parser.error(f"--systems: choose among {', '.join(SYSTEMS)}")
    if args.async_driver_only and args.no_async_driver:
        parser.error("--async-driver-only and --no-async-driver exclude each other")
    if args.seconds <= 0 or args.rounds < 1 or args.processes < 1:
        parser.error("--seconds, --rounds and --processes must be positive")
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(workload, clients) pairs, in the order they run on each cluster."""
    pairs: list[tuple[str, int]] = []
    for name in args.workloads:
        counts = args.clients or list(WORKLOADS[name].clients)
        if args.quick and not args.clients:
            counts = [c for c in counts if c in QUICK_CLIENTS] or counts[:1]
        pairs.extend((name, c) for c in counts)
    return pairs


_interrupted: list[int] = []  # the signals received


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    _interrupted.append(signum)
    if len(_interrupted) == 1:  # later ones must not break off the clean-up
        raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace, results: Results) -> None:
    """Every round of every cluster size; ``results`` fills as measurements finish."""
    pairs = [] if args.async_driver_only else plan(args)
    for nodes in args.nodes if pairs else []:
        for round_ in range(args.rounds):
            for system in args.systems:
                if nodes > 1 and system in SINGLE_NODE:
                    continue
                _run_system(args, results, system, nodes, round_, pairs)
            if args.go_client and nodes == 1:
                for workload, clients in pairs:
                    if workload in go_client.WORKLOADS:
                        sample = go_client.run(workload, clients, args.seconds)
                        results.add(nodes, workload, clients, go_client.SYSTEM, sample)
                        _progress(workload, clients, go_client.SYSTEM, sample)
    if not args.no_async_driver:
        for nodes in args.nodes:
            print(f"# {nodes} node(s): dqlitepy.aio against the blocking driver", file=sys.stderr)
            results.driver_async += driver_async.measure(
                nodes, args.async_levels, args.seconds, args.rounds
            )


def _progress(workload: str, clients: int, system: str, sample: Sample) -> None:
    print(
        f"#   {system:<10} {workload:<12} {clients:>3} clients: "
        f"{sample.ops_per_second:9.1f} ops/s, {sum(sample.errors.values())} errors",
        file=sys.stderr,
        flush=True,
    )


def _run_system(
    args: argparse.Namespace,
    results: Results,
    system: str,
    nodes: int,
    round_: int,
    pairs: list[tuple[str, int]],
) -> None:
    """One cluster of ``system``: every (workload, clients) pair it serves."""
    served = ONLY_WORKLOADS.get(system)
    pairs = [(w, c) for w, c in pairs if served is None or w in served]
    if not pairs:
        return
    started = time.monotonic()
    with SYSTEMS[system](nodes) as cluster:
        print(
            f"# {nodes} node(s), round {round_ + 1}/{args.rounds}, {system}: "
            f"up in {time.monotonic() - started:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        for workload, clients in pairs:
            sample = measure(
                cluster,
                workload,
                clients,
                args.seconds,
                database=f"bench_{workload}_{clients}",
                max_processes=args.processes,
                seed=round_,
            )
            results.add(nodes, workload, clients, system, sample)
            _progress(workload, clients, system, sample)


def _machine(load_before: float, elapsed: float) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "elapsed_seconds": round(elapsed),
    }


def _settings(args: argparse.Namespace) -> dict[str, object]:
    return {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "nodes": args.nodes,
        "workloads": args.workloads,
        "clients": args.clients,
        "processes": args.processes,
        "quick": args.quick,
        "go_client": args.go_client,
        "async_levels": None if args.no_async_driver else args.async_levels,
    }


def write_docs(results: Results, meta: dict[str, Any], *, keep_plots: bool = False) -> None:
    """Replace the generated part of docs/performance.md; write the plots and the JSON.

    ``keep_plots``: the systems' figures did not change (``--async-driver-only``), so
    the plots there are still theirs: link them as they are.
    """
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / "results.json").write_text(report.to_json(results, meta))
    plots: list[Path] | str
    if keep_plots:
        plots = [FIGURES / f"{n}.svg" for n in ("throughput", "p99")]
        plots = [p for p in plots if p.exists()]
    else:
        plots = report.plot(results, FIGURES)
    machine = meta["machine"]
    body = [
        START_MARK,
        "",
        f"Measured {machine['date']} with `{meta.get('command', 'python -m benchmarks')}` "
        f"({machine['cpus']} CPUs, Python {machine['python']}, load average "
        f"{machine['load_average_before']} before and {machine['load_average_after']} after, "
        f"{machine['elapsed_seconds']} s in all). Medians over "
        f"{meta['settings']['rounds']} alternated round(s) "
        f"of {meta['settings']['seconds']:g} s per measurement.",
        "",
        report.markdown(results),
    ]
    if isinstance(plots, str):
        print(plots, file=sys.stderr)
    else:
        body += [f"![{p.stem}](performance/{p.name})\n" for p in plots]
    if results.driver_async:
        separate = meta.get("driver_async")
        if separate:  # measured on its own (--async-driver-only), later than the rest
            m = separate["machine"]
            body.append(
                f"The asyncio driver's table was measured {m['date']} with "
                f"`{separate['command']}` (load average {m['load_average_before']} before and "
                f"{m['load_average_after']} after).\n"
            )
        body.append(report.driver_async_markdown(results))
    body.append(END_MARK)
    text = DOC.read_text() if DOC.exists() else f"# Performance\n\n{START_MARK}\n{END_MARK}\n"
    if START_MARK not in text or END_MARK not in text:
        text = text.rstrip("\n") + f"\n\n{START_MARK}\n{END_MARK}\n"
    head, _, rest = text.partition(START_MARK)
    _, _, tail = rest.partition(END_MARK)
    DOC.write_text(head + "\n".join(body) + tail)
    print(f"wrote {DOC.relative_to(REPO)} and {FIGURES.relative_to(REPO)}/", file=sys.stderr)


def _replot() -> int:
    path = FIGURES / "results.json"
    if not path.exists():
        print(f"{path.relative_to(REPO)} does not exist: run with --write-docs", file=sys.stderr)
        return 2
    results, meta = Results.from_json(path.read_text())
    print(report.text_table(results))
    print(report.driver_async_text(results))
    # Without matplotlib the plots there are kept (they are of the same figures).
    write_docs(results, meta, keep_plots=importlib.util.find_spec("matplotlib") is None)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        return _replot()
    missing = missing_programs()
    if missing and "dqlite" in args.systems and not args.async_driver_only:
        print(f"missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.go_client and not go_client.available():
        print(f"missing: {go_client.DQLITE_BENCHMARK} (apt-get install go-dqlite)", file=sys.stderr)
        return 2
    # Ctrl-C and SIGTERM unwind through every context manager, which stop the processes.
    # A terminal's Ctrl-C also reaches the servers, which may stop first: whatever error
    # that causes here counts as the interruption.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    results = Results()
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    interrupted = False
    try:
        run(args, results)
    except BaseException:
        if not _interrupted:
            raise
        interrupted = True
        print("\ninterrupted: every process stopped; results so far:", file=sys.stderr)
    machine = _machine(load_before, time.monotonic() - started)
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    meta: dict[str, Any] = {
        "machine": machine,
        "settings": _settings(args),
        "command": command.strip(),
    }
    if args.async_driver_only and (FIGURES / "results.json").exists():
        # Keep the systems' figures (and their meta); replace the asyncio driver's.
        measured = results.driver_async
        results, meta = Results.from_json((FIGURES / "results.json").read_text())
        results.driver_async = measured
        meta["driver_async"] = {"machine": machine, "command": command.strip()}
    print(report.text_table(results))
    print(report.driver_async_text(results))
    print(
        f"\nmedians over {args.rounds} round(s) of {args.seconds:g} s; load average "
        f"{machine['load_average_before']} before, {machine['load_average_after']} after; "
        f"{machine['cpus']} CPUs"
    )
    if args.write_docs and not interrupted:
        write_docs(results, meta, keep_plots=args.async_driver_only)
    return 130 if interrupted else 0
