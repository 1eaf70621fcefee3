"""What a running `runner run` tells the world: its metrics and its JSON log lines."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

_RECONNECT_DELAY = re.compile(r"reconnecting in ([0-9.]+) s")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`; 0 if none."""
    total = 0.0
    for family in text_string_to_metric_families(scrape(port)):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def events(log: str, action: str | None = None) -> list[dict[str, Any]]:
    """The JSON lines of a runner's log (RUNNER_LOG_FORMAT=json), or those of one
    action; other lines, such as a traceback, are skipped."""
    found = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        if action is None or entry.get("action") == action:
            found.append(entry)
    return found


def job_events(log: str, action: str, job_id: int) -> list[dict[str, Any]]:
    return [e for e in events(log, action) if e.get("job_id") == job_id]


def reconnect_delays(log: str) -> list[float]:
    """The waits, in seconds, that the runner announced after losing the database."""
    delays = []
    for entry in events(log, "database_unavailable"):
        match = _RECONNECT_DELAY.search(entry["message"])
        assert match, f"no delay in {entry['message']!r}"
        delays.append(float(match.group(1)))
    return delays


def get(port: int, path: str) -> tuple[int, Any]:
    """GET an endpoint of a runner: the status, and the body (parsed when JSON)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            status, body, kind = (
                r.status,
                r.read().decode(),
                r.headers.get_content_type(),
            )
    except urllib.error.HTTPError as exc:
        status, body, kind = (
            exc.code,
            exc.read().decode(),
            exc.headers.get_content_type(),
        )
    return int(status), (json.loads(body) if kind == "application/json" else body)
