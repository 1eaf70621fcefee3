"""Stopping and killing `runner run` in the middle of a job."""

from __future__ import annotations

import signal

from tests.support import db
from tests.support.processes import wait_until


def running(conn, job_id: int) -> bool:
    return db.job_state(conn, job_id) == "running"


def test_sigterm_lets_the_current_job_finish_then_exits_0(conn, start_runner):
    runner = start_runner()
    job_id = db.insert_job(conn, "sleep", {"seconds": 1.5})
    wait_until(lambda: running(conn, job_id), message="the job to start")
    later = db.insert_job(conn, "echo")
    runner.signal(signal.SIGTERM)
    assert runner.stop() == 0
    job = db.job(conn, job_id)
    assert (job["state"], job["attempts"]) == ("succeeded", 1)
    # It stopped claiming at once: the job queued after the signal is still waiting.
    assert db.job_state(conn, later) == "queued"
    assert "stopping after the current job" in runner.log()
    assert conn.execute("SELECT count(*) FROM runner.workers").fetchone() == (0,)


def test_sigint_stops_an_idle_runner(start_runner):
    runner = start_runner()
    runner.signal(signal.SIGINT)
    assert runner.stop() == 0
    assert "SIGINT received: stopping" in runner.log()


def test_a_job_past_the_grace_period_goes_back_to_the_queue(conn, start_runner):
    runner = start_runner(RUNNER_SHUTDOWN_GRACE="0.5")
    job_id = db.insert_job(conn, "record", {"label": "slow", "sleep": 60})
    wait_until(lambda: running(conn, job_id), message="the job to start")
    runner.signal(signal.SIGTERM)
    assert runner.stop(timeout=20) == 0
    job = db.job(conn, job_id)
    # Put back without counting the interrupted attempt; its writes rolled back.
    assert (job["state"], job["attempts"]) == ("queued", 0)
    assert "interrupted" in job["last_error"]
    assert conn.execute("SELECT count(*) FROM test_effects").fetchone() == (0,)


def test_a_second_sigterm_interrupts_the_job_at_once(conn, start_runner):
    runner = start_runner(RUNNER_SHUTDOWN_GRACE="600")
    job_id = db.insert_job(conn, "sleep", {"seconds": 600})
    wait_until(lambda: running(conn, job_id), message="the job to start")
    runner.signal(signal.SIGTERM)
    wait_until(lambda: "stopping after the current job" in runner.log())
    runner.signal(signal.SIGTERM)
    assert runner.stop(timeout=20) == 0
    assert db.job_state(conn, job_id) == "queued"


def test_kill_9_mid_job_then_restart_completes_it_exactly_once(conn, start_runner):
    first = start_runner()
    job_id = db.insert_job(conn, "record", {"label": "once", "sleep": 2})
    wait_until(lambda: running(conn, job_id), message="the job to start")
    first.kill()

    # A new process, same host and environment, takes the job over once the dead
    # runner's heartbeat is older than the stall threshold.
    second = start_runner()
    wait_until(lambda: db.job_state(conn, job_id) == "succeeded", 60, "the rescued job")
    job = db.job(conn, job_id)
    assert job["attempts"] == 2
    assert "runner died during execution (attempt 1 of 5" in job["last_error"]
    assert conn.execute(
        "SELECT count(*) FROM test_effects WHERE job_id = %s", (job_id,)
    ).fetchone() == (1,)
    assert (
        f"job {job_id} (record) lost attempt 1: its runner went silent" in second.log()
    )


def test_a_dead_runner_on_its_last_attempt_fails_the_job(conn, start_runner):
    first = start_runner()
    job_id = db.insert_job(conn, "sleep", {"seconds": 60}, max_attempts=1)
    wait_until(lambda: running(conn, job_id), message="the job to start")
    first.kill()
    start_runner()
    wait_until(lambda: db.job_state(conn, job_id) == "failed", 60, "the job to fail")
    assert "runner died during execution" in db.job(conn, job_id)["last_error"]
