"""Prometheus's own tools: `promtool check metrics`, and a real Prometheus server.

Both come with Debian's `prometheus` package (`apt-get install prometheus`). The
server listens on a free port of 127.0.0.1, keeps its data in a directory of its
own, and scrapes only the targets it is given.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from tests.support.cluster import free_port
from tests.support.processes import terminate, wait_until


def executable(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        raise RuntimeError(f"{name} is not installed: apt-get install prometheus")
    return path


def check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    """`promtool check metrics` on an exposition; it prints what is wrong, if any."""
    return subprocess.run(
        [executable("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )


class PrometheusServer:
    """One Prometheus process scraping `targets` (host:port) every `interval` s."""

    def __init__(self, targets: list[str], interval: int = 1) -> None:
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="runner-prometheus-"))
        self.config_path = self.base / "prometheus.yml"
        self.log_path = self.base / "prometheus.log"
        self._log: BinaryIO | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # JSON is YAML too.
        config = {
            "global": {
                "scrape_interval": f"{interval}s",
                "scrape_timeout": f"{interval}s",
            },
            "scrape_configs": [
                {"job_name": "runner", "static_configs": [{"targets": targets}]}
            ],
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(self, timeout: float = 60) -> PrometheusServer:
        """Start the server; return once it says it is ready."""
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                executable("prometheus"),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.base / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.base,
        )
        wait_until(self._ready, timeout, f"Prometheus on port {self.port}")
        return self

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise AssertionError(f"prometheus exited early:\n{self.log()}")
        try:
            with urllib.request.urlopen(self._url("/-/ready"), timeout=5) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    def query(self, expression: str) -> dict[str, float]:
        """An instant query's result: each series' labels, as text, to its value."""
        url = self._url(
            "/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        )
        with urllib.request.urlopen(url, timeout=10) as r:
            answer: dict[str, Any] = json.load(r)
        if answer["status"] != "success":
            raise AssertionError(f"query {expression!r} failed: {answer}")
        return {
            json.dumps(series["metric"], sort_keys=True): float(series["value"][1])
            for series in answer["data"]["result"]
        }

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop the server and remove its files."""
        if self._proc is not None:
            terminate(self._proc, 30)
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.base, ignore_errors=True)

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"
