"""The operator's queries (runner.admin) and the error history, on a real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from runner import admin, queries, store
from runner.config import Settings
from runner.errors import ConfigurationError, JobNotFound, JobStateConflict
from runner.jobs import JobState
from runner.scheduler import MaintenanceScheduler
from runner.sealing import Recipient, seal
from tests.support import db


def claim(worker: store.WorkerStore, conn) -> int:
    job, _ = worker.claim(conn, ())
    assert job is not None, "nothing to claim"
    return job.id


def finished(conn, task: str, state: str, ago: str = "0", **columns) -> int:
    """A job that finished `ago` (an interval, as text) before now."""
    job_id = db.insert_job(conn, task, **columns)
    conn.execute(
        "UPDATE runner.jobs SET state = %s::runner.job_state,"
        " finished_at = now() - %s::interval, updated_at = now() - %s::interval"
        " WHERE id = %s",
        (state, ago, ago, job_id),
    )
    return job_id


def test_every_query_that_records_an_error_adds_to_the_history(conn):
    worker = store.WorkerStore(uuid.uuid4())
    job_id = db.insert_job(conn, "echo", max_attempts=3)

    claim(worker, conn)
    assert worker.retry(conn, job_id, "first", 0) == "queued"
    claim(worker, conn)
    assert [j.state for j in worker.requeue_lost(conn, "lost")] == ["queued"]
    claim(worker, conn)
    assert [j.attempts for j in worker.release(conn, "stopping")] == [2]
    claim(worker, conn)
    assert worker.fail(conn, job_id, "last")

    job = db.job(conn, job_id)
    assert (job["state"], job["attempts"], job["last_error"]) == ("failed", 3, "last")
    history = [(e["attempt"], e["error"], e["runner"]) for e in job["errors"]]
    me = str(worker.worker_id)
    assert history == [
        (1, "first", me),
        (2, "lost", me),
        (3, "stopping", me),
        (3, "last", me),
    ]
    times = [datetime.fromisoformat(e["at"]) for e in job["errors"]]
    assert times == sorted(times)


def test_the_rescuer_records_the_dead_runner_in_the_history(conn):
    dead = store.WorkerStore(uuid.uuid4())
    job_id = db.insert_job(conn, "echo")
    claim(dead, conn)
    conn.execute("UPDATE runner.jobs SET claimed_at = now() - interval '1 hour'")
    assert [j.id for j in store.rescue_stalled(conn, threshold=60)] == [job_id]
    (entry,) = db.job(conn, job_id)["errors"]
    assert entry["attempt"] == 1
    assert entry["runner"] == str(dead.worker_id)
    assert entry["error"].startswith("runner died during execution (attempt 1 of 5")


def test_the_history_keeps_the_newest_50_entries(conn):
    worker = store.WorkerStore(uuid.uuid4())
    job_id = db.insert_job(conn, "echo", max_attempts=100)
    for n in range(1, 61):
        claim(worker, conn)
        assert worker.retry(conn, job_id, f"error {n}", 0) == "queued"
    errors = db.job(conn, job_id)["errors"]
    assert len(errors) == 50
    assert (errors[0]["error"], errors[-1]["error"]) == ("error 11", "error 60")


def test_retry_by_hand_gives_fresh_attempts_and_keeps_the_history(conn):
    worker = store.WorkerStore(uuid.uuid4())
    job_id = db.insert_job(conn, "echo", max_attempts=1)
    claim(worker, conn)
    worker.fail(conn, job_id, "broken")

    assert admin.retry(conn, job_id) == 1
    job = db.job(conn, job_id)
    assert (job["state"], job["attempts"], job["finished_at"]) == ("queued", 0, None)
    assert [e["error"] for e in job["errors"]] == ["broken", admin.RETRIED_NOTE]
    assert job["errors"][1]["runner"] is None
    # It runs again, and a new failure joins the history.
    claim(worker, conn)
    worker.fail(conn, job_id, "broken again")
    assert len(db.job(conn, job_id)["errors"]) == 3


def test_retry_by_hand_takes_only_failed_or_cancelled_jobs(conn):
    cancelled = db.insert_job(conn, "echo")
    store.cancel_job(conn, cancelled)
    admin.retry(conn, cancelled)
    assert db.job(conn, cancelled)["cancel_requested_at"] is None

    queued, succeeded = db.insert_job(conn, "echo"), finished(conn, "echo", "succeeded")
    for job_id, state in ((queued, "queued"), (succeeded, "succeeded")):
        with pytest.raises(JobStateConflict, match=f"is {state}: only a failed"):
            admin.retry(conn, job_id)
    with pytest.raises(JobNotFound):
        admin.retry(conn, 999999)


def test_cancel_a_queued_job_at_once(conn):
    job_id = db.insert_job(conn, "echo")
    done = admin.cancel(conn, job_id)
    assert (done.state, done.runner) == ("cancelled", None)
    job = db.job(conn, job_id)
    assert job["state"] == "cancelled"
    assert job["finished_at"] == job["cancel_requested_at"] == done.requested_at
    with pytest.raises(JobStateConflict, match="already cancelled"):
        admin.cancel(conn, job_id)
    with pytest.raises(JobNotFound):
        admin.cancel(conn, 999999)


def test_cancel_a_running_job_reaches_its_runner_only(conn):
    holder, other = store.WorkerStore(uuid.uuid4()), store.WorkerStore(uuid.uuid4())
    job_id = db.insert_job(conn, "echo")
    claim(holder, conn)
    assert holder.heartbeat(conn) == []

    done = admin.cancel(conn, job_id)
    assert (done.state, done.runner) == ("running", holder.worker_id)
    assert admin.cancel(conn, job_id).requested_at == done.requested_at
    assert holder.heartbeat(conn) == [job_id]
    assert other.heartbeat(conn) == []

    assert holder.cancel_running(conn, job_id, "stopped")
    job = db.job(conn, job_id)
    assert (job["state"], job["last_error"]) == ("cancelled", "stopped")
    assert job["finished_at"] is not None
    assert holder.heartbeat(conn) == []


def test_a_job_asked_to_cancel_never_goes_back_to_the_queue(conn):
    worker = store.WorkerStore(uuid.uuid4())

    def running_with_cancel_requested() -> int:
        job_id = db.insert_job(conn, "echo")
        claim(worker, conn)
        admin.cancel(conn, job_id)
        return job_id

    job_id = running_with_cancel_requested()
    assert worker.retry(conn, job_id, "failed meanwhile", 0) == "cancelled"
    for move in (worker.release, worker.requeue_lost):
        job_id = running_with_cancel_requested()
        assert [j.state for j in move(conn, "cut off")] == ["cancelled"]
    job_id = running_with_cancel_requested()
    conn.execute("UPDATE runner.jobs SET claimed_at = now() - interval '1 hour'")
    assert [j.state for j in store.rescue_stalled(conn, 60)] == ["cancelled"]

    states = conn.execute("SELECT DISTINCT state::text FROM runner.jobs").fetchall()
    assert states == [("cancelled",)]
    assert conn.execute(
        "SELECT count(*) FROM runner.jobs WHERE finished_at IS NULL"
    ).fetchone() == (0,)


def test_list_filters_and_orders_newest_first(conn):
    old_failure = finished(conn, "fail", "failed", "3 days", queue="mail")
    success = finished(conn, "echo", "succeeded", "2 hours")
    failure = finished(conn, "fail", "failed", "5 minutes")
    queued = db.insert_job(conn, "echo", queue="mail")
    running = db.insert_job(conn, "sleep")
    conn.execute(
        "UPDATE runner.jobs SET state = 'running', claimed_by = gen_random_uuid(),"
        " claimed_at = now() WHERE id = %s",
        (running,),
    )

    def ids(**which) -> list[int]:
        return [row["id"] for row in admin.list_jobs(conn, admin.JobFilter(**which))]

    everything = [running, queued, failure, success, old_failure]
    assert ids() == everything
    assert ids(limit=2) == everything[:2]
    assert ids(states=(JobState.FAILED,)) == [failure, old_failure]
    assert ids(states=(JobState.QUEUED, JobState.RUNNING)) == [running, queued]
    assert ids(task="fail") == [failure, old_failure]
    assert ids(queue="mail") == [queued, old_failure]
    assert ids(task="fail", queue="mail") == [old_failure]
    assert ids(task="nope") == []
    hour = admin.Since(ago=timedelta(hours=1))
    assert ids(since=hour) == [running, queued, failure]
    day = admin.Since(at=datetime.now(UTC) - timedelta(days=1))
    assert ids(since=day, states=(JobState.SUCCEEDED, JobState.FAILED)) == [
        failure,
        success,
    ]
    (row,) = admin.list_jobs(conn, admin.JobFilter(states=(JobState.QUEUED,)))
    assert (row["task"], row["queue"], row["state"], row["max_attempts"]) == (
        "echo",
        "mail",
        "queued",
        5,
    )


def test_detail_withholds_secrets_at_any_depth(conn):
    recipient = Recipient()
    job_id = db.insert_job(
        conn, "echo", {"user": "ann", "password": "hunter2", "nested": {"token": "t"}}
    )
    sealed = seal(recipient.public, "rk_plaintext")
    conn.execute(
        "UPDATE runner.jobs SET result = %s WHERE id = %s",
        (
            Jsonb({"outcome": "rotated", "sealed_secret": sealed, "list": [sealed]}),
            job_id,
        ),
    )
    job = admin.job_detail(conn, job_id)
    assert job["args"] == {
        "user": "ann",
        "password": admin.WITHHELD,
        "nested": {"token": admin.WITHHELD},
    }
    assert job["result"] == {
        "outcome": "rotated",
        "sealed_secret": admin.WITHHELD,
        "list": [admin.WITHHELD],
    }
    # In jsonb's order of keys.
    assert sorted(job["withheld"]) == [
        "args.nested.token",
        "args.password",
        "result.list[0]",
        "result.sealed_secret",
    ]
    # Withheld from what is shown only: the requester can still open the secret.
    assert "sealed_secret" in db.job(conn, job_id)["result"]
    with pytest.raises(JobNotFound):
        admin.job_detail(conn, 999999)


def test_stats_count_unfinished_jobs_and_recently_finished_ones(conn):
    db.insert_job(conn, "echo")
    db.insert_job(conn, "echo", run_at=datetime.now(UTC) + timedelta(hours=1))
    db.insert_job(conn, "sleep")
    finished(conn, "echo", "succeeded", "10 minutes")
    finished(conn, "fail", "failed", "20 minutes")
    finished(conn, "fail", "failed", "2 days")

    counts = admin.stats(conn, admin.Since(ago=timedelta(hours=1)))
    assert counts.by_state == {
        "queued": 3,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert counts.by_task["echo"]["queued"] == 2
    assert counts.by_task["fail"]["failed"] == 1
    assert counts.runnable == 2
    assert counts.oldest_runnable_age is not None and counts.oldest_runnable_age >= 0
    assert counts.now - counts.since == timedelta(hours=1)
    week = admin.stats(conn, admin.Since(ago=timedelta(days=7)))
    assert week.by_state["failed"] == 2


def test_operator_queries_read_indexes_not_the_whole_table(conn):
    # A table of many finished jobs, spread over a week, and a few others.
    conn.execute(
        "INSERT INTO runner.jobs (task, state, attempts, finished_at, updated_at)"
        " SELECT 'echo', CASE WHEN g % 100 = 0 THEN 'failed' ELSE 'succeeded'"
        " END::runner.job_state, 1, now() - make_interval(secs => g * 20),"
        " now() - make_interval(secs => g * 20)"
        " FROM generate_series(1, 30000) g"
    )
    conn.execute(
        "INSERT INTO runner.jobs (task) SELECT 'echo' FROM generate_series(1, 5)"
    )
    conn.execute("ANALYZE runner.jobs")
    hour = admin.Since(ago=timedelta(hours=1)).params()
    every = [s.value for s in JobState]
    list_params = {"task": None, "queue": None, "limit": 50}
    cases = {
        "job_list": [
            {**list_params, "states": every, "since_at": None, "since_ago": None},
            {**list_params, "states": ["failed"], "since_at": None, "since_ago": None},
            {**list_params, "states": ["queued"], "since_at": None, "since_ago": None},
            {**list_params, "states": every, **hour},
        ],
        "job_count": [hour],
        "job_oldest_runnable": [{}],
        "job_detail": [{"id": 1}],
    }
    for name, all_params in cases.items():
        for params in all_params:
            text = plan(conn, queries.query(name, filename="admin.sql"), params)
            assert "Seq Scan on jobs" not in text, text
    # The pruner picks its batch from the index (a table this small may then be
    # joined by a scan; a large one by its primary key).
    for state in ("succeeded", "failed"):
        prune = {"state": state, "retention": 86400, "batch": 1000}
        text = plan(conn, queries.query("job_prune"), prune)
        assert "Index Scan using jobs_finished_state_idx" in text, text


def plan(conn, query: str, params: dict) -> str:
    return "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, params))


def test_the_pruner_keeps_failed_and_cancelled_jobs_longer(conn, database_url):
    ids = {
        (state, ago): finished(conn, "echo", state, ago)
        for state in ("succeeded", "failed", "cancelled")
        for ago in ("2 days", "40 days")
    }
    queued = db.insert_job(conn, "echo")
    settings = Settings(
        database_url=database_url, retention=86400, failed_retention=30 * 86400
    )
    pruner = MaintenanceScheduler(settings, store.WorkerStore(uuid.uuid4()), str)
    pruner.prune(conn)
    left = {row[0] for row in conn.execute("SELECT id FROM runner.jobs")}
    assert left == {queued, ids["failed", "2 days"], ids["cancelled", "2 days"]}


def test_operator_commands_need_the_current_schema(conn, database_url):
    with admin.connect(database_url):
        pass
    conn.execute("UPDATE runner.schema_version SET version = 1")
    with pytest.raises(
        ConfigurationError, match=r"schema version 1 .* run `runner migrate`"
    ):
        admin.connect(database_url)


def test_migrating_a_version_1_database_keeps_its_jobs(conn):
    # Take the database back to version 1, as the last release left it.
    conn.execute(
        "ALTER TABLE runner.jobs DROP COLUMN errors, DROP COLUMN cancel_requested_at,"
        " DROP COLUMN unique_key;"
        " DROP FUNCTION runner.job_errors_append;"
        " DROP INDEX runner.jobs_finished_state_idx;"
        " CREATE INDEX jobs_finished_idx ON runner.jobs (finished_at)"
        "  WHERE finished_at IS NOT NULL;"
        " UPDATE runner.schema_version SET version = 1"
    )
    job_id = db.insert_job(conn, "echo", {"kept": True}, last_error="old error")

    assert store.migrate(conn) == store.SCHEMA_VERSION
    job = db.job(conn, job_id)
    assert (job["args"], job["last_error"], job["errors"]) == (
        {"kept": True},
        "old error",
        [],
    )
    indexes = {
        row[0]
        for row in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'jobs'"
        )
    }
    assert "jobs_finished_state_idx" in indexes
    assert "jobs_unique_key_idx" in indexes
    assert "jobs_finished_idx" not in indexes
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE runner.jobs SET errors = '{}' WHERE id = %s", (job_id,))
