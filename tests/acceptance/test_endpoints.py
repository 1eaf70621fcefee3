"""The HTTP endpoints of a real `runner run`: /metrics, /healthz and /readyz."""

from __future__ import annotations

import socket

from tests.support import db, prometheus, telemetry
from tests.support.cluster import free_port
from tests.support.processes import run_cli, wait_until


def finished(conn, job_ids: list[int]) -> bool:
    states = {db.job_state(conn, job_id) for job_id in job_ids}
    return states <= {"succeeded", "failed"}


def test_the_exposition_passes_promtool_after_jobs_ran(conn, env, start_runner):
    port = free_port()
    start_runner(RUNNER_METRICS_PORT=str(port))
    key_id = db.new_key(conn)
    done = run_cli(env, "enqueue", "rotate_key", "--key-id", str(key_id), "--wait")
    assert done.returncode == 0, done.stderr
    jobs = [
        db.insert_job(conn, "echo", {"n": 1}),
        db.insert_job(conn, "fail", max_attempts=2),
        db.insert_job(conn, "no_such_task"),
        db.insert_job(conn, "sleep", {"seconds": 0}, queue="mail"),
    ]
    later = conn.execute("SELECT now() + interval '1 hour'").fetchone()[0]
    db.insert_job(conn, "echo", queue="mail", run_at=later)
    wait_until(lambda: finished(conn, jobs), message="the jobs")

    text = telemetry.scrape(port)
    checked = prometheus.check_metrics(text)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""
    for sample in (
        'runner_build_info{python="',
        'runner_jobs_total{outcome="succeeded",task="rotate_key"} 1.0',
        'runner_jobs_total{outcome="retried",task="fail"} 1.0',
        'runner_jobs_total{outcome="failed",task="fail"} 1.0',
        'runner_jobs_total{outcome="failed",task="<unknown>"} 1.0',
        'runner_key_rotations_total{outcome="rotated"} 1.0',
        'runner_queue_jobs{queue="mail",state="scheduled"} 1.0',
        'runner_queue_jobs{queue="mail",state="queued"} 0.0',
        'runner_queue_oldest_job_age_seconds{queue="mail"} 0.0',
        "runner_database_up 1.0",
        "runner_listener_connected 1.0",
    ):
        assert sample in text


def test_healthz_and_readyz_of_a_working_runner(conn, start_runner):
    port = free_port()
    start_runner(RUNNER_METRICS_PORT=str(port))

    assert telemetry.get(port, "/readyz") == (
        200,
        {
            "status": "ready",
            "checks": {"database": "up", "listener": "up", "claiming": "up"},
        },
    )
    status, alive = telemetry.get(port, "/healthz")
    assert status == 200
    assert alive["status"] == "alive"
    wait_until(
        lambda: telemetry.get(port, "/healthz")[1]["doing"] == "waiting for jobs",
        message="the runner to wait for jobs",
    )

    # Inside a job whose deadline has not passed, the runner is alive too.
    job_id = db.insert_job(conn, "sleep", {"seconds": 3})
    wait_until(
        lambda: telemetry.get(port, "/healthz")[1]["doing"] == "running a job",
        message="the runner to run the job",
    )
    assert telemetry.get(port, "/healthz")[0] == 200
    wait_until(lambda: db.job_state(conn, job_id) == "succeeded", message="the job")

    assert telemetry.get(port, "/nowhere")[0] == 404


def test_a_port_in_use_is_a_one_line_error(env):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run_cli({**env, "RUNNER_METRICS_PORT": str(port)}, "run")
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot serve metrics on 127.0.0.1:{port}")
    assert len(done.stderr.splitlines()) == 1
