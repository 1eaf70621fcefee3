"""Prometheus metrics of the runner and its handlers, and the `/metrics` route.

Labels only ever hold registered task names, queue names (bounded in number, see
runner.collector) and fixed words, never job arguments or results, so no secret
can reach a label and cardinality stays bounded. The metrics of the queues are read
from the database at scrape time by runner.collector.
"""

from __future__ import annotations

import platform
from functools import cache
from http import HTTPStatus
from importlib import metadata

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder

from runner.http_server import Request, Response

# Task label for jobs whose task has no handler: the name itself is arbitrary input.
UNKNOWN_TASK = "<unknown>"

# Seconds, from half a millisecond to five minutes: job durations and pick-up times.
_TIME_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)

JOBS = Counter(
    "runner_jobs",
    "Job attempts that ended, by task and outcome "
    "(succeeded, retried, failed, cancelled, released, lost).",
    ["task", "outcome"],
)
JOB_DURATION = Histogram(
    "runner_job_duration_seconds",
    "Time spent running a job's handler and recording its outcome (a plain "
    "handler's success is recorded with the next claim, outside this time).",
    ["task"],
    buckets=_TIME_BUCKETS,
)
PICKUP_LATENCY = Histogram(
    "runner_job_pickup_latency_seconds",
    "Time from a job becoming runnable (enqueued, or due) to its handler starting, "
    "by task.",
    ["task"],
    buckets=_TIME_BUCKETS,
)
RECONNECTS = Counter(
    "runner_database_reconnects",
    "Times the runner lost its database connections and connected again.",
)
CONNECTION_FAILURES = Counter(
    "runner_database_connection_failures",
    "Times the job loop lost its database connections, failed to open them, or "
    "failed otherwise, and started over after a pause.",
)
RESCUED = Counter(
    "runner_jobs_rescued",
    "Jobs put back (or failed on their last attempt) because their runner died or "
    "lost its connection, by task.",
    ["task"],
)
LISTENER_CONNECTED = Gauge(
    "runner_listener_connected",
    "1 while the listening connection is up; 0 while it is down, and while the "
    "runner polls instead (see runner_notifications_degraded).",
)
NOTIFICATIONS_DEGRADED = Gauge(
    "runner_notifications_degraded",
    "1 when notifications do not reach the runner (for example behind a pooler in "
    "transaction mode) and it polls instead, else 0.",
)
SWEEP_LAST_SUCCESS = Gauge(
    "runner_sweep_last_success_timestamp_seconds",
    "When this runner last completed a pass of each periodic sweep (Unix time); "
    "a pass runs on one runner at a time, so take the max across runners.",
    ["sweep"],
)
KEY_ROTATIONS = Counter(
    "runner_key_rotations",
    "API key rotations, by outcome (rotated, already_rotated, not_found, expired).",
    ["outcome"],
)
KEY_ROTATION_DURATION = Histogram(
    "runner_key_rotation_duration_seconds",
    "Time a key rotation takes, from locking the key to issuing its successor.",
)


class TaskMetrics:
    """The job metrics of one task label, looked up once rather than per job."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.pickup = PICKUP_LATENCY.labels(task)
        self.duration = JOB_DURATION.labels(task)
        self._outcomes: dict[str, Counter] = {}

    def count(self, outcome: str) -> None:
        counter = self._outcomes.get(outcome)
        if counter is None:
            counter = self._outcomes[outcome] = JOBS.labels(self.task, outcome)
        counter.inc()


@cache
def for_task(task_label: str) -> TaskMetrics:
    """The metrics of a task label (a registered task, or UNKNOWN_TASK)."""
    return TaskMetrics(task_label)


BUILD_INFO = Info(
    "runner_build",
    "The runner's version and the Python it runs on; the value is always 1.",
)
BUILD_INFO.info(
    {"version": metadata.version("runner"), "python": platform.python_version()}
)


def exposition(request: Request) -> Response:
    """The `/metrics` route: every metric, in the format the scraper asks for."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(HTTPStatus.OK, encode(REGISTRY), content_type)


WEBHOOK_DELIVERIES = Counter(
    "runner_webhook_deliveries",
    "Webhook delivery attempts, by outcome (delivered, retried, failed, refused).",
    ["outcome"],
)
WEBHOOK_DELIVERY_DURATION = Histogram(
    "runner_webhook_delivery_duration_seconds",
    "Time from sending a webhook request to its answer, or to its failure.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
API_REQUESTS = Counter(
    "runner_api_requests",
    "Requests to the HTTP API, by route (its path pattern) and status code.",
    ["route", "status"],
)
KEY_ROTATIONS_ENQUEUED = Counter(
    "runner_key_rotations_enqueued",
    "Key rotation jobs enqueued by the HTTP API (api) and by the automatic rotation "
    "(schedule); a request answered with a rotation already queued is not counted.",
    ["source"],
)
