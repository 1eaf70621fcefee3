"""The Python API for producers: enqueue jobs, wait for them, cancel them."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache
from typing import Any

from runner import embedded, payloads, store
from runner.errors import InvalidArguments, WaitTimedOut
from runner.jobs import JobState
from runner.registry import Handler, Registry, discover

# PostgreSQL's integer range, for priorities and attempt counts.
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
# The longest delay a job may be given, in seconds: 100 years.
MAX_DELAY = 100 * 365.25 * 86400
# Jobs per statement of enqueue_many: bounds the size of one statement's parameters.
INSERT_CHUNK = 5000


@cache
def installed_registry() -> Registry:
    """The handlers of the installed packages, discovered once."""
    return discover()


def database_url() -> str:
    """The database the runner uses: DATABASE_URL, else the embedded one."""
    return embedded.resolve_database_url(None)


def enqueue(
    task: str | Handler,
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
    unique_key: str | None = None,
) -> int:
    """Enqueue a job and return its id.

    `task` is a task name or a `Handler`. With `conn`, the job is inserted in that
    connection's current transaction and runs only once the caller commits;
    otherwise it is committed before this returns, on `database_url`, else
    DATABASE_URL, else the embedded database. With `check`, the handler (the one
    given, or the task's in `registry`, by default the installed handlers) must
    accept `args`. With `unique_key`, nothing is inserted while a queued or running
    job has the same key: the id returned is that job's (see `enqueue_unique`).
    """
    options = store.JobOptions(queue, priority, max_attempts, delay, run_at)
    name, checked = _checked(
        task, [{} if args is None else args], options, registry, check
    )
    if unique_key is not None:
        return _insert_unique(
            conn, database_url, name, checked[0], unique_key, options
        ).id
    if conn is not None:
        return store.insert_job(conn, name, checked[0], options)
    url = embedded.resolve_database_url(database_url)
    with store.connect(url, autocommit=True) as own:
        return store.insert_job(own, name, checked[0], options)


def enqueue_unique(
    task: str | Handler,
    args: dict[str, Any] | None,
    unique_key: str,
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
) -> store.Inserted:
    """Enqueue a job unless a queued or running job has `unique_key`; return the
    id of the job that stands for it, and whether it is new.

    Race-free: of concurrent callers with the same key, one inserts and the others
    get its id. A finished job no longer holds its key. The other parameters are
    those of `enqueue`; a job that already existed keeps its own arguments and
    options.
    """
    options = store.JobOptions(queue, priority, max_attempts, delay, run_at)
    name, checked = _checked(
        task, [{} if args is None else args], options, registry, check
    )
    return _insert_unique(conn, database_url, name, checked[0], unique_key, options)


def _insert_unique(
    conn: store.Connection | None,
    database_url: str | None,
    task: str,
    args: dict[str, Any],
    unique_key: str,
    options: store.JobOptions,
) -> store.Inserted:
    if not unique_key:
        raise InvalidArguments("the unique key must not be empty")
    if conn is not None:
        return store.insert_unique_job(conn, task, args, unique_key, options)
    url = embedded.resolve_database_url(database_url)
    with store.connect(url, autocommit=True) as own:
        return store.insert_unique_job(own, task, args, unique_key, options)


def enqueue_many(
    task: str | Handler,
    args: Iterable[dict[str, Any]],
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
) -> list[int]:
    """Enqueue a job of `task` per element of `args`, all with the same options;
    return their ids, in the order of `args`.

    All or none: every arguments object is checked before any job is inserted, and
    the jobs are inserted in one transaction (the caller's, with `conn`). The other
    parameters are those of `enqueue`.
    """
    options = store.JobOptions(queue, priority, max_attempts, delay, run_at)
    name, checked = _checked(task, list(args), options, registry, check)
    if conn is not None:
        return _insert_chunks(conn, name, checked, options)
    url = embedded.resolve_database_url(database_url)
    with store.connect(url, autocommit=True) as own, own.transaction():
        return _insert_chunks(own, name, checked, options)


def _insert_chunks(
    conn: store.Connection,
    task: str,
    args: list[dict[str, Any]],
    options: store.JobOptions,
) -> list[int]:
    ids: list[int] = []
    for start in range(0, len(args), INSERT_CHUNK):
        chunk = args[start : start + INSERT_CHUNK]
        ids += store.insert_jobs(conn, task, chunk, options)
    return ids


def _checked(
    task: str | Handler,
    args: list[Any],
    options: store.JobOptions,
    registry: Registry | None,
    check: bool,
) -> tuple[str, list[dict[str, Any]]]:
    """The task's name and the arguments, once they and the options are valid."""
    _check_options(options)
    for one in args:
        _check_args(one)
    if isinstance(task, Handler):
        handler: Handler | None = task
        task = task.name
    else:
        handler = (registry or installed_registry()).get(task) if check else None
    if check and handler is not None:
        for one in args:
            handler.check_arguments(one)
    return task, args


def _check_args(args: object) -> None:
    if not isinstance(args, dict):
        raise InvalidArguments("job arguments must be a JSON object")
    why = payloads.problem(args)
    if why is not None:
        raise InvalidArguments(f"job arguments must be JSON that can be stored: {why}")


def _check_options(options: store.JobOptions) -> None:
    queue, priority, max_attempts, delay, run_at = options
    if not queue:
        raise InvalidArguments("the queue name must not be empty")
    if not _INT_MIN <= priority <= _INT_MAX:
        raise InvalidArguments(f"the priority must be a 32-bit integer, not {priority}")
    if not 1 <= max_attempts <= _INT_MAX:
        raise InvalidArguments("max attempts must be at least 1")
    if not (math.isfinite(delay) and 0 <= delay <= MAX_DELAY):
        raise InvalidArguments(
            f"the delay must be a number of seconds from 0 to {MAX_DELAY:.0f} "
            "(100 years)"
        )
    if run_at is not None:
        try:
            # Out of Python's range in UTC, a time would not read back either.
            run_at.astimezone(UTC)
        except OverflowError:
            raise InvalidArguments(
                "the run time must fall within the years 1 to 9999, in UTC"
            ) from None


def get_job(job_id: int, database_url: str | None = None) -> dict[str, Any]:
    """Every field of one job; JobNotFound when there is none."""
    with store.connect(embedded.resolve_database_url(database_url)) as conn:
        return store.get_job(conn, job_id)


def cancel(job_id: int, database_url: str | None = None) -> bool:
    """Cancel a job that has not started; False when it already has (or finished)."""
    with store.connect(embedded.resolve_database_url(database_url)) as conn:
        store.get_job(conn, job_id)  # JobNotFound for an unknown id
        return store.cancel_job(conn, job_id)


def wait_for(
    conn: store.Connection, job_id: int, timeout: float | None = None
) -> dict[str, Any]:
    """Wait until the job reaches a final state and return it.

    Raises WaitTimedOut when `timeout` seconds pass first; the job goes on.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.01
    while True:
        job = store.get_job(conn, job_id)
        if JobState(job["state"]).is_final:
            return job
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimedOut(
                f"job {job_id} is still {job['state']} after {timeout:g} s"
            )
        time.sleep(pause)
        pause = min(pause * 1.5, 0.5)
