"""What the HTTP endpoints of `runner run` say while its database is down."""

from __future__ import annotations

from typing import Any

from tests.support import telemetry
from tests.support.cluster import free_port
from tests.support.processes import wait_until


def readiness(port: int, status: int) -> Any:
    """The /readyz report once it answers with `status`."""
    answer = telemetry.get(port, "/readyz")
    return answer[1] if answer[0] == status else None


def test_readyz_names_what_is_down_while_the_database_is(cluster, start_runner):
    port = free_port()
    start_runner(RUNNER_METRICS_PORT=str(port))
    assert readiness(port, 200)

    cluster.stop()
    try:
        down = wait_until(lambda: readiness(port, 503), message="readyz to say 503")
        assert down == {
            "status": "not ready",
            "checks": {"database": "down", "listener": "down", "claiming": "up"},
            "down": ["database", "listener"],
        }
        # The scrape still answers, and says the database is down.
        assert telemetry.metric(port, "runner_database_up") == 0
        assert telemetry.metric(port, "runner_queue_jobs") == 0
        # The loop goes on trying to reconnect: the runner is alive.
        wait_until(
            lambda: telemetry.get(port, "/healthz")[1]["doing"] == "reconnecting",
            message="the runner to reconnect",
        )
        status, alive = telemetry.get(port, "/healthz")
        assert (status, alive["status"]) == (200, "alive")
    finally:
        cluster.start()

    wait_until(lambda: readiness(port, 200), message="readyz to say 200 again")
    assert telemetry.metric(port, "runner_database_up") == 1
