"""A storm of inserted jobs: one notification per statement; a runner drains them."""

from __future__ import annotations

import psycopg

from runner.listener import CHANNEL
from tests.support.processes import wait_until

JOBS = 100_000
# Enough to show the runner drains the queue; all of it takes too long for CI.
DRAINED = 3000
# Sent after the insert committed: notifications reach a listener in commit order.
END_MARK = "end of the storm"


def insert_echo_jobs(conn, count: int) -> None:
    conn.execute(
        "INSERT INTO runner.jobs (task, args)"
        " SELECT 'echo', jsonb_build_object('n', n) FROM generate_series(1, %s) AS n",
        (count,),
    )


def notifications_before_the_mark(listener) -> int:
    count = 0
    for notify in listener.notifies(timeout=60):
        if notify.payload == END_MARK:
            return count
        count += 1
    raise AssertionError(f"no end mark within 60 s, after {count} notifications")


def succeeded(conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM runner.jobs WHERE state = 'succeeded'"
    ).fetchone()
    return int(row[0])


def test_a_bulk_insert_notifies_once_and_a_runner_drains_it(
    conn, database_url, start_runner
):
    # Woken only by the notification: a poll would not come for an hour.
    runner = start_runner(RUNNER_POLL_INTERVAL="3600")
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        insert_echo_jobs(conn, JOBS)
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, END_MARK))
        assert notifications_before_the_mark(listener) == 1

    wait_until(
        lambda: succeeded(conn) >= DRAINED,
        timeout=300,
        message=f"{DRAINED} jobs to succeed",
    )
    assert runner.stop() == 0
    states = dict(
        conn.execute(
            "SELECT state::text, count(*) FROM runner.jobs GROUP BY 1"
        ).fetchall()
    )
    assert set(states) == {"succeeded", "queued"}
    assert sum(states.values()) == JOBS
    attempts = conn.execute(
        "SELECT DISTINCT attempts FROM runner.jobs WHERE state = 'succeeded'"
    ).fetchall()
    assert attempts == [(1,)]


def test_separate_inserts_notify_once_each(conn, database_url):
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        for _ in range(3):
            insert_echo_jobs(conn, JOBS // 10)
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, END_MARK))
        assert notifications_before_the_mark(listener) == 3


def test_inserts_notify_per_statement_not_per_row(conn):
    # PostgreSQL folds equal notifications of one transaction, so the count alone
    # cannot tell a trigger that calls pg_notify for each of 100,000 rows.
    row_level_insert_triggers = conn.execute(
        "SELECT tgname FROM pg_trigger"
        " WHERE tgrelid = 'runner.jobs'::regclass AND NOT tgisinternal"
        # tgtype bits: 1 = FOR EACH ROW, 4 = INSERT.
        " AND tgtype & 1 = 1 AND tgtype & 4 = 4"
    ).fetchall()
    assert row_level_insert_triggers == []
