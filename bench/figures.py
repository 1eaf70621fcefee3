"""Figures: the median of repeated runs, with their minimum and maximum."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Figure:
    """One measured quantity: every run's value, summarised by median, min and max."""

    name: str
    unit: str
    runs: list[float] = field(default_factory=list)
    note: str = ""

    def add(self, value: float) -> None:
        self.runs.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    @property
    def low(self) -> float:
        return min(self.runs) if self.runs else float("nan")

    @property
    def high(self) -> float:
        return max(self.runs) if self.runs else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "runs": self.runs,
            "note": self.note,
        }


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def rate(count: int, seconds: float) -> float:
    """Jobs per second; NaN when the interval is empty."""
    return count / seconds if seconds > 0 else float("nan")


def fmt(value: float, unit: str = "") -> str:
    """A figure for the table: three significant digits at most, thousands grouped."""
    if value != value:  # NaN
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()
