"""The runner behind PgBouncer, in transaction and in session pooling mode.

In transaction pooling a LISTEN holds no server connection, so notifications never
reach the runner: it must find that out at start, say so, and poll instead, without
server-side prepared statements (PgBouncer 1.18 cannot carry them from one server
connection to the next). A direct connection for LISTEN, or session pooling, keeps
notifications working.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import conninfo_to_dict

from tests.support import db, telemetry
from tests.support.cluster import Cluster, free_port
from tests.support.pgbouncer import PgBouncer
from tests.support.processes import RunnerProcess, wait_until

pytestmark = pytest.mark.slow

# Jobs per batch; each test runs two batches, the second after many heartbeats.
ECHO_JOBS = 15
NOOP_EVERY = 3
ROTATIONS = 10
# Heartbeats each runner records between the batches: enough for psycopg to turn
# the statements it repeats into prepared ones (after 5 runs by default).
HEARTBEATS = 12
# Slow enough that jobs inserted while a runner waits run only by a notification.
NO_POLLING = {"RUNNER_POLL_INTERVAL": "3600"}

Job = tuple[str, dict[str, Any]]


class Runner(NamedTuple):
    process: RunnerProcess
    metrics_port: int


@pytest.fixture
def pgbouncer(cluster: Cluster) -> Iterator[Callable[[str], PgBouncer]]:
    """Start PgBouncer in front of the cluster in the given pool mode."""
    started: list[PgBouncer] = []

    def start(pool_mode: str) -> PgBouncer:
        bouncer = PgBouncer(cluster, pool_mode)
        started.append(bouncer)
        return bouncer.start()

    yield start
    for bouncer in started:
        # pytest shows this only for a failed test.
        print(f"PgBouncer log ({bouncer.pool_mode} pooling):\n{bouncer.log()}")
        bouncer.stop()


def test_behind_a_transaction_pooler_the_runner_says_so_and_polls(
    pgbouncer, start_runner, conn, database_url
):
    bouncer = pgbouncer("transaction")
    pooled_url = bouncer.url(dbname(database_url))
    runners = start_two(start_runner, pooled_url)

    for runner in runners:
        warning = pooler_warning(runner.process)
        assert "PgBouncer" in warning and "transaction" in warning
        assert "poll" in warning.lower()
        assert "RUNNER_LISTEN_DATABASE_URL" in warning
        assert gauge(runner, "runner_notifications_degraded") == 1
        # Knowingly polling, the runner is ready; its queue metrics come through
        # the pooler too.
        ready = telemetry.get(runner.metrics_port, "/readyz")
        assert ready == (
            200,
            {
                "status": "ready",
                "checks": {"database": "up", "listener": "polling", "claiming": "up"},
            },
        )
        assert gauge(runner, "runner_database_up") == 1

    with connect_through(pooled_url) as pooled:
        run_jobs(conn, pooled, runners)


def test_a_direct_listen_url_keeps_notifications_behind_a_transaction_pooler(
    pgbouncer, start_runner, conn, database_url
):
    bouncer = pgbouncer("transaction")
    pooled_url = bouncer.url(dbname(database_url))
    runners = start_two(
        start_runner,
        pooled_url,
        RUNNER_LISTEN_DATABASE_URL=database_url,
        **NO_POLLING,
    )

    for runner in runners:
        assert gauge(runner, "runner_notifications_degraded") == 0

    with connect_through(pooled_url) as pooled:
        run_jobs(conn, pooled, runners)


def test_behind_a_session_pooler_notifications_arrive(
    pgbouncer, start_runner, conn, database_url
):
    bouncer = pgbouncer("session")
    pooled_url = bouncer.url(dbname(database_url))
    runners = start_two(start_runner, pooled_url, **NO_POLLING)

    for runner in runners:
        assert gauge(runner, "runner_notifications_degraded") == 0

    with connect_through(pooled_url) as pooled:
        run_jobs(conn, pooled, runners)


# Runners


def start_two(
    start_runner: Callable[..., RunnerProcess], database_url: str, **env: str
) -> list[Runner]:
    """Two runners on `database_url`, each serving metrics on a port of its own."""
    runners = []
    for _ in range(2):
        port = free_port()
        process = start_runner(
            DATABASE_URL=database_url,
            RUNNER_METRICS_PORT=str(port),
            RUNNER_LOG_FORMAT="json",
            **env,
        )
        runners.append(Runner(process, port))
    return runners


def records(process: RunnerProcess) -> list[dict[str, Any]]:
    """The runner's log records; a line that is not JSON counts as an error."""
    found = []
    for line in process.log().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            found.append({"level": "error", "message": line})
    return found


def is_pooler_warning(record: dict[str, Any]) -> bool:
    return record["level"] == "warning" and "PgBouncer" in record["message"]


def pooler_warning(process: RunnerProcess) -> str:
    """The one warning that names the pooler."""
    warnings = [r["message"] for r in records(process) if is_pooler_warning(r)]
    assert len(warnings) == 1, process.log()
    return str(warnings[0])


def is_trouble(record: dict[str, Any]) -> bool:
    if "prepared statement" in record["message"]:
        return True
    serious = record["level"] in ("warning", "error", "critical")
    return serious and not is_pooler_warning(record)


def trouble(process: RunnerProcess) -> list[str]:
    """Warnings and errors in the log, other than the pooler warning."""
    return [f"{r['level']}: {r['message']}" for r in records(process) if is_trouble(r)]


def metric_samples(runner: Runner) -> list[Any]:
    url = f"http://127.0.0.1:{runner.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def gauge(runner: Runner, name: str) -> float:
    (value,) = [s.value for s in metric_samples(runner) if s.name == name]
    return float(value)


def succeeded_count(runner: Runner) -> float:
    return sum(
        s.value
        for s in metric_samples(runner)
        if s.name == "runner_jobs_total" and s.labels["outcome"] == "succeeded"
    )


# Jobs


def dbname(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])


def connect_through(pooled_url: str) -> psycopg.Connection[Any]:
    """A client connection through the pooler, as an application would open it.

    Without prepared statements: PgBouncer 1.18 in transaction mode loses them.
    """
    return psycopg.connect(pooled_url, autocommit=True, prepare_threshold=None)


def run_jobs(
    conn: psycopg.Connection[Any],
    pooled: psycopg.Connection[Any],
    runners: list[Runner],
) -> None:
    """Two batches of jobs through the pooler, with many heartbeats in between."""
    keys = [db.new_key(conn) for _ in range(2 * ROTATIONS)]

    jobs = enqueue_batch(pooled, 0, keys[:ROTATIONS])
    wait_finished(conn, jobs)

    beats = Heartbeats(conn)
    pids = [runner.process.pid for runner in runners]
    wait_until(
        lambda: beats.at_least(pids, HEARTBEATS),
        message=f"{HEARTBEATS} heartbeats from each runner",
    )

    second = enqueue_batch(pooled, ECHO_JOBS, keys[ROTATIONS:])
    wait_finished(conn, second)
    jobs.update(second)

    check_outcomes(conn, jobs)
    assert sum(succeeded_count(runner) for runner in runners) == len(jobs)
    for runner in runners:
        assert not trouble(runner.process), "\n".join(trouble(runner.process))


def enqueue_batch(
    pooled: psycopg.Connection[Any], first: int, key_ids: list[int]
) -> dict[int, Job]:
    """Echo, noop and rotate_key jobs, each inserted in a transaction of its own."""
    planned: list[Job] = []
    for n in range(first, first + ECHO_JOBS):
        planned.append(("echo", {"n": n}))
        if n % NOOP_EVERY == 0:
            planned.append(("noop", {}))
        if n - first < len(key_ids):
            planned.append(("rotate_key", {"key_id": key_ids[n - first]}))
    return {db.insert_job(pooled, task, args): (task, args) for task, args in planned}


def wait_finished(conn: psycopg.Connection[Any], jobs: dict[int, Job]) -> None:
    def finished() -> bool:
        row = conn.execute(
            "SELECT count(*) FROM runner.jobs WHERE id = ANY(%s)"
            " AND state IN ('succeeded', 'failed', 'cancelled')",
            (list(jobs),),
        ).fetchone()
        return row is not None and row[0] == len(jobs)

    wait_until(finished, 60, f"{len(jobs)} jobs to finish")


def check_outcomes(conn: psycopg.Connection[Any], jobs: dict[int, Job]) -> None:
    for job_id, (task, args) in jobs.items():
        job = db.job(conn, job_id)
        assert (job["state"], job["attempts"]) == ("succeeded", 1), job
        if task == "echo":
            assert job["result"] == args
        elif task == "rotate_key":
            (successor,) = db.successors(conn, args["key_id"])
            assert job["result"]["outcome"] == "rotated"
            assert job["result"]["new_key_id"] == successor["id"]


class Heartbeats:
    """The heartbeats of each runner process that the database has recorded."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._seen: dict[int, set[Any]] = {}

    def at_least(self, pids: list[int], count: int) -> bool:
        rows = self._conn.execute("SELECT pid, last_seen_at FROM runner.workers")
        for pid, last_seen_at in rows:
            self._seen.setdefault(pid, set()).add(last_seen_at)
        return all(len(self._seen.get(pid, ())) >= count for pid in pids)
