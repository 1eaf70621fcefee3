"""The Grafana dashboard: its queries are valid PromQL on the runner's metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deployment import DASHBOARD, known_series, series_names

# What Grafana puts in place of its variables before it sends a query.
VARIABLES = {"$__rate_interval": "1m", "$queue": ".*", "$task": ".*"}
# Each topic of the dashboard, by the series that shows it.
TOPICS = {
    "throughput by outcome": "runner_jobs_total",
    "job duration": "runner_job_duration_seconds_bucket",
    "pick-up latency": "runner_job_pickup_latency_seconds_bucket",
    "queue depth": "runner_queue_jobs",
    "oldest job age": "runner_queue_oldest_job_age_seconds",
    "listener": "runner_listener_connected",
    "degraded notifications": "runner_notifications_degraded",
    "reconnects": "runner_database_reconnects_total",
    "key rotations": "runner_key_rotations_total",
    "key rotation duration": "runner_key_rotation_duration_seconds_bucket",
}

dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())


def queries() -> list[str]:
    """Every panel's queries, as Grafana would send them."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"unknown variable in {target['expr']}"
            found.append(expr)
    return found


def test_every_query_uses_only_the_runners_metrics():
    for expr in queries():
        assert series_names(expr) <= known_series(), expr


def test_the_variables_list_values_of_the_runners_metrics():
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(
                r"label_values\((\w+), (\w+)\)", variable["definition"]
            )
            assert match, variable["definition"]
            assert match[1] in known_series()
            assert f"${variable['name']}" in VARIABLES


def test_every_topic_has_a_panel():
    shown = set().union(*map(series_names, queries()))
    missing = {topic for topic, series in TOPICS.items() if series not in shown}
    assert not missing


def test_panels_query_the_chosen_data_source_and_do_not_overlap():
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_prometheus_accepts_every_query(tmp_path: Path):
    """Prometheus's own parser, through promtool, as recording rules."""
    program = shutil.which("promtool")
    if program is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    rules = [
        {"record": f"dashboard:query_{n}", "expr": expr}
        for n, expr in enumerate(queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    done = subprocess.run(
        [program, "check", "rules", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
