"""Prometheus metrics of the runner and its handlers.

Labels only ever hold registered task names and fixed outcome words, never job
arguments or results, so no secret can reach a label and cardinality stays bounded.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

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
