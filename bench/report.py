"""The results: the figures, the targets, the table, the JSON and the plot."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.figures import Figure, fmt

# The owner's targets; reported as met or missed, never asserted.
RSS_TARGET_MB = 40.0
CLAIM_GROWTH_TARGET = 1.2


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sections: dict[str, list[str]] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    systems: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def figure(
        self, section: str, key: str, name: str, unit: str, note: str = ""
    ) -> Figure:
        """The figure under `key`, created in `section` on first use."""
        fig = self.figures.get(key)
        if fig is None:
            fig = self.figures[key] = Figure(name, unit, note=note)
            self.sections.setdefault(section, []).append(key)
        return fig

    def median(self, key: str) -> float:
        fig = self.figures.get(key)
        return fig.median if fig and fig.runs else float("nan")


@dataclass
class Target:
    name: str
    goal: str
    value: float
    unit: str
    met: bool | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "goal": self.goal,
            "value": self.value,
            "unit": self.unit,
            "met": self.met,
        }


def _check(value: float, ok: bool) -> bool | None:
    return None if math.isnan(value) else ok


def targets(results: Results) -> list[Target]:
    r = results.median
    idle_x, idle_cpu = r("runner.idle.xacts"), r("runner.idle.cpu")
    found = [
        Target(
            "no-op drain, 1 process",
            ">= 12,000 jobs/s",
            r("runner.drain"),
            "jobs/s",
            _check(r("runner.drain"), r("runner.drain") >= 12_000),
        ),
        Target(
            "rotate_key drain, 1 process",
            ">= 1,000 jobs/s",
            r("drain.rotate_key.p1"),
            "jobs/s",
            _check(r("drain.rotate_key.p1"), r("drain.rotate_key.p1") >= 1_000),
        ),
        Target(
            "pick-up latency p50",
            "< 1.5 ms",
            r("runner.latency.p50"),
            "ms",
            _check(r("runner.latency.p50"), r("runner.latency.p50") < 1.5),
        ),
        Target(
            "pick-up latency p99",
            "< 3 ms",
            r("runner.latency.p99"),
            "ms",
            _check(r("runner.latency.p99"), r("runner.latency.p99") < 3),
        ),
        Target(
            "idle transactions",
            "<= 5 per 20 s",
            idle_x,
            "per 20 s",
            _check(idle_x, idle_x <= 5),
        ),
        Target(
            "idle CPU",
            "< 0.05 s per 20 s",
            idle_cpu,
            "s per 20 s",
            _check(idle_cpu, idle_cpu < 0.05),
        ),
        Target(
            "RSS after the drain",
            f"< {RSS_TARGET_MB:g} MB",
            r("runner.rss"),
            "MB",
            _check(r("runner.rss"), r("runner.rss") < RSS_TARGET_MB),
        ),
    ]
    found.append(_claim_growth(results))
    return found


def _claim_growth(results: Results) -> Target:
    sizes = sorted(
        int(key.rsplit(".", 1)[1])
        for key in results.sections.get("backlog", [])
        if key.startswith("claim.")
    )
    if len(sizes) < 2:
        return Target(
            "claim time, largest vs smallest backlog",
            "within 20%",
            float("nan"),
            "x",
            None,
        )
    small, large = sizes[0], sizes[-1]
    growth = results.median(f"claim.{large}") / results.median(f"claim.{small}")
    name = f"claim time at {large:,} vs {small:,} finished rows"
    return Target(
        name, "within 20%", growth, "x", _check(growth, growth <= CLAIM_GROWTH_TARGET)
    )


def ratios(results: Results) -> list[dict[str, Any]]:
    """Our figures over each peer's, measured in the same run, on the same server."""
    found = []
    metrics = [
        ("drain", "no-op drain, 1 process", "higher is better"),
        ("latency.p50", "pick-up p50", "lower is better"),
        ("latency.p99", "pick-up p99", "lower is better"),
        ("idle.xacts", "idle transactions", "lower is better"),
        ("idle.cpu", "idle CPU", "lower is better"),
        ("rss", "RSS after the drain", "lower is better"),
    ]
    for name, system in results.systems.items():
        if name == "runner":
            continue
        for metric, label, sense in metrics:
            ours, theirs = (
                results.median(f"runner.{metric}"),
                results.median(f"{name}.{metric}"),
            )
            ratio = ours / theirs if theirs else float("nan")
            found.append(
                {
                    "peer": name,
                    "metric": label,
                    "runner": ours,
                    "peer_value": theirs,
                    "ratio": ratio,
                    "sense": sense,
                    "peer_error": system.get("error"),
                }
            )
    return found


# The table


SECTION_TITLES = {
    "drain": "Drain throughput (jobs/s, first to last finish, from the jobs' rows)",
    "enqueue": "Enqueue throughput",
    "latency": "Pick-up latency (enqueue commit to handler start)",
    "idle": "Idle cost (normalised to 20 s)",
    "memory": "Memory",
    "backlog": "Claim time against the backlog (runner's job_claim query)",
    "floor": "The floor: bare SQL on a minimal jobs table, one connection",
    "notify": "Notification overhead (INSERT ... SELECT)",
    "peers": "Peers, same run, same server",
}


def table(results: Results, found: list[Target]) -> str:
    lines: list[str] = []
    width = 58
    header = f"{'':<{width}} {'median':>12} {'min':>12} {'max':>12}"
    for section, keys in results.sections.items():
        lines.append("")
        lines.append(SECTION_TITLES.get(section, section))
        lines.append(header)
        for key in keys:
            fig = results.figures[key]
            label = f"  {fig.name} ({fig.unit})"[:width]
            lines.append(
                f"{label:<{width}} {fmt(fig.median):>12} {fmt(fig.low):>12}"
                f" {fmt(fig.high):>12}"
            )
    found_ratios = ratios(results)
    if found_ratios:
        lines.append("")
        lines.append("Runner / peer (same run, same server)")
        for row in found_ratios:
            if row["peer_error"]:
                continue
            label = f"  {row['metric']} vs {row['peer']}"
            lines.append(
                f"{label:<{width}} {fmt(row['ratio']) + ' x':>12}   ({row['sense']})"
            )
    for name, system in results.systems.items():
        if system.get("error"):
            lines.append(f"  {name}: not measured: {system['error']}")
    lines.append("")
    lines.append("Targets (reported, not asserted)")
    for t in found:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t.met]
        lines.append(
            f"  {t.name:<44} {t.goal:<20} {fmt(t.value, t.unit):>22}  {verdict}"
        )
    if results.notes:
        lines.append("")
        lines.extend(f"Note: {note}" for note in results.notes)
    if results.errors:
        lines.append("")
        lines.extend(f"Error: {error}" for error in results.errors)
    return "\n".join(lines)


def as_json(results: Results, found: list[Target]) -> dict[str, Any]:
    return {
        "meta": results.meta,
        "notes": results.notes,
        "sections": results.sections,
        "figures": {key: fig.as_dict() for key, fig in results.figures.items()},
        "systems": results.systems,
        "ratios": ratios(results),
        "targets": [t.as_dict() for t in found],
        "errors": results.errors,
    }


def write(results: Results, directory: Path, stem: str) -> tuple[Path, Path, str]:
    """Write the JSON, the plot and the table; return the two paths and the table."""
    directory.mkdir(parents=True, exist_ok=True)
    found = targets(results)
    text = table(results, found)
    json_path = directory / f"{stem}.json"
    json_path.write_text(json.dumps(as_json(results, found), indent=2, default=str))
    (directory / f"{stem}.txt").write_text(text + "\n")
    png_path = directory / f"{stem}.png"
    from bench.plot import plot

    plot(results, png_path)
    return json_path, png_path, text
