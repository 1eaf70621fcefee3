"""Runners that die, and jobs that outlive or lose their claim."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg
import pytest

from tests.support import backends, db, key_writes, telemetry
from tests.support.cluster import free_port
from tests.support.fault_tasks import FAULT_TASKS
from tests.support.processes import RunnerProcess, wait_until

STALL_THRESHOLD = 2
# Seconds to wait for a dead runner's job to be put back: many times the stall
# threshold plus a sweep interval of the fast settings (3 s and 0.5 s), for a slow
# machine.
RESCUE_DEADLINE = 30


def running(conn, job_id: int) -> bool:
    return db.job_state(conn, job_id) == "running"


def test_kill_9_mid_rotation_then_restart_rotates_the_key_exactly_once(
    conn, database_url, start_runner
):
    key_writes.track(conn)
    key_id = db.new_key(conn)
    first = start_runner()
    with (
        psycopg.connect(database_url) as key_holder,
        psycopg.connect(database_url) as job_holder,
    ):
        # Hold the key, then the job's row, so that the rotation makes its writes
        # and then waits to record its success: the moment to kill it.
        key_holder.execute(
            "SELECT FROM control_plane.api_keys WHERE id = %s FOR UPDATE", (key_id,)
        )
        job_id = db.insert_job(conn, "rotate_key", {"key_id": key_id})
        wait_until(
            lambda: backends.waits_for_lock(conn, "control_plane.api_keys"),
            message="the rotation to wait for the key",
        )
        job_holder.execute(
            "SELECT FROM runner.jobs WHERE id = %s FOR UPDATE", (job_id,)
        )
        key_holder.rollback()
        wait_until(
            lambda: backends.waits_for_lock(conn, "UPDATE runner.jobs"),
            message="the rotation to wait to record its success",
        )
        first.kill()
        job_holder.rollback()
    assert key_writes.rotations(conn, key_id) == (0, 0)

    # The same environment again: the rescuer puts the job back once the dead
    # runner's heartbeat is older than the stall threshold.
    second = start_runner()
    wait_until(
        lambda: db.job_state(conn, job_id) == "succeeded", RESCUE_DEADLINE, "rotation"
    )
    job = db.job(conn, job_id)
    assert job["attempts"] == 2
    assert "runner died during execution (attempt 1 of 5" in job["last_error"]
    wait_until(
        lambda: f"job {job_id} (rotate_key) lost attempt" in second.log(),
        message="the rescue to be logged",
    )
    assert key_writes.rotations(conn, key_id) == (1, 1)
    (successor,) = db.successors(conn, key_id)
    result = job["result"]
    assert (result["outcome"], result["new_key_id"]) == ("rotated", successor["id"])
    old_key = db.api_key(conn, key_id)
    assert old_key["expires_at"].isoformat() == result["old_key_expires_at"]


def test_a_runner_killed_mid_sweep_does_not_hold_up_the_rescuer(
    conn, database_url, start_runner
):
    # A long-gone runner's row, locked by the test: the rescuer's pass, which
    # forgets such runners, waits for it after it has claimed the sweep's slot.
    ghost = uuid.uuid4()
    conn.execute(
        "INSERT INTO runner.workers (id, hostname, pid, last_seen_at)"
        " VALUES (%s, 'gone', 1, now() - interval '1 hour')",
        (ghost,),
    )
    with psycopg.connect(database_url) as ghost_holder:
        ghost_holder.execute(
            "SELECT FROM runner.workers WHERE id = %s FOR UPDATE", (ghost,)
        )
        first = start_runner()
        job_id = db.insert_job(conn, "sleep", {"seconds": 600})
        wait_until(lambda: running(conn, job_id), message="the job to start")
        wait_until(
            lambda: backends.waits_for_lock(
                conn, "DELETE FROM runner.workers", backends.SCHEDULER
            ),
            message="a rescuer pass to wait",
        )
        first.kill()
        ghost_holder.rollback()

    # The dead runner's job is put back as after any other death.
    start_runner()
    wait_until(
        lambda: db.job(conn, job_id)["attempts"] == 2,
        RESCUE_DEADLINE,
        "the job to be put back and run again",
    )
    job = db.job(conn, job_id)
    assert "runner died during execution (attempt 1 of 5" in job["last_error"]


def rescue_after_threshold(conn, job_id: int) -> str | None:
    """Whether a rescuer sweep succeeded while the job ran with a claim older than
    the stall threshold: "swept" if so, "ended" if the job stopped running first."""
    row = conn.execute(
        "SELECT j.state = 'running',"
        "       s.last_succeeded_at > j.claimed_at + make_interval(secs => %s)"
        " FROM runner.jobs AS j LEFT JOIN runner.sweeps AS s ON s.name = 'rescuer'"
        " WHERE j.id = %s",
        (STALL_THRESHOLD + 1, job_id),
    ).fetchone()
    assert row is not None
    still_running, swept = row
    if not still_running:
        return "ended"
    return "swept" if swept else None


def test_heartbeats_keep_a_job_longer_than_the_stall_threshold(conn, start_runner):
    settings = {"RUNNER_STALL_THRESHOLD": str(STALL_THRESHOLD)}
    first = start_runner(**settings)
    job_id = db.insert_job(conn, "sleep", {"seconds": 3 * STALL_THRESHOLD})
    wait_until(lambda: running(conn, job_id), message="the job to start")
    second = start_runner(**settings)

    swept = wait_until(
        lambda: rescue_after_threshold(conn, job_id),
        message="a rescuer sweep after the threshold",
    )
    assert swept == "swept", "the job ended before a rescuer sweep could take it"
    wait_until(lambda: db.job_state(conn, job_id) == "succeeded", 30, "the job")
    job = db.job(conn, job_id)
    assert (job["attempts"], job["last_error"]) == (1, None)
    assert job["result"] == {"pid": first.pid}
    assert f"job {job_id} " not in second.log()


def test_an_attempt_whose_claim_was_taken_cannot_commit(conn, start_runner):
    port = free_port()
    runner = start_runner(RUNNER_LOG_FORMAT="json", RUNNER_METRICS_PORT=str(port))
    job_id = db.insert_job(conn, "record", {"label": "taken", "sleep": 3})
    wait_until(
        lambda: backends.in_transaction_after(conn, "INSERT INTO test_effects"),
        message="the job to write",
    )

    # Take the job away, as a rescuer would, and keep it out of reach for now.
    conn.execute(
        "UPDATE runner.jobs SET state = 'queued', claimed_by = NULL,"
        " claimed_at = NULL, run_at = now() + interval '1 hour' WHERE id = %s",
        (job_id,),
    )
    wait_until(
        lambda: telemetry.job_events(runner.log(), "job_claim_lost", job_id),
        message="the attempt to end",
    )
    assert "outcome was not recorded" in runner.log()
    assert key_writes.effects(conn, job_id) == 0
    job = db.job(conn, job_id)
    assert (job["state"], job["attempts"]) == ("queued", 1)
    lost = {"task": "record", "outcome": "lost"}
    wait_until(lambda: telemetry.metric(port, "runner_jobs_total", **lost))
    assert telemetry.metric(port, "runner_jobs_total", **lost) == 1

    # Once due again, the job runs once more, and its effect is there once.
    conn.execute(
        "UPDATE runner.jobs SET run_at = now(), args = args || '{\"sleep\": 0}'"
        " WHERE id = %s",
        (job_id,),
    )
    wait_until(lambda: db.job_state(conn, job_id) == "succeeded", 30, "the job")
    assert db.job(conn, job_id)["attempts"] == 2
    assert key_writes.effects(conn, job_id) == 1


def supervise(
    start: Callable[[], RunnerProcess], done: Callable[[], bool], restarts: int
) -> list[RunnerProcess]:
    """Start a runner, and another whenever the last one exits, until `done()`.

    Returns every runner started, the last one still running.
    """
    runners = [start()]
    while True:
        wait_until(
            lambda current=runners[-1]: done() or current.proc.poll() is not None,
            RESCUE_DEADLINE,
            "the runner to exit or the work to be done",
        )
        if runners[-1].proc.poll() is None:
            return runners
        assert len(runners) <= restarts, f"{len(runners)} runners exited"
        runners.append(start())


@pytest.mark.slow
def test_a_job_that_kills_its_runner_fails_after_its_attempts(conn, start_runner):
    key_writes.track(conn)
    keys = [db.new_key(conn) for _ in range(2)]
    poison = db.insert_job(conn, "crash", max_attempts=3)
    others = [db.insert_job(conn, "rotate_key", {"key_id": key}) for key in keys]
    others.append(db.insert_job(conn, "echo", {"beside": "poison"}))
    ports: list[int] = []

    def start() -> RunnerProcess:
        ports.append(free_port())
        return start_runner(
            ready=False, RUNNER_IMPORT=FAULT_TASKS, RUNNER_METRICS_PORT=str(ports[-1])
        )

    runners = supervise(start, lambda: db.job_state(conn, poison) == "failed", 6)

    # One runner per attempt died; the one that failed the job carries on.
    assert [r.proc.returncode for r in runners] == [1, 1, 1, None]
    job = db.job(conn, poison)
    assert job["attempts"] == 3
    assert "runner died during execution (attempt 3 of 3" in job["last_error"]
    wait_until(
        lambda: all(db.job_state(conn, j) == "succeeded" for j in others),
        30,
        "the other jobs",
    )
    assert [key_writes.rotations(conn, key) for key in keys] == [(1, 1), (1, 1)]
    last = runners[-1]
    later = db.insert_job(conn, "echo", {"after": "poison"})
    wait_until(lambda: db.job_state(conn, later) == "succeeded", 30, "a later job")
    assert last.proc.poll() is None
    port, failed = ports[-1], {"task": "crash", "outcome": "failed"}
    wait_until(
        lambda: telemetry.metric(port, "runner_jobs_total", **failed),
        message="the failure to be counted",
    )
    assert telemetry.metric(port, "runner_jobs_total", **failed) == 1
    assert telemetry.metric(port, "runner_jobs_rescued_total", task="crash") == 1
