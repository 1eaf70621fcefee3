"""Claiming jobs in batches: each job still runs once, one at a time, and jobs
claimed ahead go back to the queue, their attempts not counted, when they cannot
run soon."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

from runner import enqueue_many
from tests.support.processes import wait_until


def states(conn, ids: list[int]) -> Counter[str]:
    rows = conn.execute(
        "SELECT state::text FROM runner.jobs WHERE id = ANY(%s)", (ids,)
    ).fetchall()
    return Counter(state for (state,) in rows)


def runs(path: Path) -> Counter[int]:
    return Counter(int(line) for line in path.read_text().split())


def test_fast_jobs_share_round_trips_and_each_runs_once(
    conn, database_url, start_runner, tmp_path
):
    marks = tmp_path / "marks"
    ids = enqueue_many(
        "note", [{"path": str(marks)}] * 500, database_url=database_url, check=False
    )
    start_runner()
    wait_until(lambda: states(conn, ids) == {"succeeded": 500}, 60, "the jobs")
    assert runs(marks) == Counter(ids)
    # Successes recorded by one statement share its transaction's time.
    (recorded_together,) = conn.execute(
        "SELECT count(*) - count(DISTINCT finished_at) FROM runner.jobs"
        " WHERE id = ANY(%s)",
        (ids,),
    ).fetchone()
    assert recorded_together > 0


def test_sigterm_hands_back_the_jobs_claimed_ahead_uncounted(
    conn, database_url, start_runner, tmp_path
):
    marks = tmp_path / "marks"
    fast = enqueue_many(
        "note", [{"path": str(marks)}] * 300, database_url=database_url, check=False
    )
    slow = enqueue_many(
        "record",
        [{"label": "slow", "sleep": 60}] * 20,
        database_url=database_url,
        check=False,
    )
    runner = start_runner(RUNNER_SHUTDOWN_GRACE="0.5")
    # Claimed ahead, a job is `running` before it starts: the log tells the start.
    wait_until(lambda: "(record) started" in runner.log(), 60, "a slow job to start")
    # A job of a task not seen yet waits for the successes before it to be recorded.
    assert states(conn, fast) == {"succeeded": 300}
    runner.signal(signal.SIGTERM)
    assert runner.stop(timeout=20) == 0
    assert runs(marks) == Counter(fast)
    rows = conn.execute(
        "SELECT state::text, attempts FROM runner.jobs WHERE id = ANY(%s)", (slow,)
    ).fetchall()
    assert set(rows) == {("queued", 0)}
    assert conn.execute("SELECT count(*) FROM test_effects").fetchone() == (0,)


def test_jobs_held_behind_a_slow_one_go_back_and_run_once(
    conn, database_url, start_runner, tmp_path
):
    marks = tmp_path / "marks"
    args = [{"path": str(marks)}] * 200
    ids = enqueue_many("note", args, database_url=database_url, check=False)
    ids += enqueue_many(
        "note",
        [{"path": str(marks), "sleep": 1}],
        database_url=database_url,
        check=False,
    )
    ids += enqueue_many("note", args, database_url=database_url, check=False)
    start_runner()
    wait_until(lambda: states(conn, ids) == {"succeeded": 401}, 60, "the jobs")
    assert runs(marks) == Counter(ids)
    handed_back = conn.execute(
        "SELECT attempts FROM runner.jobs"
        " WHERE id = ANY(%s) AND last_error LIKE 'claimed but not started%%'",
        (ids,),
    ).fetchall()
    assert all(attempts == 1 for (attempts,) in handed_back)


def test_kill_9_mid_batch_loses_no_job(conn, database_url, start_runner, tmp_path):
    marks = tmp_path / "marks"
    fast = enqueue_many(
        "note", [{"path": str(marks)}] * 300, database_url=database_url, check=False
    )
    slow = enqueue_many(
        "record",
        [{"label": "once", "sleep": 1}] * 5,
        database_url=database_url,
        check=False,
    )
    fast += enqueue_many(
        "note", [{"path": str(marks)}] * 300, database_url=database_url, check=False
    )
    first = start_runner()
    wait_until(lambda: states(conn, slow)["running"] > 0, 60, "a slow job to start")
    first.kill()
    start_runner()
    wait_until(lambda: states(conn, fast + slow) == {"succeeded": 605}, 90, "every job")
    # Plain handlers run at least once; transactional ones exactly once.
    assert set(runs(marks)) == set(fast)
    effects = conn.execute(
        "SELECT job_id, count(*) FROM test_effects GROUP BY job_id"
    ).fetchall()
    assert sorted(effects) == [(job_id, 1) for job_id in slow]
