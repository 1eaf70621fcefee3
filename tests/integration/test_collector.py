"""The queue collector on a real PostgreSQL: its figures, its plan, its timeouts."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from runner import queries
from runner.collector import OTHER_QUEUES, QueueCollector, QueueDepth, fold
from tests.support import db
from tests.support.processes import wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def make_collector() -> Iterator[Callable[..., QueueCollector]]:
    made: list[QueueCollector] = []

    def make(url: str, **timeouts: float) -> QueueCollector:
        collector = QueueCollector(url, **timeouts)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


def samples(collector: QueueCollector) -> Samples:
    """Each sample of a scrape, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }


def jobs(found: Samples, queue: str, state: str) -> float | None:
    return found.get(("runner_queue_jobs", (("queue", queue), ("state", state))))


def oldest(found: Samples, queue: str) -> float | None:
    return found.get(("runner_queue_oldest_job_age_seconds", (("queue", queue),)))


def up(found: Samples) -> float:
    return found[("runner_database_up", ())]


def running(conn: Any, queue: str) -> int:
    return db.insert_job(
        conn,
        "noop",
        queue=queue,
        state="running",
        attempts=1,
        claimed_by=uuid.uuid4(),
        claimed_at=db_now(conn),
    )


def db_now(conn: Any) -> Any:
    return conn.execute("SELECT now()").fetchone()[0]


def insert_finished(conn: Any, count: int, queue: str = "done") -> None:
    conn.execute(
        "INSERT INTO runner.jobs (task, queue, state, attempts, finished_at)"
        " SELECT 'noop', %s, 'succeeded', 1, now() - interval '1 day'"
        " FROM generate_series(1, %s)",
        (queue, count),
    )


def collector_backends(conn: Any) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'runner collector'"
    ).fetchone()
    return int(row[0])


def read_together(collector: QueueCollector, scrapes: int) -> list[Any]:
    """`scrapes` reads that overlap, each on a thread of its own."""
    results: list[Any] = [...] * scrapes

    def read(i: int) -> None:
        results[i] = collector.read()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(scrapes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        # A generous bound: the point is that no read hangs.
        thread.join(30)
        assert not thread.is_alive(), "a scrape hung"
    return results


# Figures


def test_depths_by_queue_and_state(conn, database_url, make_collector):
    hour_ago = conn.execute("SELECT now() - interval '1 hour'").fetchone()[0]
    db.insert_job(conn, "noop", run_at=hour_ago)
    db.insert_job(conn, "noop")
    db.insert_job(conn, "noop", queue="mail")
    for _ in range(2):
        db.insert_job(conn, "noop", queue="mail", run_at=db_now(conn).replace(2099))
    running(conn, "mail")
    running(conn, "reports")
    insert_finished(conn, 10)

    found = samples(make_collector(database_url))

    assert up(found) == 1
    assert jobs(found, "default", "queued") == 2
    assert jobs(found, "default", "scheduled") == 0
    assert jobs(found, "default", "running") == 0
    assert jobs(found, "mail", "queued") == 1
    assert jobs(found, "mail", "scheduled") == 2
    assert jobs(found, "mail", "running") == 1
    assert jobs(found, "reports", "running") == 1
    assert oldest(found, "default") >= 3600
    assert oldest(found, "reports") == 0
    # A queue with only finished jobs has no series.
    assert jobs(found, "done", "queued") is None


def test_a_connection_cut_between_scrapes_is_replaced_within_the_next(
    conn, database_url, make_collector
):
    collector = make_collector(database_url)
    assert up(samples(collector)) == 1
    cut = conn.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'runner collector'"
    ).fetchone()
    assert cut == (1,)

    assert up(samples(collector)) == 1


def test_many_queues_fold_into_a_bounded_number_of_labels():
    depths = [QueueDepth(f"q{n:02}", n, 0, 1, float(n)) for n in range(60)]

    folded = fold(depths, 50)

    assert len(folded) == 50
    assert [d.queue for d in folded[:3]] == ["q59", "q58", "q57"]
    other = folded[-1]
    assert other.queue == OTHER_QUEUES
    assert other.runnable == sum(range(11))
    assert other.running == 11
    assert other.oldest_age == 10
    assert fold(depths[:50], 50) == depths[:50]


def test_the_query_reads_only_the_partial_indexes(conn):
    insert_finished(conn, 100_000)
    db.insert_job(conn, "noop")
    running(conn, "default")
    conn.execute("ANALYZE runner.jobs")

    query = queries.query("queue_depths", filename="metrics.sql")
    ((plan,),) = conn.execute("EXPLAIN (FORMAT JSON) " + query).fetchall()
    nodes = list(plan_nodes(plan[0]["Plan"]))

    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], plan
    indexes = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert indexes == {"jobs_claim_idx", "jobs_running_idx"}


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


# A database that does not answer


def test_a_query_blocked_past_its_statement_timeout_reads_as_down(
    conn, database_url, make_collector, caplog
):
    collector = make_collector(database_url, statement_timeout=0.2, budget=30)
    db.insert_job(conn, "noop")
    with conn.transaction():
        conn.execute("LOCK TABLE runner.jobs IN ACCESS EXCLUSIVE MODE")
        found = samples(collector)

    assert up(found) == 0
    assert jobs(found, "default", "queued") is None
    assert "statement timeout" in caplog.text
    # Once the lock is gone, the next scrape works.
    assert up(samples(collector)) == 1


def test_overlapping_scrapes_share_one_connection(conn, database_url, make_collector):
    collector = make_collector(database_url, statement_timeout=60, budget=0.2)
    with conn.transaction():
        conn.execute("LOCK TABLE runner.jobs IN ACCESS EXCLUSIVE MODE")
        assert read_together(collector, 5) == [None] * 5
        # The query still waits for the lock, and later scrapes wait for it too.
        wait_until(lambda: collector_backends(conn) == 1, message="the collector")
        assert read_together(collector, 5) == [None] * 5
        assert collector_backends(conn) == 1
    wait_until(lambda: collector.read() is not None, message="the database again")


def test_a_server_that_never_answers_cannot_hang_a_scrape(make_collector):
    # It accepts connections (the kernel does), then says nothing.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        url = f"host=127.0.0.1 port={port} user=runner dbname=runner"
        collector = make_collector(url, budget=0.3)

        assert read_together(collector, 5) == [None] * 5
        found = samples(collector)
        assert up(found) == 0
        assert len(found) == 1
        assert accepted(silent) == 1


def accepted(server: socket.socket) -> int:
    """How many connections wait to be accepted; accepts and closes them."""
    server.setblocking(False)
    count = 0
    while True:
        try:
            client, _ = server.accept()
        except BlockingIOError:
            return count
        client.close()
        count += 1
