"""The operator's view of the jobs: list, inspect, retry, cancel and count them.

The data access of `runner jobs`, with its queries in `sql/admin.sql`. Nothing it
returns carries a secret: `job_detail` withholds every field of a job's arguments
and result that is named like a secret or holds a sealed one (see
`withhold_secrets`), so no caller can print one by mistake.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import dict_row

from runner import queries, store
from runner.errors import (
    ConfigurationError,
    DatabaseError,
    JobNotFound,
    JobStateConflict,
)
from runner.jobs import FINAL_STATES, JobState

# Field names that say they hold a secret, anywhere in arguments or results.
_SECRET_NAME = re.compile(
    r"secret|passw|token|credential|private|sealed|api_?key|auth", re.IGNORECASE
)
# What is shown in place of a withheld value.
WITHHELD = "[withheld]"
# The note that `runner jobs retry` leaves in the job's error history.
RETRIED_NOTE = "retried by hand with a fresh set of attempts"


def _query(name: str) -> LiteralString:
    return queries.query(name, filename="admin.sql")


def connect(url: str) -> store.Connection:
    """A connection for the operator's commands, to a schema they can work with."""
    conn = store.connect(url, application_name="runner jobs", timeout=5)
    version = store.schema_version(conn)
    if version is None or version < store.SCHEMA_VERSION:
        conn.close()
        raise ConfigurationError(
            f"schema version {version or 'missing'} on {store.describe(url)}, "
            f"expected {store.SCHEMA_VERSION}: run `runner migrate`"
        )
    return conn


@dataclass(frozen=True)
class Since:
    """A moment, given as a time or as a span back from the database's now."""

    at: datetime | None = None
    ago: timedelta | None = None

    def params(self) -> dict[str, Any]:
        return {"since_at": self.at, "since_ago": self.ago}


@dataclass(frozen=True)
class JobFilter:
    """Which jobs `list_jobs` returns; empty `states` means every state."""

    states: tuple[JobState, ...] = ()
    task: str | None = None
    queue: str | None = None
    since: Since = field(default_factory=Since)
    limit: int = 50


def list_jobs(conn: store.Connection, which: JobFilter) -> list[dict[str, Any]]:
    """The newest jobs that pass the filter, newest first (by id)."""
    params = {
        "states": [s.value for s in which.states or tuple(JobState)],
        "task": which.task,
        "queue": which.queue,
        "limit": which.limit,
        **which.since.params(),
    }
    with store.translate_errors(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(_query("job_list"), params).fetchall()


def job_detail(conn: store.Connection, job_id: int) -> dict[str, Any]:
    """Every field of one job, with its secrets withheld.

    `withheld` lists where a value was withheld, as paths such as
    `result.sealed_secret`.
    """
    job = _detail_row(conn, job_id)
    job["args"], withheld_args = withhold_secrets(job["args"], "args")
    job["result"], withheld_result = withhold_secrets(job["result"], "result")
    job["withheld"] = withheld_args + withheld_result
    return job


def _detail_row(conn: store.Connection, job_id: int) -> dict[str, Any]:
    with store.translate_errors(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_query("job_detail"), {"id": job_id}).fetchone()
    if row is None:
        raise JobNotFound(f"no job with id {job_id}")
    return row


def withhold_secrets(value: Any, path: str) -> tuple[Any, list[str]]:
    """`value` with every secret replaced by WITHHELD, and the paths replaced.

    A secret is the value of a field named like one (secret, password, token,
    private_key, ...) or a sealed secret (see runner.sealing), at any depth.
    """
    if isinstance(value, dict):
        kept: dict[str, Any] = {}
        withheld: list[str] = []
        for name, item in value.items():
            where = f"{path}.{name}"
            if _SECRET_NAME.search(name) or is_sealed(item):
                kept[name] = WITHHELD
                withheld.append(where)
            else:
                kept[name], inner = withhold_secrets(item, where)
                withheld += inner
        return kept, withheld
    if isinstance(value, list):
        items: list[Any] = []
        withheld = []
        for index, item in enumerate(value):
            if is_sealed(item):
                items.append(WITHHELD)
                withheld.append(f"{path}[{index}]")
                continue
            kept_item, inner = withhold_secrets(item, f"{path}[{index}]")
            items.append(kept_item)
            withheld += inner
        return items, withheld
    return value, []


def is_sealed(value: Any) -> bool:
    """Whether `value` has the shape of runner.sealing.seal's output."""
    return isinstance(value, dict) and {"ephemeral", "ciphertext"} <= value.keys()


def retry(conn: store.Connection, job_id: int) -> int:
    """Put a failed or cancelled job back in the queue with a fresh set of attempts;
    return how many attempts it has."""
    params = {"id": job_id, "note": RETRIED_NOTE}
    try:
        with store.translate_errors():
            row = conn.execute(_query("job_retry_by_hand"), params).fetchone()
    except DatabaseError as exc:
        if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
            raise JobStateConflict(
                f"job {job_id} cannot be retried: another job with its unique key "
                "is queued or running"
            ) from exc
        raise
    if row is None:
        state = _detail_row(conn, job_id)["state"]
        raise JobStateConflict(
            f"job {job_id} is {state}: only a failed or cancelled job can be retried"
        )
    return int(row[0])


def database_now(conn: store.Connection) -> datetime:
    """The database's time, which every age shown is counted against."""
    with store.translate_errors():
        row = conn.execute(queries.query("clock_now")).fetchone()
    if row is None:
        raise DatabaseError("the database did not tell its time")
    now: datetime = row[0]
    return now


class Cancellation(NamedTuple):
    """What `cancel` did: `state` is cancelled, or running with a stop requested."""

    state: str
    runner: uuid.UUID | None
    requested_at: datetime


def cancel(conn: store.Connection, job_id: int) -> Cancellation:
    """Cancel a queued job, or ask the runner of a running one to stop it."""
    with store.translate_errors():
        row = conn.execute(_query("job_cancel_by_hand"), {"id": job_id}).fetchone()
    if row is not None:
        return Cancellation(*row)
    state = _detail_row(conn, job_id)["state"]
    if JobState(state) in FINAL_STATES:
        raise JobStateConflict(f"job {job_id} is already {state}: nothing to cancel")
    # Queued or running again: it changed state between the update and the read.
    raise JobStateConflict(f"job {job_id} changed state meanwhile: try again")


@dataclass
class Stats:
    """Job counts: queued and running jobs, and the jobs finished since `since`."""

    since: datetime
    now: datetime
    by_task: dict[str, dict[str, int]]
    runnable: int
    oldest_runnable_age: float | None
    """Seconds the oldest runnable job has waited since it fell due."""

    @property
    def by_state(self) -> dict[str, int]:
        totals = dict.fromkeys((s.value for s in JobState), 0)
        for counts in self.by_task.values():
            for state, count in counts.items():
                totals[state] += count
        return totals


def stats(conn: store.Connection, since: Since) -> Stats:
    with store.translate_errors():
        counts = conn.execute(_query("job_count"), since.params()).fetchall()
        row = conn.execute(_query("job_oldest_runnable")).fetchone()
    if row is None:
        raise DatabaseError("the count of runnable jobs returned no row")
    runnable, oldest_age, now = row
    by_task: dict[str, dict[str, int]] = defaultdict(
        lambda: dict.fromkeys((s.value for s in JobState), 0)
    )
    for task, state, count in counts:
        by_task[task][state] = count
    return Stats(
        since=since.at or now - (since.ago or timedelta(0)),
        now=now,
        by_task=dict(by_task),
        runnable=runnable,
        oldest_runnable_age=oldest_age,
    )
