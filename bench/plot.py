"""The plot: one PNG of the main figures, each bar the median with its min-max range."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import Results


def _bars(ax: Any, results: Results, keys: list[tuple[str, str]], title: str) -> None:
    present = [(key, label) for key, label in keys if results.figures.get(key)]
    present = [(k, lab) for k, lab in present if results.figures[k].runs]
    if not present:
        ax.set_visible(False)
        return
    medians = [results.figures[k].median for k, _ in present]
    lows = [
        m - results.figures[k].low for (k, _), m in zip(present, medians, strict=True)
    ]
    highs = [
        results.figures[k].high - m for (k, _), m in zip(present, medians, strict=True)
    ]
    positions = range(len(present))
    ax.bar(positions, medians, yerr=[lows, highs], capsize=4, color="#4c72b0")
    ax.set_xticks(
        list(positions), [label for _, label in present], rotation=30, ha="right"
    )
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(results.figures[present[0][0]].unit)


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(results.systems)
    fig, axes = plt.subplots(2, 3, figsize=(15, 9))
    _bars(
        axes[0][0],
        results,
        [
            ("runner.drain", "noop, 1 proc"),
            ("drain.noop.p2", "noop, 2 procs"),
            ("drain.noop.p4", "noop, 4 procs"),
            ("drain.rotate_key.p1", "rotate_key, 1 proc"),
        ],
        "Runner drain throughput",
    )
    _bars(
        axes[0][1],
        results,
        [(f"{s}.drain", s) for s in systems],
        "No-op drain, 1 worker process",
    )
    _latency(axes[0][2], results, systems)
    _bars(
        axes[1][0],
        results,
        [
            ("enqueue.cli", "CLI"),
            ("enqueue.api", "Python API"),
            ("enqueue.batch", "enqueue_many"),
        ],
        "Enqueue throughput (log scale)",
    )
    axes[1][0].set_yscale("log")
    _backlog(axes[1][1], results)
    _bars(
        axes[1][2],
        results,
        [
            ("runner.drain", "runner"),
            ("floor.psycopg.one", "psycopg 1/tx"),
            ("floor.pgbench.one", "pgbench 1/tx"),
            ("floor.psycopg.many", "psycopg 100/tx"),
            ("floor.pgbench.many", "pgbench 100/tx"),
        ],
        "Runner vs bare-SQL floor (log scale)",
    )
    axes[1][2].set_yscale("log")
    stamp = results.meta.get("started_at", "")
    fig.suptitle(f"runner benchmark {stamp} ({results.meta.get('mode', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _latency(ax: Any, results: Results, systems: list[str]) -> None:
    stats = ["p50", "p95", "p99", "max"]
    shown = [s for s in systems if results.figures.get(f"{s}.latency.p50")]
    if not shown:
        ax.set_visible(False)
        return
    width = 0.8 / len(shown)
    for i, system in enumerate(shown):
        figs = [results.figures[f"{system}.latency.{s}"] for s in stats]
        medians = [f.median for f in figs]
        errors = [
            [m - f.low for m, f in zip(medians, figs, strict=True)],
            [f.high - m for m, f in zip(medians, figs, strict=True)],
        ]
        ax.bar(
            [x + i * width for x in range(len(stats))],
            medians,
            width,
            yerr=errors,
            capsize=3,
            label=system,
        )
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(stats))], stats)
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title("Pick-up latency (log scale)", fontsize=10)
    ax.legend(fontsize=8)


def _backlog(ax: Any, results: Results) -> None:
    keys = [k for k in results.sections.get("backlog", []) if k.startswith("claim.")]
    if not keys:
        ax.set_visible(False)
        return
    sizes = [int(k.rsplit(".", 1)[1]) for k in keys]
    figs = [results.figures[k] for k in keys]
    medians = [f.median for f in figs]
    ax.errorbar(
        sizes,
        medians,
        yerr=[
            [m - f.low for m, f in zip(medians, figs, strict=True)],
            [f.high - m for m, f in zip(medians, figs, strict=True)],
        ],
        marker="o",
        capsize=4,
    )
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("finished rows in runner.jobs")
    ax.set_ylabel(figs[0].unit)
    ax.set_title("Claim time vs backlog", fontsize=10)
