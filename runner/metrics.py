"""Prometheus metrics of the runner and its handlers.

Labels only ever hold registered task names and fixed outcome words, never job
arguments or results, so no secret can reach a label and cardinality stays bounded.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

# Task label for jobs whose task has no handler: the name itself is arbitrary input.
UNKNOWN_TASK = "<unknown>"

JOBS = Counter(
    "runner_jobs",
    "Job attempts that ended, by task and outcome "
    "(succeeded, retried, failed, released, lost).",
    ["task", "outcome"],
)
JOB_DURATION = Histogram(
    "runner_job_duration_seconds",
    "Time spent running a job's handler and recording its outcome.",
    ["task"],
    buckets=(
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
    ),
)
RECONNECTS = Counter(
    "runner_database_reconnects",
    "Times the runner lost its database connections and connected again.",
)
CONNECTION_FAILURES = Counter(
    "runner_database_connection_failures",
    "Times the job loop lost its database connections or failed to open them.",
)
RESCUED = Counter(
    "runner_jobs_rescued",
    "Jobs put back (or failed on their last attempt) because their runner died or "
    "lost its connection, by task.",
    ["task"],
)
LISTENER_CONNECTED = Gauge(
    "runner_listener_connected",
    "1 while the listening connection is up, else 0.",
)
NOTIFICATIONS_DEGRADED = Gauge(
    "runner_notifications_degraded",
    "1 when notifications do not reach the runner (for example behind a pooler in "
    "transaction mode) and it polls instead, else 0.",
)
SWEEP_LAST_SUCCESS = Gauge(
    "runner_sweep_last_success_timestamp_seconds",
    "When this runner last completed each periodic sweep (Unix time).",
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


def serve(host: str, port: int) -> None:
    """Serve /metrics over HTTP in a daemon thread; port 0 turns it off."""
    if port == 0:
        return
    start_http_server(port, addr=host)
    logger.info(
        "serving metrics on http://%s:%s/metrics",
        host,
        port,
        extra={"action": "metrics_serving"},
    )


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
