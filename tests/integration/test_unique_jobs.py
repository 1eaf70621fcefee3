"""Jobs enqueued with a unique key, on a real PostgreSQL: one per key at a time."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

import runner
from runner import admin, store
from tests.support import db
from tests.support.processes import wait_until


def enqueue(database_url: str, key: str, **args: object) -> store.Inserted:
    return runner.enqueue_unique(
        "echo", args, key, database_url=database_url, check=False
    )


def test_a_second_job_with_the_key_is_the_first(conn, database_url):
    first = enqueue(database_url, "report:1", n=1)
    again = enqueue(database_url, "report:1", n=2)
    other = enqueue(database_url, "report:2", n=3)

    assert first.created and not again.created and other.created
    assert again.id == first.id != other.id
    assert db.job(conn, first.id)["args"] == {"n": 1}, "the first job is kept"
    plain = runner.enqueue(
        "echo", database_url=database_url, unique_key="report:1", check=False
    )
    assert plain == first.id
    assert db.job(conn, first.id)["unique_key"] == "report:1"


def test_the_key_is_held_while_queued_or_running_and_freed_when_finished(
    conn, database_url
):
    worker = store.WorkerStore(uuid.uuid4())
    first = enqueue(database_url, "k")
    claimed, _ = worker.claim(conn, ())
    assert claimed is not None and claimed.id == first.id

    assert enqueue(database_url, "k").id == first.id, "running holds the key"
    # Back in the queue after a failed attempt: still the one job of its key.
    assert worker.retry(conn, first.id, "boom", 0) == "queued"
    claimed, _ = worker.claim(conn, ())
    assert claimed is not None
    assert worker.succeed(conn, first.id, None)

    second = enqueue(database_url, "k")
    assert second.created and second.id != first.id
    assert runner.cancel(second.id, database_url)
    assert enqueue(database_url, "k").created


def test_concurrent_inserters_make_one_job(conn, database_url):
    barrier = threading.Barrier(8)
    results: list[store.Inserted] = []

    def insert() -> None:
        barrier.wait()
        results.append(enqueue(database_url, "race"))

    threads = [threading.Thread(target=insert) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(results) == 8
    assert sum(r.created for r in results) == 1
    assert len({r.id for r in results}) == 1
    count = conn.execute(
        "SELECT count(*) FROM runner.jobs WHERE unique_key = 'race'"
    ).fetchone()[0]
    assert count == 1


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_an_insert_waits_for_an_uncommitted_one_with_the_same_key(
    conn, database_url, outcome
):
    holder = psycopg.connect(database_url)
    held = store.insert_unique_job(holder, "echo", {}, "k")
    results: list[store.Inserted] = []

    def racer() -> None:
        with psycopg.connect(database_url, application_name="racer") as other:
            results.append(store.insert_unique_job(other, "echo", {}, "k"))
            other.commit()

    thread = threading.Thread(target=racer)
    thread.start()
    wait_until(lambda: waiting_for_a_lock(conn, "racer"), message="the racer to wait")
    getattr(holder, outcome)()
    holder.close()
    thread.join(30)

    (result,) = results
    if outcome == "commit":
        assert result == store.Inserted(held.id, created=False)
    else:
        assert result.created and result.id != held.id


def waiting_for_a_lock(conn, application_name: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = %s AND wait_event_type = 'Lock'",
        (application_name,),
    ).fetchone()
    return bool(row[0])


def test_a_retry_by_hand_that_would_duplicate_a_key_is_refused(conn, database_url):
    first = enqueue(database_url, "k")
    assert runner.cancel(first.id, database_url)
    second = enqueue(database_url, "k")
    assert second.created

    with pytest.raises(runner.JobStateConflict, match="unique key"):
        admin.retry(conn, first.id)
    assert db.job_state(conn, first.id) == "cancelled"


def test_an_empty_unique_key_is_refused(database_url):
    with pytest.raises(runner.InvalidArguments):
        enqueue(database_url, "")
