"""Results: medians over the alternated rounds, the text table, Markdown and plots.

A :class:`Results` maps ``(nodes, workload, clients, system)`` to the samples of every
round. Each figure printed is the median over the rounds of that round's figure (ops/s,
p50, p99, server CPU per operation); errors are added up over the rounds. The ratio is
dqlitepy / dqlite: above 1 means dqlitepy does more operations per second (or, for p99
and CPU, takes longer / spends more).

Plots need matplotlib (``pip install .[bench]``); without it they are skipped with a
message and everything else still works.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .driver_async import TARGET, Row
from .measure import Sample
from .workloads import WORKLOADS

__all__ = [
    "Figures",
    "Results",
    "driver_async_markdown",
    "driver_async_text",
    "markdown",
    "plot",
    "target_lines",
    "text_table",
    "to_json",
]

Key = tuple[int, str, int, str]  # nodes, workload, clients, system
REFERENCE = "dqlite"  # the ratios are system / REFERENCE


@dataclass(frozen=True)
class Figures:
    """One system's figures for one row, medians over the rounds."""

    ops_per_second: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_op: float
    client_cpu_ms_per_op: float
    errors: Counter[str]
    rounds: int


def _median(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


class Results:
    """Every sample taken, by row and system."""

    def __init__(self) -> None:
        self.samples: dict[Key, list[Sample]] = defaultdict(list)
        self.loaded: dict[Key, Figures] = {}  # figures read back from results.json
        #: The asyncio driver next to the blocking one (benchmarks/driver_async.py).
        self.driver_async: list[Row] = []

    @classmethod
    def from_json(cls, text: str) -> tuple[Results, dict[str, Any]]:
        """The figures and settings :func:`to_json` wrote."""
        data = json.loads(text)
        results = cls()
        for row in data["rows"]:
            key = (row["nodes"], row["workload"], row["clients"], row["system"])
            results.loaded[key] = Figures(
                ops_per_second=row["ops_per_second"],
                p50_ms=row["p50_ms"],
                p99_ms=row["p99_ms"],
                cpu_ms_per_op=row["cpu_ms_per_op"],
                client_cpu_ms_per_op=row["client_cpu_ms_per_op"],
                errors=Counter(row["errors"]),
                rounds=row["rounds"],
            )
        results.driver_async = [Row.from_json(r) for r in data.get("driver_async", [])]
        return results, data["meta"]

    def measured(self) -> set[Key]:
        return set(self.samples) | set(self.loaded)

    def add(self, nodes: int, workload: str, clients: int, system: str, sample: Sample) -> None:
        self.samples[(nodes, workload, clients, system)].append(sample)

    def rows(self) -> list[tuple[int, str, int]]:
        """(nodes, workload, clients) of every row, in the order of WORKLOADS."""
        order = list(WORKLOADS)
        keys = {(n, w, c) for n, w, c, _ in self.measured()}
        return sorted(keys, key=lambda k: (k[0], order.index(k[1]), k[2]))

    def figures(self, nodes: int, workload: str, clients: int, system: str) -> Figures | None:
        loaded = self.loaded.get((nodes, workload, clients, system))
        if loaded is not None:
            return loaded
        samples = self.samples.get((nodes, workload, clients, system))
        if not samples:
            return None
        errors: Counter[str] = Counter()
        for s in samples:
            errors.update(s.errors)
        return Figures(
            ops_per_second=_median(s.ops_per_second for s in samples),
            p50_ms=_median(s.percentile(0.5) * 1e3 for s in samples),
            p99_ms=_median(s.percentile(0.99) * 1e3 for s in samples),
            cpu_ms_per_op=_median(s.cpu_per_op * 1e3 for s in samples),
            client_cpu_ms_per_op=_median(s.client_cpu_per_op * 1e3 for s in samples),
            errors=errors,
            rounds=len(samples),
        )


def _ratio(ours: float | None, theirs: float | None) -> float:
    if ours is None or theirs is None or not theirs or math.isnan(theirs):
        return float("nan")
    return ours / theirs


def _num(value: float, width: int = 0) -> str:
    if math.isnan(value):
        return "-".rjust(width)
    if value >= 100:
        text = f"{value:.0f}"
    elif value >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return text.rjust(width)


def _errors(figures: Figures | None) -> str:
    if figures is None or not figures.errors:
        return ""
    return "; ".join(f"{kind} ×{n}" for kind, n in figures.errors.most_common())


def _systems(results: Results) -> list[str]:
    present = {k[3] for k in results.measured()}
    return [REFERENCE, *sorted(present - {REFERENCE})] if REFERENCE in present else sorted(present)


def _ratios(theirs: Figures | None, ours: Figures | None) -> tuple[float, float, float]:
    """dqlitepy / dqlite for ops/s, p99 and CPU per op (NaN where either is missing)."""
    if theirs is None or ours is None:
        return (float("nan"),) * 3
    return (
        _ratio(ours.ops_per_second, theirs.ops_per_second),
        _ratio(ours.p99_ms, theirs.p99_ms),
        _ratio(ours.cpu_ms_per_op, theirs.cpu_ms_per_op),
    )


def _lines(
    results: Results, nodes: int
) -> Iterator[tuple[str, int, str, Figures, tuple[float, ...]]]:
    """(workload, clients, system, figures, ratios to dqlite) of each line of one table."""
    for n, workload, clients in results.rows():
        if n != nodes:
            continue
        reference = results.figures(n, workload, clients, REFERENCE)
        for system in _systems(results):
            f = results.figures(n, workload, clients, system)
            if f is not None:
                ratios = () if system == REFERENCE else _ratios(reference, f)
                yield workload, clients, system, f, ratios


def _nodes(results: Results) -> list[int]:
    return sorted({n for n, _, _ in results.rows()})


def text_table(results: Results) -> str:
    """The table printed at the end of a run: one block per cluster size.

    "CPU ms/op" is the servers' CPU per successful operation, "client" the client worker
    processes'.
    """
    width = max((len(s) for s in _systems(results)), default=8)
    out: list[str] = []
    for nodes in _nodes(results):
        out.append(
            f"\n{nodes} node{'s' if nodes > 1 else ''}: medians over the rounds; "
            f"ratio = system / {REFERENCE}"
        )
        out.append(
            f"{'workload':<12} {'clients':>7}  {'system':<{width}} {'ops/s':>8} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'CPU ms/op':>9} {'client':>6}   ratio: {'ops/s':>5} {'p99':>5} "
            f"{'CPU/op':>6}"
        )
        errors: list[str] = []
        previous = None
        for workload, clients, system, f, ratios in _lines(results, nodes):
            label = f"{workload:<12} {clients:>7}" if (workload, clients) != previous else " " * 20
            previous = (workload, clients)
            line = (
                f"{label}  {system:<{width}} {_num(f.ops_per_second, 8)} {_num(f.p50_ms, 7)} "
                f"{_num(f.p99_ms, 7)} {_num(f.cpu_ms_per_op, 9)} {_num(f.client_cpu_ms_per_op, 6)}"
            )
            if ratios:
                line += f"   ratio: {_num(ratios[0], 5)} {_num(ratios[1], 5)} {_num(ratios[2], 6)}"
            out.append(line)
            if _errors(f):
                errors.append(f"  {workload}, {clients} clients, {system}: {_errors(f)}")
        if errors:
            out.append("errors (all rounds):")
            out.extend(errors)
    return "\n".join(out)


def markdown(results: Results) -> str:
    """The results as Markdown tables, one per cluster size."""
    out: list[str] = []
    for nodes in _nodes(results):
        out.append(f"#### {nodes} node{'s' if nodes > 1 else ''}\n")
        out.append(
            "| workload | clients | system | ops/s | p50 ms | p99 ms | server CPU ms/op "
            "| client CPU ms/op "
            f"| ops/s ÷ {REFERENCE} | p99 ÷ {REFERENCE} | CPU/op ÷ {REFERENCE} | errors |"
        )
        out.append("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|---|")
        previous = None
        for workload, clients, system, f, ratios in _lines(results, nodes):
            same = (workload, clients) == previous
            previous = (workload, clients)
            cells = [_num(r) for r in ratios] if ratios else ["", "", ""]
            if ratios:
                cells[0] = f"**{cells[0]}**"
            out.append(
                f"| {'' if same else WORKLOADS[workload].title} | {'' if same else clients} "
                f"| {system} "
                f"| {_num(f.ops_per_second)} | {_num(f.p50_ms)} | {_num(f.p99_ms)} "
                f"| {_num(f.cpu_ms_per_op)} | {_num(f.client_cpu_ms_per_op)} "
                f"| {' | '.join(cells)} | {_errors(f) or ''} |"
            )
        out.append("")
    return "\n".join(out)


def to_json(results: Results, meta: dict[str, object]) -> str:
    """The figures of every row (medians) and the run's settings, as JSON."""
    rows = []
    for nodes, workload, clients in results.rows():
        for system in _systems(results):
            f = results.figures(nodes, workload, clients, system)
            if f is None:
                continue
            rows.append(
                {
                    "nodes": nodes,
                    "workload": workload,
                    "clients": clients,
                    "system": system,
                    "ops_per_second": f.ops_per_second,
                    "p50_ms": f.p50_ms,
                    "p99_ms": f.p99_ms,
                    "cpu_ms_per_op": f.cpu_ms_per_op,
                    "client_cpu_ms_per_op": f.client_cpu_ms_per_op,
                    "errors": dict(f.errors),
                    "rounds": f.rounds,
                }
            )
    document = {
        "meta": meta,
        "rows": rows,
        "driver_async": [r.to_json() for r in results.driver_async],
    }
    return json.dumps(document, indent=1, allow_nan=True) + "\n"


def _async_rows(results: Results) -> list[Row]:
    return sorted(results.driver_async, key=lambda r: (r.nodes, r.workload, r.level))


def target_lines(rows: list[Row]) -> list[str]:
    """The issue's target (async at 256 tasks >= sync at 16 threads), per cluster and workload."""
    by = {(r.nodes, r.workload, r.level): r for r in rows}
    threads, tasks = TARGET
    lines = []
    for nodes in sorted({r.nodes for r in rows}):
        for kind in ("read", "write"):
            sync_row, async_row = by.get((nodes, kind, threads)), by.get((nodes, kind, tasks))
            if sync_row is not None and async_row is not None:
                got, target = async_row.async_ops, sync_row.sync_ops
                lines.append(
                    f"{nodes} node{'s' if nodes > 1 else ''}, point {kind}s: async at {tasks} "
                    f"tasks {_num(got)} ops/s, sync at {threads} threads {_num(target)} ops/s "
                    f"(target {'met' if got >= target else 'not met'})"
                )
    return lines


def driver_async_text(results: Results) -> str:
    """The asyncio driver's table, as printed at the end of a run ("" if not measured)."""
    if not results.driver_async:
        return ""
    out = [
        "\ndqlitepy.aio (tasks) and the blocking driver (threads), one connection each; best round",
        f"{'nodes':>5} {'workload':<8} {'level':>5} {'sync ops/s':>10} {'async ops/s':>11} "
        f"{'async/sync':>10}",
    ]
    for r in _async_rows(results):
        out.append(
            f"{r.nodes:>5} {r.workload:<8} {r.level:>5} {_num(r.sync_ops, 10)} "
            f"{_num(r.async_ops, 11)} {_num(_ratio(r.async_ops, r.sync_ops), 10)}"
        )
    out.extend(target_lines(results.driver_async))
    return "\n".join(out)


def driver_async_markdown(results: Results) -> str:
    """The asyncio driver's table in Markdown ("" if not measured)."""
    if not results.driver_async:
        return ""
    out = [
        "#### The asyncio driver\n",
        "Point reads and writes on a dqlitepy cluster: `dqlitepy.aio` with N tasks on one "
        "event loop next to the blocking driver with N threads, one connection each "
        "(`benchmarks/driver_async.py`; the best of the rounds).\n",
        "| nodes | workload | tasks / threads | sync ops/s | async ops/s | async ÷ sync |",
        "|--:|---|--:|--:|--:|--:|",
    ]
    for r in _async_rows(results):
        out.append(
            f"| {r.nodes} | point {r.workload}s | {r.level} | {_num(r.sync_ops)} "
            f"| {_num(r.async_ops)} | {_num(_ratio(r.async_ops, r.sync_ops))} |"
        )
    targets = target_lines(results.driver_async)
    if targets:
        out.append("")
        out.extend(f"- {line}" for line in targets)
    out.append("")
    return "\n".join(out)


_PLOTTED = ("kvwrite", "kvreadwrite", "read")
_STYLE = {
    "dqlite": "tab:blue",
    "dqlitepy": "tab:orange",
    "dqlitepy-standalone": "tab:green",
    "dqlite, Go client": "tab:gray",
    "python-floor": "tab:purple",
}


def plot(results: Results, directory: Path, fmt: str = "svg") -> list[Path] | str:
    """Throughput and p99 against clients, both systems; the files, or why none were made."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install .[bench]): plots skipped"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "dqlitepy-benchmarks"  # stable ids: small diffs
    workloads = [w for w in _PLOTTED if any(k[1] == w for k in results.measured())]
    if not workloads:
        return "no workload with a client sweep was run: plots skipped"
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    metrics: dict[str, tuple[str, Callable[[Figures], float]]] = {
        "throughput": ("successful ops/s", lambda f: f.ops_per_second),
        "p99": ("p99 latency (ms)", lambda f: f.p99_ms),
    }
    for name, (ylabel, value) in metrics.items():
        fig, axes = plt.subplots(
            1, len(workloads), figsize=(4.2 * len(workloads), 3.6), squeeze=False
        )
        for ax, workload in zip(axes[0], workloads, strict=True):
            _plot_one(ax, results, workload, value)
            ax.set_title(WORKLOADS[workload].title, fontsize=9)
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(ylabel)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = directory / f"{name}.{fmt}"
        fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
        plt.close(fig)
        made.append(path)
    return made


def _plot_one(
    ax: object, results: Results, workload: str, value: Callable[[Figures], float]
) -> None:
    for nodes in sorted({k[0] for k in results.measured()}):
        for system in _systems(results):
            points = []
            for n, w, clients in results.rows():
                f = results.figures(n, w, clients, system)
                if n == nodes and w == workload and f is not None:
                    points.append((clients, value(f)))
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(  # type: ignore[attr-defined]
                    xs,
                    ys,
                    marker="o",
                    color=_STYLE[system],
                    linestyle="-" if nodes > 1 else "--",
                    markerfacecolor="none" if nodes == 1 else _STYLE[system],
                    label=f"{system}, {nodes} node{'s' if nodes > 1 else ''}",
                )
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ticks = sorted({c for _, w, c in results.rows() if w == workload})
    ax.set_xscale("log", base=2)  # type: ignore[attr-defined]
    ax.set_xticks(ticks, [str(c) for c in ticks])  # type: ignore[attr-defined]
    ax.xaxis.set_minor_formatter(NullFormatter())  # type: ignore[attr-defined]
    ax.set_yscale("log")  # type: ignore[attr-defined]
    plain = FuncFormatter(lambda y, _: f"{y:g}")
    ax.yaxis.set_major_formatter(plain)  # type: ignore[attr-defined]
    ax.yaxis.set_minor_formatter(NullFormatter())  # type: ignore[attr-defined]
    ax.grid(True, which="both", alpha=0.3)  # type: ignore[attr-defined]
