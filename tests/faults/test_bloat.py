"""A table swollen with finished jobs, and a long transaction that keeps them visible.

A REPEATABLE READ transaction that has read runner.jobs pins its snapshot: nothing
deleted or updated after it began can be vacuumed away, so every claim and every
pruned batch leaves dead rows behind for as long as it stays open.
"""

from __future__ import annotations

import json
import signal
from datetime import datetime, timedelta
from itertools import combinations
from typing import Any, NamedTuple

import psycopg
import pytest

from runner.queries import query
from tests.support import db, observers
from tests.support.processes import wait_until

pytestmark = pytest.mark.slow

SUCCEEDED = 1_000_000
FAILED = 50_000
QUEUED = 10_000
RETENTION = 3600.0
# The pruner's batch size and per-pass cap (runner.scheduler).
PRUNE_BATCH = 1000


def fill(conn) -> None:
    """The finished jobs of long ago, and the queued ones, in three statements."""
    conn.execute(
        "INSERT INTO runner.jobs (task, args, state, attempts, result, created_at,"
        "    updated_at, finished_at)"
        " SELECT 'echo', '{}', 'succeeded', 1, '{}', at, at, at"
        " FROM (SELECT now() - interval '30 days' + n * interval '1 ms' AS at"
        "       FROM generate_series(1, %s) AS n) AS s",
        (SUCCEEDED,),
    )
    conn.execute(
        "INSERT INTO runner.jobs (task, args, state, attempts, max_attempts,"
        "    last_error, created_at, updated_at, finished_at)"
        " SELECT 'fail', '{}', 'failed', 5, 5, 'boom', at, at, at"
        " FROM (SELECT now() - interval '20 days' + n * interval '1 ms' AS at"
        "       FROM generate_series(1, %s) AS n) AS s",
        (FAILED,),
    )
    conn.execute(
        "INSERT INTO runner.jobs (task, args)"
        " SELECT 'record', jsonb_build_object('label', 'job ' || n)"
        " FROM generate_series(1, %s) AS n",
        (QUEUED,),
    )


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in plan_nodes(child))]


def check_claim_plans(conn) -> None:
    """The claim reads the partial index, never the whole table, queues or not."""
    for name, any_queue in (("job_claim", True), ("job_claim", False)):
        params = db.claim_params(() if any_queue else ("default",))
        (plan,) = conn.execute(
            "EXPLAIN (FORMAT JSON) " + query(name), params
        ).fetchone()[0]
        nodes = plan_nodes(plan["Plan"])
        indexes = {n.get("Index Name") for n in nodes}
        assert "jobs_claim_idx" in indexes, (name, json.dumps(plan, indent=1))
        scanned = [n for n in nodes if n["Node Type"] == "Seq Scan"]
        assert all(n.get("Relation Name") != "jobs" for n in scanned), (name, plan)


def seq_scans_of_jobs(conn) -> int:
    row = conn.execute(
        "SELECT seq_scan FROM pg_stat_user_tables"
        " WHERE schemaname = 'runner' AND relname = 'jobs'"
    ).fetchone()
    return int(row[0])


def count_in(conn, state: str) -> int:
    # Only states with a partial index, so that these checks never scan the table.
    assert state in ("queued", "running")
    row = conn.execute(
        "SELECT count(*) FROM runner.jobs WHERE state = %s::runner.job_state", (state,)
    ).fetchone()
    return int(row[0])


def runner_backends(conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'runner%%'"
    ).fetchone()
    return int(row[0])


class Pass(NamedTuple):
    backend: int
    started: datetime
    succeeded: datetime


def sweep_passes(events: list[observers.SweepEvent]) -> list[Pass]:
    """Each run of a sweep, from its slot's claim to its recorded success."""
    open_since: dict[int, datetime] = {}
    passes = []
    for event in events:
        if event.event == "started":
            open_since[event.backend] = event.at
        elif event.backend in open_since:
            started = open_since.pop(event.backend)
            passes.append(Pass(event.backend, started, event.at))
    return passes


def describe_passes(passes: list[Pass], overlapping: list[tuple[Pass, Pass]]) -> str:
    joined = {p for pair in overlapping for p in pair}
    lines = [
        f"backend {p.backend}: {p.started:%H:%M:%S.%f} to {p.succeeded:%H:%M:%S.%f}"
        + (" (overlaps)" if p in joined else "")
        for p in passes
    ]
    return f"{len(joined)} of {len(passes)} pruner passes overlap:\n" + "\n".join(lines)


def test_a_bloated_table_keeps_the_runners_on_their_indexes(
    conn, database_url, cluster, start_runner
):
    fill(conn)
    observers.watch_sweeps(conn)
    observers.watch_deletes(conn)
    with psycopg.connect(database_url) as reader:
        reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        counts = dict(
            reader.execute(
                "SELECT state::text, count(*) FROM runner.jobs GROUP BY 1"
            ).fetchall()
        )
        assert counts == {"succeeded": SUCCEEDED, "failed": FAILED, "queued": QUEUED}

        # Fresh from a bulk load, then with statistics, as autovacuum would leave it.
        check_claim_plans(conn)
        conn.execute("ANALYZE runner.jobs")
        check_claim_plans(conn)

        seq_scans_before = seq_scans_of_jobs(conn)
        since = conn.execute("SELECT now()").fetchone()[0]
        settings = {
            "RUNNER_RETENTION": str(RETENTION),
            "RUNNER_FAILED_RETENTION": str(RETENTION),
            "RUNNER_PRUNE_INTERVAL": "1",
        }
        runners = [start_runner(ready=False, **settings) for _ in range(2)]
        for runner in runners:
            runner.wait_ready(timeout=60)

        wait_until(
            lambda: count_in(conn, "queued") == 0 and count_in(conn, "running") == 0,
            timeout=400,
            message=f"{QUEUED} queued jobs to run",
        )
        wait_until(
            lambda: observers.deleted_total(conn) == SUCCEEDED + FAILED,
            timeout=400,
            message="the old jobs to be pruned",
        )
        check_claim_plans(conn)
        for runner in runners:
            runner.signal(signal.SIGTERM)
        assert [runner.proc.wait(60) for runner in runners] == [0, 0]
        # A backend reports its statistics as it exits.
        wait_until(lambda: runner_backends(conn) == 0, message="backends to exit")
        seq_scans_after = seq_scans_of_jobs(conn)
        reader.rollback()

    assert seq_scans_after == seq_scans_before, "a runner read all of runner.jobs"

    # The queued jobs all ran, once; only the old finished jobs were pruned.
    states = conn.execute(
        "SELECT state::text, attempts, count(*) FROM runner.jobs GROUP BY 1, 2"
    ).fetchall()
    assert states == [("succeeded", 1, QUEUED)]
    assert conn.execute(
        "SELECT count(*), count(DISTINCT job_id) FROM test_effects"
    ).fetchone() == (QUEUED, QUEUED)

    batches = observers.delete_batches(conn)
    assert max(b.deleted for b in batches) <= PRUNE_BATCH
    assert len({b.xact for b in batches}) == len(batches), "one transaction each"
    assert {b.application for b in batches} == {"runner scheduler"}
    assert sum(b.unfinished for b in batches) == 0
    newest = max(b.newest_finished_at for b in batches if b.newest_finished_at)
    assert newest < since - timedelta(seconds=RETENTION)

    rescues = [at for at in observers.sweep_starts(conn, "rescuer") if at > since]
    assert len(rescues) >= 3

    server_log = cluster.log()
    assert "deadlock detected" not in server_log

    # One runner at a time does each sweep: a long pass is never joined by another.
    passes = sweep_passes(observers.sweep_events(conn, "pruner"))
    overlapping = [
        (a, b)
        for a, b in combinations(passes, 2)
        if a.backend != b.backend
        and a.started < b.succeeded
        and b.started < a.succeeded
    ]
    assert overlapping == [], describe_passes(passes, overlapping)
