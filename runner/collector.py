"""The queue collector: metrics that the database knows, read at scrape time.

- `runner_queue_jobs{queue,state}`: jobs `queued` (runnable now), `scheduled`
  (queued, with `run_at` in the future) and `running`, per queue;
- `runner_queue_oldest_job_age_seconds{queue}`: how long the oldest runnable job
  has waited since its `run_at` (0 when none is runnable);
- `runner_database_up`: 1 when this scrape's query worked, else 0 (and no queue
  metrics).

Every runner reports the whole database's queues, not its own share: aggregate
them with `max`, not `sum`, across runners.

A slow or absent database never holds up a scrape. The query runs on a connection
of its own, with a short connection timeout, a `statement_timeout`, and in a thread
that the scrape waits for only `budget` seconds; a server that stops answering
altogether cannot hang the scrape either. Scrapes that overlap share one query in
flight, so there is never more than one connection, however many scrapes pile up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import reduce
from typing import Any, LiteralString

from prometheus_client.core import GaugeMetricFamily, Metric

from runner import queries, store
from runner.errors import DatabaseError, DatabaseUnavailable

logger = logging.getLogger(__name__)

# Seconds; libpq rounds connection timeouts below 2 s up to 2 s.
CONNECT_TIMEOUT = 2.0
STATEMENT_TIMEOUT = 1.0
# Seconds a scrape waits for the database at most; well under Prometheus's default
# scrape timeout of 10 s.
SCRAPE_BUDGET = 3.0
# Queue names are chosen by whoever enqueues: past this many queues, the smallest
# are summed into one label value, so the number of series stays bounded.
MAX_QUEUES = 50
OTHER_QUEUES = "<other>"


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    runnable: int
    scheduled: int
    running: int
    oldest_age: float
    """Seconds the oldest runnable job has waited; 0 when none is runnable."""

    @property
    def total(self) -> int:
        return self.runnable + self.scheduled + self.running


class QueueCollector:
    """A prometheus-client collector of the queues in the database at `url`."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        statement_timeout: float = STATEMENT_TIMEOUT,
        budget: float = SCRAPE_BUDGET,
    ) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self._budget = budget
        self._conn: store.Connection | None = None
        self._flight: _Flight | None = None
        self._lock = threading.Lock()
        self._failing = False

    def describe(self) -> Iterable[Metric]:
        # Without it, registering would run a scrape to learn the metrics' names.
        return _families()

    def collect(self) -> Iterable[Metric]:
        jobs, oldest, up = _families()
        depths = self.read()
        up.add_metric([], 0 if depths is None else 1)
        for depth in fold(depths or [], MAX_QUEUES):
            jobs.add_metric([depth.queue, "queued"], depth.runnable)
            jobs.add_metric([depth.queue, "scheduled"], depth.scheduled)
            jobs.add_metric([depth.queue, "running"], depth.running)
            oldest.add_metric([depth.queue], depth.oldest_age)
        return [jobs, oldest, up]

    def read(self) -> list[QueueDepth] | None:
        """The depth of every queue that has jobs; None when the database failed."""
        flight = self._join_flight()
        if not flight.wait(flight.started + self._budget):
            self._report_failure(
                f"the database did not answer within {self._budget:g} s"
            )
            return None
        if flight.error is not None:
            self._report_failure(str(flight.error), flight.error)
            return None
        self._report_recovery()
        return flight.result

    def close(self) -> None:
        """Wait for a query in flight to end, then close the connection."""
        flight = self._flight
        if flight is not None:
            flight.wait(
                flight.started + self._connect_timeout + self._statement_timeout
            )
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _join_flight(self) -> _Flight:
        """The query in flight, or a new one when none is."""
        with self._lock:
            if self._flight is None or self._flight.done:
                self._flight = _Flight(self._query)
            return self._flight

    # On the flight's thread

    def _query(self) -> list[QueueDepth]:
        reusing = self._conn is not None and not self._conn.closed
        try:
            return self._query_once()
        except DatabaseUnavailable:
            if not reusing:
                raise
        # The kept connection went stale (a server restart, an idle timeout): one
        # more try on a new one, rather than a scrape that says the database is down.
        return self._query_once()

    def _query_once(self) -> list[QueueDepth]:
        conn = self._connection()
        milliseconds = str(round(self._statement_timeout * 1000))
        try:
            with store.translate_errors(), conn.transaction():
                conn.execute(
                    queries.query("statement_timeout_set_local"),
                    {"milliseconds": milliseconds},
                )
                rows = conn.execute(_query("queue_depths")).fetchall()
        except Exception:
            # Whatever failed, the next try starts from a new connection.
            self._conn = None
            conn.close()
            raise
        return _merge(rows)

    def _connection(self) -> store.Connection:
        if self._conn is None or self._conn.closed:
            # No prepared statements: the collector may go through a pooler in
            # transaction mode, which loses them.
            self._conn = store.connect(
                self._url,
                timeout=self._connect_timeout,
                application_name="runner collector",
                prepare=False,
            )
        return self._conn

    # Logs: one warning per outage, not one per scrape

    def _report_failure(self, reason: str, exc: Exception | None = None) -> None:
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        unexpected = exc is not None and not isinstance(exc, DatabaseError)
        logger.log(
            logging.ERROR if unexpected else level,
            "queue metrics unavailable: %s",
            reason,
            exc_info=exc if unexpected else None,
            extra={"action": "collector_failed"},
        )

    def _report_recovery(self) -> None:
        if self._failing:
            self._failing = False
            logger.info(
                "queue metrics available again", extra={"action": "collector_recovered"}
            )


class _Flight:
    """One query, on a daemon thread, that any number of scrapes can wait for."""

    def __init__(self, query: Callable[[], list[QueueDepth]]) -> None:
        self.started = time.monotonic()
        self.result: list[QueueDepth] | None = None
        self.error: Exception | None = None
        self._done = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(query,), name="runner collector", daemon=True
        )
        thread.start()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, deadline: float) -> bool:
        """Wait until the query ends or time.monotonic() reaches `deadline`."""
        return self._done.wait(max(0.0, deadline - time.monotonic()))

    def _run(self, query: Callable[[], list[QueueDepth]]) -> None:
        try:
            self.result = query()
        except Exception as exc:
            self.error = exc
        finally:
            self._done.set()


def fold(depths: list[QueueDepth], limit: int) -> list[QueueDepth]:
    """At most `limit` queues: the fullest keep their names, the rest are summed."""
    if len(depths) <= limit:
        return depths
    ranked = sorted(depths, key=lambda d: (-d.total, d.queue))
    kept, rest = ranked[: limit - 1], ranked[limit - 1 :]
    return [*kept, reduce(_add, rest, _empty(OTHER_QUEUES))]


def _merge(rows: Iterable[tuple[Any, ...]]) -> list[QueueDepth]:
    """One QueueDepth per queue from the query's rows (up to two per queue)."""
    depths: dict[str, QueueDepth] = {}
    for queue, runnable, scheduled, running, oldest_age in rows:
        part = QueueDepth(queue, runnable, scheduled, running, oldest_age or 0.0)
        depths[queue] = _add(depths.get(queue, _empty(queue)), part)
    return [depths[queue] for queue in sorted(depths)]


def _empty(queue: str) -> QueueDepth:
    return QueueDepth(queue, 0, 0, 0, 0.0)


def _add(total: QueueDepth, part: QueueDepth) -> QueueDepth:
    """The counts of both, under the name of `total`."""
    return QueueDepth(
        total.queue,
        total.runnable + part.runnable,
        total.scheduled + part.scheduled,
        total.running + part.running,
        max(total.oldest_age, part.oldest_age),
    )


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    jobs = GaugeMetricFamily(
        "runner_queue_jobs",
        "Jobs per queue and state: queued (runnable now), scheduled (queued, run_at "
        "in the future) and running; read from the database at scrape time.",
        labels=["queue", "state"],
    )
    oldest = GaugeMetricFamily(
        "runner_queue_oldest_job_age_seconds",
        "Seconds the oldest runnable job of each queue has waited since its run_at "
        "(0 when none is runnable).",
        labels=["queue"],
    )
    up = GaugeMetricFamily(
        "runner_database_up",
        "1 when the queue metrics' query worked during this scrape, else 0.",
    )
    return jobs, oldest, up


def _query(name: str) -> LiteralString:
    return queries.query(name, filename="metrics.sql")
