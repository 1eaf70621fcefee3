"""runner: a lightweight job runner on PostgreSQL.

The public API: `handler` declares a handler, `enqueue` adds a job (or, with a
unique key, finds the queued one that stands for it; `enqueue_unique` also says
which), `enqueue_many` a batch of them, `wait_for` waits for a job's outcome, `cancel`
withdraws a job that has not started.
"""

from runner.client import (
    cancel,
    database_url,
    enqueue,
    enqueue_many,
    enqueue_unique,
    get_job,
    wait_for,
)
from runner.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    InvalidArguments,
    JobError,
    JobNotFound,
    JobStateConflict,
    PermanentError,
    RunnerError,
    UnknownTask,
    WaitTimedOut,
)
from runner.jobs import JobState
from runner.registry import Handler, JobContext, handler

__all__ = [
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailable",
    "Handler",
    "InvalidArguments",
    "JobContext",
    "JobError",
    "JobNotFound",
    "JobState",
    "JobStateConflict",
    "PermanentError",
    "RunnerError",
    "UnknownTask",
    "WaitTimedOut",
    "cancel",
    "database_url",
    "enqueue",
    "enqueue_many",
    "enqueue_unique",
    "get_job",
    "handler",
    "wait_for",
]
