"""What /healthz and /readyz make of the job loop's reports."""

from __future__ import annotations

from runner.health import Health
from tests.support.processes import wait_until


def test_alive_while_the_loop_keeps_its_promise_to_turn():
    health = Health(grace=0)
    health.turned(3600, "running a job")
    alive, report = health.liveness()
    assert alive
    assert report == {"status": "alive", "doing": "running a job", "late_seconds": 0}


def test_stuck_once_the_promise_and_the_grace_have_run_out():
    health = Health(grace=0)
    health.turned(0, "running a job")
    wait_until(lambda: not health.liveness()[0], message="the loop to be late")
    _, report = health.liveness()
    assert report["status"] == "stuck"
    assert report["doing"] == "running a job"


def test_ready_only_while_connected_listening_or_knowingly_polling():
    health = Health()
    assert health.readiness() == (
        False,
        {
            "status": "not ready",
            "checks": {"database": "down", "listener": "down", "claiming": "up"},
            "down": ["database", "listener"],
        },
    )

    health.connected(polling=False)
    assert health.readiness() == (
        True,
        {
            "status": "ready",
            "checks": {"database": "up", "listener": "up", "claiming": "up"},
        },
    )

    health.connected(polling=True)
    ready, report = health.readiness()
    assert ready
    assert report["checks"]["listener"] == "polling"

    health.disconnected()
    assert health.readiness()[1]["down"] == ["database", "listener"]


def test_a_stopping_runner_is_not_ready():
    health = Health()
    health.connected(polling=False)
    health.stopping()
    ready, report = health.readiness()
    assert not ready
    assert report["down"] == ["claiming"]
