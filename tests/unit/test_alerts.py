"""The Prometheus configuration of compose.yaml and its alert rules, checked and
unit-tested by promtool (Debian package prometheus)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deployment import (
    PROMETHEUS,
    REPO,
    compose,
    known_series,
    prometheus_config,
    series_names,
)

RULE_TESTS = Path(__file__).parent / "prometheus" / "alerts_test.yml"


def promtool(*args: str | Path) -> None:
    program = shutil.which("promtool")
    if program is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    done = subprocess.run(
        [program, *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def mounted_config() -> Path:
    """The file that the compose service's Prometheus reads as its configuration."""
    service = compose()["services"]["prometheus"]
    [flag] = [a for a in service["command"] if a.startswith("--config.file=")]
    inside = Path(flag.partition("=")[2])
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if inside.is_relative_to(target) and source.startswith("."):
            return REPO / source / inside.relative_to(target)
    raise AssertionError(f"{inside} is not mounted from the repository")


def test_the_composed_prometheus_config_is_valid():
    assert mounted_config() == PROMETHEUS / "prometheus.yml"
    promtool("check", "config", mounted_config())


def test_the_rules_pass_their_unit_tests():
    promtool("test", "rules", RULE_TESTS)


def test_every_alert_is_tested_firing_and_quiet():
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert {rule["alert"]: {True, False} for rule in rules()} == cases


def test_every_alert_explains_itself():
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]


def test_the_rules_use_only_the_runners_metrics_and_scrape_job():
    [job] = prometheus_config()["scrape_configs"]
    for rule in rules():
        assert series_names(rule["expr"]) <= known_series(), rule["alert"]
        if "job=" in rule["expr"]:
            assert f'job="{job["job_name"]}"' in rule["expr"], rule["alert"]
