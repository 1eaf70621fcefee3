"""The schema on a real PostgreSQL: idempotent, constrained, and notifying."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from runner import store
from runner.jobs import JobState
from tests.support import db


def test_migrating_again_changes_nothing(conn):
    def catalog() -> list[tuple[object, ...]]:
        return conn.execute(
            "SELECT table_schema, table_name, column_name, data_type"
            " FROM information_schema.columns"
            " WHERE table_schema IN ('runner', 'control_plane') ORDER BY 1, 2, 3"
        ).fetchall()

    job_id = db.insert_job(conn, "echo", {"kept": True})
    before = catalog()
    assert store.migrate(conn) == store.SCHEMA_VERSION
    assert store.migrate(conn) == store.SCHEMA_VERSION
    assert catalog() == before
    assert db.job(conn, job_id)["args"] == {"kept": True}


def test_the_state_type_mirrors_the_python_enum(conn):
    labels = conn.execute(
        "SELECT enum_range(NULL::runner.job_state)::text[]"
    ).fetchone()[0]
    assert labels == [s.value for s in JobState]


def test_constraints_reject_impossible_jobs(conn):
    bad = [
        ("", {}, {}),
        ("t", [1], {}),
        ("t", {}, {"max_attempts": 0}),
        ("t", {}, {"state": "running"}),  # running without a claim
        ("t", {}, {"state": "succeeded"}),  # finished without a finish time
    ]
    for task, args, columns in bad:
        with pytest.raises(psycopg.errors.CheckViolation):
            db.insert_job(conn, task, args, **columns)


def test_requeueing_a_job_notifies_and_finishing_it_does_not(conn, database_url):
    job_id = db.insert_job(conn, "echo")
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN runner_jobs")
        conn.execute(
            "UPDATE runner.jobs SET state = 'running', claimed_by = gen_random_uuid(),"
            " claimed_at = now() WHERE id = %s",
            (job_id,),
        )
        assert list(listener.notifies(timeout=0.3)) == []
        conn.execute(
            "UPDATE runner.jobs SET state = 'queued', claimed_by = NULL,"
            " claimed_at = NULL WHERE id = %s",
            (job_id,),
        )
        assert len(list(listener.notifies(timeout=1))) == 1


def test_the_claim_reads_only_runnable_rows(conn):
    conn.execute(
        "INSERT INTO runner.jobs (task, state, finished_at)"
        " SELECT 'echo', 'succeeded', now() FROM generate_series(1, 20000)"
    )
    conn.execute(
        "INSERT INTO runner.jobs (task) SELECT 'echo' FROM generate_series(1, 10)"
    )
    conn.execute("ANALYZE runner.jobs")
    params = {
        "worker_id": uuid.uuid4(),
        "any_queue": True,
        "queues": [],
        "done_id": None,
        "result": None,
    }
    plan = "\n".join(
        r[0]
        for r in conn.execute(
            "EXPLAIN " + store.queries.query("job_claim"), params
        ).fetchall()
    )
    assert "jobs_claim_idx" in plan, plan
