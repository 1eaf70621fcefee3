"""The Python API for producers: enqueue jobs and wait for their outcome."""

from __future__ import annotations

import time
from datetime import datetime
from functools import cache
from typing import Any

from runner import embedded, store
from runner.errors import InvalidArguments, RunnerError
from runner.jobs import JobState
from runner.registry import Registry, discover


@cache
def installed_registry() -> Registry:
    """The handlers of the installed packages, discovered once."""
    return discover()


def enqueue(
    task: str,
    args: dict[str, Any] | None = None,
    *,
    conn: store.Connection | None = None,
    database_url: str | None = None,
    queue: str = "default",
    priority: int = 0,
    max_attempts: int = 5,
    delay: float = 0,
    run_at: datetime | None = None,
    registry: Registry | None = None,
    check: bool = True,
) -> int:
    """Enqueue a job and return its id.

    With `conn`, the job is inserted in that connection's current transaction and
    runs only once the caller commits; otherwise it is committed before this returns,
    on `database_url`, else DATABASE_URL, else the embedded database.
    With `check`, the task must have a handler in `registry` (by default the
    installed ones) that accepts `args`.
    """
    args = {} if args is None else args
    _check_options(args, queue, max_attempts, delay)
    if check:
        (registry or installed_registry()).get(task).check_arguments(args)
    options: dict[str, Any] = {
        "queue": queue,
        "priority": priority,
        "max_attempts": max_attempts,
        "delay": delay,
        "run_at": run_at,
    }
    if conn is not None:
        return store.insert_job(conn, task, args, **options)
    url = embedded.resolve_database_url(database_url)
    with store.connect(url, autocommit=True) as own:
        return store.insert_job(own, task, args, **options)


def _check_options(args: object, queue: str, max_attempts: int, delay: float) -> None:
    if not isinstance(args, dict):
        raise InvalidArguments("job arguments must be a JSON object")
    if not queue:
        raise InvalidArguments("the queue name must not be empty")
    if max_attempts < 1:
        raise InvalidArguments("max attempts must be at least 1")
    if delay < 0:
        raise InvalidArguments("the delay must not be negative")


def get_job(job_id: int, database_url: str | None = None) -> dict[str, Any]:
    """Every field of one job; JobNotFound when there is none."""
    with store.connect(embedded.resolve_database_url(database_url)) as conn:
        return store.get_job(conn, job_id)


def wait_for(
    conn: store.Connection, job_id: int, timeout: float | None = None
) -> dict[str, Any]:
    """Wait until the job reaches a final state and return it.

    Raises RunnerError when `timeout` seconds pass first.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.01
    while True:
        job = store.get_job(conn, job_id)
        if JobState(job["state"]).is_final:
            return job
        if deadline is not None and time.monotonic() >= deadline:
            raise RunnerError(
                f"job {job_id} is still {job['state']} after {timeout:g} s"
            )
        time.sleep(pause)
        pause = min(pause * 1.5, 0.5)
