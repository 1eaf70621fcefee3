"""A real Prometheus server scrapes a real `runner run` and sees a key rotation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import db
from tests.support.cluster import free_port
from tests.support.processes import run_cli, wait_until
from tests.support.prometheus import PrometheusServer

ROTATED = 'runner_key_rotations_total{outcome="rotated"}'


@pytest.fixture
def runner_port() -> int:
    return free_port()


@pytest.fixture
def prometheus(runner_port: int) -> Iterator[PrometheusServer]:
    # Started before the runner: Prometheus takes a few seconds to first scrape.
    server = PrometheusServer([f"127.0.0.1:{runner_port}"], interval=1).start()
    yield server
    # pytest shows this only for a failed test.
    print(f"Prometheus log:\n{server.log()}")
    server.stop()


def values(prometheus: PrometheusServer, expression: str) -> list[float]:
    return list(prometheus.query(expression).values())


def test_prometheus_sees_a_rotation_enqueued_with_the_cli(
    conn, env, prometheus, runner_port, start_runner
):
    start_runner(RUNNER_METRICS_PORT=str(runner_port))
    key_id = db.new_key(conn)
    wait_until(
        lambda: values(prometheus, 'up{job="runner"}') == [1.0],
        60,
        "Prometheus to scrape the runner",
    )
    assert values(prometheus, "runner_database_up") == [1.0]
    assert values(prometheus, ROTATED) == []

    done = run_cli(env, "enqueue", "rotate_key", "--key-id", str(key_id), "--wait")
    assert done.returncode == 0, done.stderr

    wait_until(
        lambda: values(prometheus, ROTATED) == [1.0],
        60,
        "the rotation in Prometheus",
    )
    (series,) = prometheus.query(ROTATED)
    assert '"instance": "127.0.0.1:' in series
    assert values(prometheus, 'runner_build_info{version="0.1.0"}') == [1.0]
