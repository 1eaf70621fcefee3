"""Enqueueing, claiming and the sweeps' queries on a real PostgreSQL."""

from __future__ import annotations

import uuid

import psycopg
import pytest

import runner
from runner import store
from runner.jobs import JobState
from tests.support import db


def test_enqueue_inside_the_callers_transaction(conn, database_url):
    with psycopg.connect(database_url) as caller:
        kept = runner.enqueue("noop", {"a": 1}, conn=caller)
        caller.commit()
        dropped = runner.enqueue("noop", {"a": 2}, conn=caller)
        caller.rollback()
    assert db.job_state(conn, kept) == "queued"
    with pytest.raises(AssertionError, match="no job"):
        db.job(conn, dropped)


def test_enqueue_checks_the_task_and_its_arguments(database_url):
    with pytest.raises(runner.UnknownTask):
        runner.enqueue("nope", database_url=database_url)
    with pytest.raises(runner.InvalidArguments):
        runner.enqueue("rotate_key", {"key_id": "x"}, database_url=database_url)
    with pytest.raises(runner.InvalidArguments):
        runner.enqueue("noop", database_url=database_url, max_attempts=0)
    job_id = runner.enqueue("whatever", database_url=database_url, check=False)
    assert runner.get_job(job_id, database_url)["task"] == "whatever"


def test_enqueue_on_an_unreachable_database():
    with pytest.raises(runner.DatabaseUnavailable):
        runner.enqueue("noop", database_url="postgresql://x@127.0.0.1:1/none")


def test_claims_skip_locked_rows_and_count_the_attempt(conn, database_url):
    first, second = (db.insert_job(conn, "echo") for _ in range(2))
    one, two = store.WorkerStore(uuid.uuid4()), store.WorkerStore(uuid.uuid4())
    with psycopg.connect(database_url) as other:
        claimed, _ = one.claim(other, ())
        # Still uncommitted and locked: the second claim skips it.
        assert claimed is not None and claimed.id == first
        also, _ = two.claim(conn, ())
        assert also is not None and also.id == second
        other.commit()
    assert (claimed.attempt, also.attempt) == (1, 1)
    assert two.claim(conn, ())[0] is None
    assert not one.succeed(conn, second, None), "a job held by another runner"
    assert two.succeed(conn, second, {"ok": True})


def test_claims_respect_queues_and_run_at(conn):
    worker = store.WorkerStore(uuid.uuid4())
    db.insert_job(conn, "echo", queue="mail")
    later = conn.execute(
        "INSERT INTO runner.jobs (task, run_at) VALUES ('echo', now() + interval '1 h')"
        " RETURNING id"
    ).fetchone()[0]
    assert worker.claim(conn, ("reports",))[0] is None
    job, _ = worker.claim(conn, ("mail",))
    assert job is not None and job.queue == "mail"
    nothing, due_in = worker.claim(conn, ())
    assert nothing is None
    assert 3590 < due_in <= 3600
    assert db.job_state(conn, later) == "queued"


def test_the_rescuer_leaves_live_runners_alone(conn):
    alive, dead = store.WorkerStore(uuid.uuid4()), store.WorkerStore(uuid.uuid4())
    alive.heartbeat(conn)
    jobs = {w: db.insert_job(conn, "echo") for w in (alive, dead)}
    for worker in (alive, dead):
        worker.claim(conn, ())
    conn.execute("UPDATE runner.jobs SET claimed_at = now() - interval '1 hour'")

    rescued = store.rescue_stalled(conn, threshold=60)
    assert [r[0] for r in rescued] == [jobs[dead]]
    assert db.job_state(conn, jobs[alive]) == "running"
    job = db.job(conn, jobs[dead])
    assert (job["state"], job["attempts"]) == ("queued", 1)
    # The dead runner's late success is refused: it no longer holds the claim.
    assert not dead.succeed(conn, jobs[dead], None)


def test_pruning_deletes_old_finished_jobs_in_batches(conn):
    conn.execute(
        "INSERT INTO runner.jobs (task, state, finished_at)"
        " SELECT 'echo', 'succeeded', now() - interval '30 days'"
        " FROM generate_series(1, 25)"
    )
    fresh = conn.execute(
        "INSERT INTO runner.jobs (task, state, finished_at)"
        " VALUES ('echo', 'failed', now()) RETURNING id"
    ).fetchone()[0]
    queued = db.insert_job(conn, "echo")
    for expected in (10, 10, 5, 0):
        deleted = store.prune_batch(conn, 86400, 10, state=JobState.SUCCEEDED)
        assert deleted == expected
    assert store.prune_batch(conn, 0, 10, state=JobState.CANCELLED) == 0
    assert db.job_state(conn, fresh) == "failed"
    assert db.job_state(conn, queued) == "queued"


def test_cancel_withdraws_only_a_job_that_has_not_started(conn, database_url):
    queued = db.insert_job(conn, "echo")
    assert runner.cancel(queued, database_url)
    assert db.job_state(conn, queued) == "cancelled"
    assert not runner.cancel(queued, database_url)
    with pytest.raises(runner.JobNotFound):
        runner.cancel(999999, database_url)


def test_enqueue_a_handler_object_and_check_json_arguments(database_url):
    from tests.support.tasks import sleep

    job_id = runner.enqueue(sleep, {"seconds": 0.1}, database_url=database_url)
    assert runner.get_job(job_id, database_url)["task"] == "sleep"
    with pytest.raises(runner.InvalidArguments, match="seconds"):
        runner.enqueue(sleep, {"seconds": "x"}, database_url=database_url)
    for bad in ({"x": object()}, {"x": float("nan")}, {"x": "a\x00b"}):
        with pytest.raises(runner.InvalidArguments, match="JSON"):
            runner.enqueue("noop", bad, database_url=database_url)


def test_migrate_leaves_an_up_to_date_schema_alone(conn, database_url):
    # A runner's claim holds a lock on the jobs table; migrating must not wait.
    with psycopg.connect(database_url) as busy:
        busy.execute("LOCK TABLE runner.jobs IN ROW EXCLUSIVE MODE")
        with psycopg.connect(database_url, autocommit=True) as other:
            other.execute("SET lock_timeout = '2s'")
            assert store.migrate(other) == store.SCHEMA_VERSION


def test_enqueue_many_inserts_in_order_with_one_notification(conn, database_url):
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN runner_jobs")
        ids = runner.enqueue_many(
            "echo",
            [{"n": n} for n in range(7)],
            database_url=database_url,
            priority=3,
            check=False,
        )
        assert len(list(listener.notifies(timeout=0.5))) == 1
    rows = conn.execute(
        "SELECT id, args, priority FROM runner.jobs ORDER BY id"
    ).fetchall()
    assert rows == [(job_id, {"n": n}, 3) for n, job_id in enumerate(ids)]


def test_enqueue_many_inserts_nothing_when_one_element_is_bad(conn, database_url):
    with pytest.raises(runner.InvalidArguments):
        runner.enqueue_many(
            "echo", [{"n": 1}, ["not", "an", "object"]], database_url=database_url
        )
    assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (0,)


def test_enqueue_many_joins_the_callers_transaction(conn, database_url):
    with psycopg.connect(database_url) as producer:
        ids = runner.enqueue_many("echo", [{}] * 3, conn=producer, check=False)
        producer.rollback()
    assert len(ids) == 3
    assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (0,)


def test_a_claim_records_successes_and_takes_a_batch_in_order(conn):
    worker = store.WorkerStore(uuid.uuid4())
    low = db.insert_job(conn, "echo", priority=0)
    high = [db.insert_job(conn, "echo", priority=5) for _ in range(3)]
    claim = worker.exchange(conn, (), limit=3)
    assert [job.id for job in claim.jobs] == high
    other = store.WorkerStore(uuid.uuid4())
    taken = other.exchange(conn, (), limit=10)
    assert [job.id for job in taken.jobs] == [low]
    # Of the successes passed, only those this runner still holds are recorded.
    done = [(high[0], {"ok": 1}), (high[1], None), (low, {"stolen": True})]
    claim = worker.exchange(conn, (), limit=0, done=done)
    assert claim.recorded == {high[0], high[1]}
    assert claim.jobs == [] and claim.due_in is None
    assert db.job(conn, high[0])["result"] == {"ok": 1}
    assert db.job_state(conn, low) == "running"
