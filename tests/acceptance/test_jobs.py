"""How `runner run` treats jobs from any client: success, failure, retries, timing."""

from __future__ import annotations

import json

from tests.support import db
from tests.support.processes import run_cli, wait_until


def final_state(conn, job_id: int, timeout: float = 30) -> dict:
    wait_until(
        lambda: db.job_state(conn, job_id) in ("succeeded", "failed", "cancelled"),
        timeout,
        f"job {job_id} to finish",
    )
    return db.job(conn, job_id)


def test_a_job_inserted_with_plain_sql_is_picked_up(conn, start_runner):
    start_runner(RUNNER_POLL_INTERVAL="3600")
    # Exactly the statement the README shows.
    row = conn.execute(
        "INSERT INTO runner.jobs (task, args) VALUES ('echo', '{\"n\": 1}')"
        " RETURNING id"
    ).fetchone()
    job = final_state(conn, row[0])
    assert job["state"] == "succeeded"
    assert job["result"] == {"n": 1}
    assert job["attempts"] == 1


def test_a_rolled_back_job_never_runs_and_a_late_commit_runs(
    conn, database_url, start_runner
):
    import psycopg

    start_runner(RUNNER_POLL_INTERVAL="3600")
    with psycopg.connect(database_url) as other:
        rolled_back = db.insert_job(other, "echo", {"x": 1})
        other.rollback()
        late = db.insert_job(other, "echo", {"x": 2})
        # Not yet committed: invisible to the runner.
        assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (0,)
        other.commit()
    assert final_state(conn, late)["state"] == "succeeded"
    assert conn.execute(
        "SELECT count(*) FROM runner.jobs WHERE id = %s", (rolled_back,)
    ).fetchone() == (0,)


def test_many_jobs_in_a_row_all_run_once(conn, start_runner):
    with conn.transaction():
        conn.execute(
            "INSERT INTO runner.jobs (task, args)"
            " SELECT 'record', jsonb_build_object('label', 'n' || g)"
            " FROM generate_series(1, 300) g"
        )
    start_runner()
    wait_until(
        lambda: (
            conn.execute(
                "SELECT count(*) FROM runner.jobs WHERE state = 'succeeded'"
            ).fetchone()
            == (300,)
        ),
        message="300 jobs",
    )
    counts = conn.execute(
        "SELECT count(*), count(DISTINCT job_id) FROM test_effects"
    ).fetchone()
    assert counts == (300, 300)


def test_priority_then_age_decides_the_order(conn, start_runner):
    with conn.transaction():
        low = db.insert_job(conn, "echo", {}, priority=0)
        high = db.insert_job(conn, "echo", {}, priority=10)
        low2 = db.insert_job(conn, "echo", {}, priority=0)
    start_runner()
    for job_id in (low, high, low2):
        final_state(conn, job_id)
    order = conn.execute(
        "SELECT id FROM runner.jobs ORDER BY finished_at, id"
    ).fetchall()
    assert [r[0] for r in order] == [high, low, low2]


def test_a_failing_job_is_retried_with_backoff_then_fails(conn, env, start_runner):
    runner = start_runner()
    done = run_cli(
        env, "enqueue", "fail", "--message", "it broke", "--max-attempts", "3"
    )
    assert done.returncode == 0, done.stderr
    job = final_state(conn, int(done.stdout))
    assert job["state"] == "failed"
    assert job["attempts"] == 3
    assert job["last_error"].startswith("RuntimeError: it broke")
    log = runner.log()
    assert log.count("retrying in") == 2
    assert "failed: RuntimeError: it broke" in log


def test_a_flaky_job_succeeds_on_a_later_attempt(conn, env, start_runner):
    start_runner()
    done = run_cli(env, "enqueue", "flaky", "--succeed-on", "3")
    job = final_state(conn, int(done.stdout))
    assert (job["state"], job["attempts"], job["result"]) == (
        "succeeded",
        3,
        {"attempt": 3},
    )
    assert "attempt 2 fails" in job["last_error"]


def test_permanent_errors_unknown_tasks_and_bad_arguments_fail_at_once(
    conn, start_runner
):
    runner = start_runner()
    unknown = db.insert_job(conn, "no_such_task", {"a": 1})
    bad_names = db.insert_job(conn, "sleep", {"secs": 1})
    bad_types = db.insert_job(conn, "rotate_key", {"key_id": "twelve"})
    permanent = db.insert_job(conn, "fail_permanently")
    after = db.insert_job(conn, "echo", {"still": "running"})
    errors = {
        unknown: "unknown task 'no_such_task'",
        bad_names: "invalid arguments for 'sleep'",
        bad_types: "key_id must be an integer",
        permanent: "cannot ever work",
    }
    for job_id, message in errors.items():
        job = final_state(conn, job_id)
        assert (job["state"], job["attempts"]) == ("failed", 1), job
        assert message in job["last_error"]
    assert final_state(conn, after)["state"] == "succeeded"
    assert runner.proc.poll() is None


def test_a_handler_that_hangs_times_out_and_the_runner_goes_on(conn, start_runner):
    runner = start_runner()
    hung = db.insert_job(conn, "hang", max_attempts=2)
    stuck_query = db.insert_job(conn, "query_forever", max_attempts=1)
    after = db.insert_job(conn, "echo")
    job = final_state(conn, hung)
    assert (job["state"], job["attempts"]) == ("failed", 2)
    assert job["last_error"] == "timed out after 1 s"
    job = final_state(conn, stuck_query)
    assert (job["state"], job["last_error"]) == ("failed", "timed out after 1 s")
    assert final_state(conn, after)["state"] == "succeeded"
    # The cancelled query left nothing running in the database.
    busy = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%%'"
    ).fetchone()
    assert busy == (0,)
    assert runner.proc.poll() is None


def test_delayed_and_scheduled_jobs_wait_for_their_time(conn, env, start_runner):
    start_runner(RUNNER_POLL_INTERVAL="3600")
    done = run_cli(env, "enqueue", "echo", "--delay", "1.5")
    job_id = int(done.stdout)
    job = final_state(conn, job_id)
    assert job["state"] == "succeeded"
    ran_after = conn.execute(
        "SELECT finished_at - created_at FROM runner.jobs WHERE id = %s", (job_id,)
    ).fetchone()[0]
    assert ran_after.total_seconds() >= 1.5

    future = run_cli(env, "enqueue", "echo", "--run-at", "2999-01-01T00:00:00+00:00")
    assert db.job_state(conn, int(future.stdout)) == "queued"


def test_arguments_over_8000_bytes_of_multibyte_text(conn, env, start_runner):
    text = "ключ🔑" * 2000  # about 20,000 bytes in UTF-8
    start_runner()
    done = run_cli(env, "enqueue", "echo", "--args", json.dumps({"text": text}))
    assert done.returncode == 0, done.stderr
    job = final_state(conn, int(done.stdout))
    assert job["state"] == "succeeded"
    assert job["result"] == {"text": text}


def test_a_bulk_insert_sends_one_notification(conn, database_url):
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN runner_jobs")
        conn.execute(
            "INSERT INTO runner.jobs (task)"
            " SELECT 'echo' FROM generate_series(1, 10000)"
        )
        received = list(listener.notifies(timeout=1))
    assert len(received) == 1
    assert received[0].payload == ""
