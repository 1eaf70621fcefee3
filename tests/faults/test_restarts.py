"""The runner across restarts: of its database connections, of PostgreSQL, and of
the runner itself when a platform stops it with SIGTERM or SIGINT."""

from __future__ import annotations

import math
import signal
import subprocess
import time

import psycopg
import pytest

from tests.support import backends, db, key_writes, telemetry
from tests.support.cluster import free_port
from tests.support.processes import wait_until

RECONNECTS = "runner_database_reconnects_total"
FAILURES = "runner_database_connection_failures_total"
# Platforms send SIGKILL this many seconds after SIGTERM.
PLATFORM_KILL_AFTER = 30
EVERY_BACKEND = (backends.LISTENER, backends.WORKER, backends.SCHEDULER)


def all_succeeded(conn, job_ids: list[int]) -> bool:
    return all(db.job_state(conn, job_id) == "succeeded" for job_id in job_ids)


def maintained_since(conn, since) -> bool:
    """Whether a heartbeat and a rescuer sweep both succeeded after `since`."""
    row = conn.execute(
        "SELECT (SELECT max(last_seen_at) FROM runner.workers) > %(since)s"
        " AND (SELECT last_succeeded_at FROM runner.sweeps WHERE name = 'rescuer')"
        "     > %(since)s",
        {"since": since},
    ).fetchone()
    return bool(row and row[0])


def in_record_handler(conn) -> bool:
    """Whether the `record` task has made its write and now sleeps."""
    return backends.in_transaction_after(conn, "INSERT INTO test_effects")


# Connection losses


@pytest.mark.parametrize(
    "names",
    [
        pytest.param((backends.LISTENER,), id="listener"),
        pytest.param(EVERY_BACKEND, id="all"),
    ],
)
def test_lost_connections_are_reopened_and_waiting_work_is_found(
    conn, start_runner, names
):
    key_writes.track(conn)
    keys = [db.new_key(conn) for _ in range(5)]
    port = free_port()
    # Polling so rare that only the scan after reconnecting, or a notification to a
    # listener that listens again, can find the jobs below.
    runner = start_runner(
        RUNNER_POLL_INTERVAL="600",
        RUNNER_LOG_FORMAT="json",
        RUNNER_METRICS_PORT=str(port),
    )
    wait_until(
        lambda: set(names) <= backends.by_name(conn).keys(),
        message="the runner's connections",
    )
    old_listeners = backends.by_name(conn)[backends.LISTENER]
    reconnects = telemetry.metric(port, RECONNECTS)

    (cut_at,) = conn.execute("SELECT now()").fetchone()
    assert backends.terminate(conn, names) == set(names)
    lost = wait_until(
        lambda: telemetry.events(runner.log(), "database_unavailable"),
        message="the runner to notice",
    )
    # The jobs arrive while the runner waits to reconnect (half a second at first),
    # so their notifications reach no one.
    jobs = [db.insert_job(conn, "rotate_key", {"key_id": key}) for key in keys]

    wait_until(lambda: all_succeeded(conn, jobs), 30, "the five rotations")
    assert [key_writes.rotations(conn, key) for key in keys] == [(1, 1)] * 5
    assert "reconnecting in 0.5 s" in lost[0]["message"]
    assert len(telemetry.events(runner.log(), "worker_listening")) == 2
    assert telemetry.metric(port, RECONNECTS) > reconnects

    # The new listening connection listens again: a job inserted now is found
    # through its notification alone.
    new_listeners = backends.by_name(conn).get(backends.LISTENER, set())
    assert new_listeners and not new_listeners & old_listeners
    assert backends.last_statement(conn, backends.LISTENER).startswith("LISTEN")
    later = db.insert_job(conn, "echo", {"after": "reconnecting"})
    wait_until(lambda: all_succeeded(conn, [later]), 30, "a job after reconnecting")
    # The heartbeat and the sweeps carry on too.
    wait_until(
        lambda: maintained_since(conn, cut_at), message="a heartbeat and a sweep"
    )
    assert runner.proc.poll() is None


def test_connections_cut_mid_job_cost_one_attempt_and_no_effect(conn, start_runner):
    runner = start_runner(RUNNER_LOG_FORMAT="json")
    wait_until(
        lambda: set(EVERY_BACKEND) <= backends.by_name(conn).keys(),
        message="the runner's connections",
    )
    job_id = db.insert_job(conn, "record", {"label": "cut", "sleep": 2})
    wait_until(lambda: in_record_handler(conn), message="the job to write")

    assert backends.terminate(conn, EVERY_BACKEND) == set(EVERY_BACKEND)
    wait_until(lambda: all_succeeded(conn, [job_id]), 30, "the job")
    job = db.job(conn, job_id)
    assert job["attempts"] == 2
    assert "lost its database connection" in job["last_error"]
    assert key_writes.effects(conn, job_id) == 1
    assert telemetry.job_events(runner.log(), "job_requeued", job_id)
    assert runner.proc.poll() is None


# PostgreSQL restarts and outages


@pytest.mark.slow
def test_the_runner_survives_a_postgres_restart(
    conn, database_url, cluster, start_runner
):
    key_writes.track(conn)
    keys = [db.new_key(conn) for _ in range(3)]
    port = free_port()
    runner = start_runner(RUNNER_LOG_FORMAT="json", RUNNER_METRICS_PORT=str(port))
    interrupted = db.insert_job(conn, "record", {"label": "interrupted", "sleep": 5})
    wait_until(lambda: in_record_handler(conn), message="the job to write")
    queued = [db.insert_job(conn, "rotate_key", {"key_id": key}) for key in keys]
    queued.append(db.insert_job(conn, "record", {"label": "queued"}))

    cluster.stop()
    # Down for about ten seconds: long enough for several failed reconnections.
    wait_until(
        lambda: len(telemetry.events(runner.log(), "database_unavailable")) >= 5,
        90,
        "failed reconnections",
    )
    cluster.start()

    with psycopg.connect(database_url, autocommit=True) as after:
        wait_until(
            lambda: all_succeeded(after, [interrupted, *queued]), 90, "every job"
        )
        job = db.job(after, interrupted)
        # The cut attempt counts. A rescuer that saw the runner silent while the
        # database was down may put the job back before the runner itself does.
        assert job["attempts"] == 2
        assert (
            "lost its database connection" in job["last_error"]
            or "runner died during execution (attempt 1 of 5" in job["last_error"]
        ), job["last_error"]
        assert key_writes.effects(after, interrupted) == 1
        assert key_writes.effects(after, queued[-1]) == 1
        assert [key_writes.rotations(after, key) for key in keys] == [(1, 1)] * 3
    assert runner.proc.poll() is None
    assert telemetry.metric(port, RECONNECTS) >= 1


@pytest.mark.slow
def test_the_runner_waits_out_a_database_that_stays_down(cluster, start_runner):
    port = free_port()
    runner = start_runner(RUNNER_LOG_FORMAT="json", RUNNER_METRICS_PORT=str(port))
    failures = telemetry.metric(port, FAILURES)
    stopped_at = time.monotonic()
    cluster.stop()
    try:
        wait_until(
            lambda: 16 in telemetry.reconnect_delays(runner.log()),
            90,
            "the wait between reconnections to reach 16 s",
        )
        window = time.monotonic() - stopped_at
        assert runner.proc.poll() is None
        delays = telemetry.reconnect_delays(runner.log())
        assert delays == [0.5, 1, 2, 4, 8, 16]
        # Waits that double allow only a logarithmic number of attempts in any
        # window; a loop without them would log hundreds.
        assert len(delays) <= 2 + math.log2(1 + window / delays[0])
        assert telemetry.metric(port, FAILURES) >= failures + len(delays)
        assert telemetry.metric(port, "runner_listener_connected") == 0

        # A platform may stop the runner before the database is back.
        runner.signal(signal.SIGTERM)
        assert runner.proc.wait(PLATFORM_KILL_AFTER) == 0
    finally:
        cluster.start()


# Stopped by the platform


@pytest.mark.slow
def test_sigterm_with_the_default_grace_exits_before_a_platform_kills_it(
    conn, start_runner
):
    # An empty value leaves the option at its default.
    runner = start_runner(RUNNER_SHUTDOWN_GRACE="")
    job_id = db.insert_job(conn, "record", {"label": "long", "sleep": 600})
    wait_until(lambda: in_record_handler(conn), message="the job to write")

    runner.signal(signal.SIGTERM)
    try:
        status = runner.proc.wait(PLATFORM_KILL_AFTER)
    except subprocess.TimeoutExpired:
        runner.kill()
        pytest.fail(f"still running {PLATFORM_KILL_AFTER} s after SIGTERM")
    assert status == 0
    assert "stopping after the current job (at most 25 s)" in runner.log()
    job = db.job(conn, job_id)
    assert (job["state"], job["attempts"]) == ("queued", 0)
    assert "interrupted" in job["last_error"]
    assert key_writes.effects(conn, job_id) == 0


def test_sigterm_interrupts_a_rotation_waiting_in_the_database(
    conn, database_url, start_runner
):
    key_writes.track(conn)
    key_id = db.new_key(conn)
    runner = start_runner(RUNNER_SHUTDOWN_GRACE="1")
    with psycopg.connect(database_url) as key_holder:
        # The rotation waits for the key's lock past the grace period.
        key_holder.execute(
            "SELECT FROM control_plane.api_keys WHERE id = %s FOR UPDATE", (key_id,)
        )
        job_id = db.insert_job(conn, "rotate_key", {"key_id": key_id})
        wait_until(
            lambda: backends.waits_for_lock(conn, "control_plane.api_keys"),
            message="the rotation to wait for the key",
        )
        runner.signal(signal.SIGTERM)
        assert runner.proc.wait(PLATFORM_KILL_AFTER) == 0
    job = db.job(conn, job_id)
    assert (job["state"], job["attempts"]) == ("queued", 0)
    assert "interrupted" in job["last_error"]
    assert key_writes.rotations(conn, key_id) == (0, 0)

    start_runner()
    wait_until(lambda: db.job_state(conn, job_id) == "succeeded", 30, "the rotation")
    assert db.job(conn, job_id)["attempts"] == 1
    assert key_writes.rotations(conn, key_id) == (1, 1)


def test_sigint_during_a_job_lets_it_finish_then_exits_0(conn, start_runner):
    runner = start_runner()
    job_id = db.insert_job(conn, "record", {"label": "short", "sleep": 1.5})
    wait_until(lambda: in_record_handler(conn), message="the job to write")

    runner.signal(signal.SIGINT)
    assert runner.proc.wait(PLATFORM_KILL_AFTER) == 0
    assert "SIGINT received: stopping after the current job" in runner.log()
    job = db.job(conn, job_id)
    assert (job["state"], job["attempts"]) == ("succeeded", 1)
    assert key_writes.effects(conn, job_id) == 1


def test_sigint_past_the_grace_puts_the_job_back_uncounted(conn, start_runner):
    runner = start_runner(RUNNER_SHUTDOWN_GRACE="1")
    job_id = db.insert_job(conn, "record", {"label": "long", "sleep": 600})
    wait_until(lambda: in_record_handler(conn), message="the job to write")

    runner.signal(signal.SIGINT)
    assert runner.proc.wait(PLATFORM_KILL_AFTER) == 0
    job = db.job(conn, job_id)
    assert (job["state"], job["attempts"]) == ("queued", 0)
    assert "interrupted" in job["last_error"]
    assert key_writes.effects(conn, job_id) == 0
