"""The deployment files as data: Procfile, Dockerfile, .dockerignore, compose.yaml,
the Prometheus configuration and the metric names that queries may use."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import dockerfile
import promql_parser
import yaml
from prometheus_client import REGISTRY

import runner.metrics  # noqa: F401  (registers the runner's metrics)

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "runner.json"

# Metrics that the runner is about to expose (queue gauges, database state, build
# info, pick-up latency); the rules and the dashboard already use them.
ANNOUNCED_METRICS = {
    "runner_queue_jobs": "gauge",
    "runner_queue_oldest_job_age_seconds": "gauge",
    "runner_database_up": "gauge",
    "runner_build_info": "gauge",
    "runner_job_pickup_latency_seconds": "histogram",
}
# Series that Prometheus itself records for every target.
PROMETHEUS_SERIES = {"up"}
_SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}


def known_series() -> set[str]:
    """Every series name that the runner exposes, or soon will, and `up`."""
    families = {
        metric.name: metric.type
        for metric in REGISTRY.collect()
        if metric.name.startswith("runner_")
    }
    names = set(PROMETHEUS_SERIES)
    for name, kind in {**families, **ANNOUNCED_METRICS}.items():
        names.update(name + suffix for suffix in _SUFFIXES.get(kind, [""]))
    return names


def series_names(expr: str) -> set[str]:
    """The metric names that a PromQL expression selects."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name or _name_matcher(node))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def _name_matcher(selector: Any) -> str:
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__":
            return str(matcher.value)
    raise AssertionError(f"a selector without a metric name: {selector}")


def procfile() -> dict[str, list[str]]:
    """Process type: command, as words."""
    processes = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = shlex.split(command)
    return processes


@dataclass
class Stage:
    """One stage of the Dockerfile."""

    image: str
    name: str | None
    instructions: list[dockerfile.Command] = field(default_factory=list)

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [i for i in self.instructions if i.cmd == cmd]

    def last(self, cmd: str) -> dockerfile.Command:
        found = self.all(cmd)
        assert found, f"no {cmd} in the stage {self.name or self.image}"
        return found[-1]

    def env(self) -> dict[str, str]:
        pairs: dict[str, str] = {}
        for instruction in self.all("ENV"):
            values = instruction.value
            pairs.update(zip(values[::2], values[1::2], strict=True))
        return pairs


def dockerfile_stages() -> list[Stage]:
    stages: list[Stage] = []
    for instruction in dockerfile.parse_file(str(REPO / "Dockerfile")):
        if instruction.cmd == "FROM":
            image, *alias = instruction.value
            stages.append(Stage(image, alias[-1] if alias else None))
        elif stages:
            stages[-1].instructions.append(instruction)
    return stages


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return loaded


def prometheus_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    return loaded


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and line[0] != "#"]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression on a relative path."""
    out = ""
    rest = pattern.strip("/")
    while rest:
        if rest.startswith("**/"):
            out, rest = out + "(.*/)?", rest[3:]
        elif rest.startswith("**"):
            out, rest = out + ".*", rest[2:]
        elif rest[0] == "*":
            out, rest = out + "[^/]*", rest[1:]
        elif rest[0] == "?":
            out, rest = out + "[^/]", rest[1:]
        elif rest[0] == "[":
            end = rest.index("]")
            out, rest = out + rest[: end + 1], rest[end + 1 :]
        else:
            out, rest = out + re.escape(rest[0]), rest[1:]
    return re.compile(out)


def build_context(patterns: list[str]) -> list[PurePosixPath]:
    """The files of the repository that `docker build .` would send."""
    rules = [(p.startswith("!"), p.lstrip("!")) for p in patterns]
    kept = []
    for folder, subfolders, files in os.walk(REPO):
        here = PurePosixPath(Path(folder).relative_to(REPO).as_posix())
        # Skip folders that are left out and that no later rule brings back.
        subfolders[:] = [
            name
            for name in subfolders
            if not excluded(here / name, patterns)
            or any(keep and _may_keep_inside(p, here / name) for keep, p in rules)
        ]
        kept.extend(
            here / name for name in files if not excluded(here / name, patterns)
        )
    return sorted(kept)


def excluded(path: PurePosixPath, patterns: list[str]) -> bool:
    """Whether .dockerignore `patterns` leave `path` out of the build context.

    As Docker decides: the last pattern that matches the path or one of its parent
    folders wins, and a pattern starting with ! keeps what it matches.
    """
    candidates = [str(path), *(str(p) for p in path.parents if str(p) != ".")]
    result = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            result = not keep
    return result


def _may_keep_inside(pattern: str, folder: PurePosixPath) -> bool:
    return pattern.startswith("**") or pattern.strip("/").startswith(f"{folder}/")
