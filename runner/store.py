"""All database access: connections, the schema, and every query the runner runs.

This is the one boundary where psycopg errors become the runner's own: a connection
that cannot be made or is lost raises `DatabaseUnavailable`, any other failure
`DatabaseError`, always chained to the driver's error.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from runner import queries
from runner.errors import DatabaseError, DatabaseUnavailable, JobNotFound
from runner.jobs import ClaimedJob, JobState

logger = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]

# The version that schema.sql brings a database to.
SCHEMA_VERSION = 2
# Serialises concurrent `runner migrate` runs; an arbitrary constant of the project.
_MIGRATE_LOCK_KEY = 0x72756E6E6572  # "runner"


# SQLSTATEs of a server that is going away or not taking connections: class 08
# (connection exception) is matched by its prefix.
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise driver errors as the runner's own."""
    try:
        yield
    except psycopg.Error as exc:
        if _connection_lost(exc):
            raise DatabaseUnavailable(_first_line(exc)) from exc
        raise DatabaseError(_first_line(exc)) from exc


def _connection_lost(exc: psycopg.Error) -> bool:
    """Whether the error means the connection, not the statement, failed.

    Errors raised by the driver itself carry no SQLSTATE; statement errors such as
    a value too large (class 54) are operational too, but retrying cannot help them.
    """
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _UNAVAILABLE_STATES


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(
    url: str,
    *,
    autocommit: bool = True,
    timeout: float = 10,
    application_name: str = "runner",
    prepare: bool = True,
) -> Connection:
    """Open a connection; `timeout` (seconds) bounds the connection attempt only.

    `prepare=False` turns off server-side prepared statements, which a pooler in
    transaction mode breaks: it runs each transaction on any server connection.
    """
    with translate_errors():
        conn = psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=max(1, round(timeout)),
            application_name=application_name,
        )
    if not prepare:
        conn.prepare_threshold = None
    return conn


def use_generic_plans(conn: Connection) -> None:
    """Plan each prepared statement of this session once, whatever its parameters.

    The claim, with its many parts, takes longer to plan than to run; by default
    PostgreSQL may plan it again at every execution. Its plan is the same for any
    parameters (index lookups), so planning it once saves most of a single claim's
    time. A session setting: only for a connection of its own, never a pooled one.
    """
    with translate_errors():
        conn.execute(queries.query("session_generic_plans"))


def describe(url: str) -> str:
    """The database a URL names, for logs: never the password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "an unparseable database URL"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    where = f"{host}" if str(host).startswith("/") else f"{host}:{port}"
    dbname, user = params.get("dbname", "?"), params.get("user", "?")
    return f"database {dbname} on {where} as {user}"


def schema_version(conn: Connection) -> int | None:
    """The schema version in force, or None when there is no schema yet."""
    with translate_errors():
        row = conn.execute(queries.query("schema_present")).fetchone()
        if not (row and row[0]):
            return None
        row = conn.execute(queries.query("schema_version")).fetchone()
    return None if row is None else int(row[0])


def migrate(conn: Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; return the version now in force.

    An up-to-date schema is left alone: the script takes locks on the jobs table
    that running runners would queue behind.
    """
    version = schema_version(conn)
    if version is not None and version >= SCHEMA_VERSION:
        return version
    with translate_errors(), conn.transaction():
        conn.execute(queries.query("schema_lock"), {"key": _MIGRATE_LOCK_KEY})
        conn.execute(queries.schema())
    return schema_version(conn) or SCHEMA_VERSION


class JobOptions(NamedTuple):
    """How a job is enqueued, besides its task and arguments."""

    queue: str = "default"
    priority: int = 0
    max_attempts: int = 5
    delay: float = 0
    """Seconds from now until the job may run."""
    run_at: datetime | None = None
    """When the job may run; wins over `delay`."""


DEFAULT_OPTIONS = JobOptions()


def insert_job(
    conn: Connection,
    task: str,
    args: dict[str, Any],
    options: JobOptions = DEFAULT_OPTIONS,
) -> int:
    """Insert one job in the connection's current transaction; return its id."""
    params = _insert_params(task, Jsonb(args), options)
    with translate_errors():
        row = conn.execute(queries.query("job_insert"), params).fetchone()
    if row is None:
        raise DatabaseError("the job was not inserted")
    return int(row[0])


class Inserted(NamedTuple):
    """The job that an enqueue with a unique key stands for."""

    id: int
    created: bool
    """False: a queued or running job already had the key, and `id` is that job."""


# Times to try the insert again when the job that held the unique key finished
# between the insert that yielded to it and the read of its id.
_UNIQUE_TRIES = 5


def insert_unique_job(
    conn: Connection,
    task: str,
    args: dict[str, Any],
    unique_key: str,
    options: JobOptions = DEFAULT_OPTIONS,
) -> Inserted:
    """Insert one job unless a queued or running job has `unique_key`.

    In the connection's current transaction, which must be READ COMMITTED (the
    default): each statement then sees what racing inserts committed.
    """
    params = {**_insert_params(task, Jsonb(args), options), "unique_key": unique_key}
    with translate_errors():
        for _ in range(_UNIQUE_TRIES):
            row = conn.execute(queries.query("job_insert_unique"), params).fetchone()
            if row is not None:
                return Inserted(int(row[0]), created=True)
            row = conn.execute(queries.query("job_get_unique"), params).fetchone()
            if row is not None:
                return Inserted(int(row[0]), created=False)
    raise DatabaseError(f"the jobs with unique key {unique_key!r} kept changing")


def insert_jobs(
    conn: Connection,
    task: str,
    args: Sequence[dict[str, Any]],
    options: JobOptions = DEFAULT_OPTIONS,
) -> list[int]:
    """Insert a job per element of `args`, with the same options, in one statement
    of the connection's current transaction; return their ids in the same order."""
    params = _insert_params(task, [Jsonb(a) for a in args], options)
    with translate_errors():
        rows = conn.execute(queries.query("job_insert_many"), params).fetchall()
    if len(rows) != len(args):
        raise DatabaseError("not every job was inserted")
    # Identity values grow in insertion order, which is the order of `args`.
    return sorted(int(row[0]) for row in rows)


def _insert_params(task: str, args: Any, options: JobOptions) -> dict[str, Any]:
    return {
        "task": task,
        "args": args,
        **options._asdict(),
        "delay": float(options.delay),
    }


def get_job(conn: Connection, job_id: int) -> dict[str, Any]:
    """Every column of one job, as a dict."""
    with translate_errors(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(queries.query("job_get"), {"id": job_id}).fetchone()
    if row is None:
        raise JobNotFound(f"no job with id {job_id}")
    return row


def cancel_job(conn: Connection, job_id: int) -> bool:
    """Cancel a queued job; False when it is not queued (any more)."""
    with translate_errors():
        row = conn.execute(queries.query("job_cancel"), {"id": job_id}).fetchone()
    return row is not None


def forget_result_field(conn: Connection, job_id: int, field: str) -> None:
    with translate_errors():
        conn.execute(queries.query("job_result_forget"), {"id": job_id, "field": field})


def clock_skew(conn: Connection) -> float:
    """Seconds the database's clock is ahead of this host's (negative: behind)."""
    before = time.time()
    with translate_errors():
        row = conn.execute(queries.query("clock_now")).fetchone()
    after = time.time()
    if row is None:
        raise DatabaseError("the database did not tell its time")
    db_now: datetime = row[0]
    return db_now.timestamp() - (before + after) / 2


class MovedJob(NamedTuple):
    """A job put back in the queue (or failed) because its attempt was cut off."""

    id: int
    task: str
    state: str
    attempts: int


class Claim(NamedTuple):
    """What one claim round trip brought back."""

    jobs: list[ClaimedJob]
    """The jobs claimed, in the order to run them."""
    recorded: set[int]
    """Of the successes passed in, those recorded: this runner still held them."""
    due_in: float | None
    """With no job claimed: seconds until the earliest queued job falls due (None:
    no job is queued)."""


def _claimed(row: tuple[Any, ...], now: float) -> ClaimedJob:
    job_id, task, args, queue, attempts, max_attempts, waited = row[:7]
    return ClaimedJob(
        job_id, task, args, queue, attempts, max_attempts, waited or 0.0, now
    )


class WorkerStore:
    """The queries one runner process runs, bound to its identity."""

    def __init__(self, worker_id: uuid.UUID) -> None:
        self.worker_id = worker_id
        self._hostname = socket.gethostname()
        # When the runner last recorded that it is alive (monotonic clock). The job
        # loop and the heartbeat thread both beat; each skips a beat the other made.
        self._last_beat = -math.inf
        # Server-side prepared statements for the hot path; off behind a pooler.
        self.prepare = True

    def heartbeat_due(self, within: float) -> bool:
        """Whether the runner has not recorded that it is alive for `within` s."""
        return time.monotonic() - self._last_beat >= within

    def heartbeat(self, conn: Connection) -> list[int]:
        """Record that this runner is alive; return the ids of the jobs it holds
        whose cancellation was requested."""
        params = {
            "worker_id": self.worker_id,
            "hostname": self._hostname,
            "pid": os.getpid(),
        }
        with translate_errors():
            rows = conn.execute(queries.query("worker_heartbeat"), params).fetchall()
        self._last_beat = time.monotonic()
        return [int(row[0]) for row in rows]

    def unregister(self, conn: Connection) -> None:
        with translate_errors():
            conn.execute(queries.query("worker_delete"), {"worker_id": self.worker_id})

    def claim(
        self, conn: Connection, queues: tuple[str, ...]
    ) -> tuple[ClaimedJob | None, float | None]:
        """Claim the next runnable job from `queues` (all when empty).

        Returns the job, or None and the seconds until the earliest queued job falls
        due (None when no job is queued).
        """
        claim = self.exchange(conn, queues, limit=1)
        return (claim.jobs[0] if claim.jobs else None), claim.due_in

    def exchange(
        self,
        conn: Connection,
        queues: tuple[str, ...],
        *,
        limit: int,
        done: Sequence[tuple[int, Any]] = (),
        beat: bool = False,
    ) -> Claim:
        """Record the successes in `done` (job id, result), then claim up to
        `limit` jobs from `queues` (all when empty), in one round trip; with `beat`,
        also record that the runner is alive.
        """
        params = self.claim_params(queues, limit=limit, done=done, beat=beat)
        with translate_errors():
            rows = conn.execute(
                queries.query("job_claim"), params, prepare=self.prepare
            ).fetchall()
        if not rows:
            raise DatabaseError("the claim returned no row")
        now = time.monotonic()
        if beat:
            self._last_beat = now
        first = rows[0]
        jobs = [_claimed(row, now) for row in rows if row[0] is not None]
        return Claim(jobs, set(first[7]), None if jobs else first[8])

    def claim_params(
        self,
        queues: tuple[str, ...],
        *,
        limit: int,
        done: Sequence[tuple[int, Any]] = (),
        beat: bool = False,
    ) -> dict[str, Any]:
        """The parameters of the `job_claim` query; see `exchange`."""
        return {
            "worker_id": self.worker_id,
            "any_queue": not queues,
            "queues": list(queues),
            "limit": limit,
            "done_ids": [job_id for job_id, _ in done],
            "results": [None if r is None else Jsonb(r) for _, r in done],
            "beat": beat,
            "hostname": self._hostname,
            "pid": os.getpid(),
        }

    def succeed(self, conn: Connection, job_id: int, result: Any) -> bool:
        """Record success; False when this runner no longer holds the claim."""
        params = {
            "id": job_id,
            "worker_id": self.worker_id,
            "result": None if result is None else Jsonb(result),
        }
        return self._finish(conn, "job_succeed", params)

    def retry(
        self, conn: Connection, job_id: int, error: str, delay: float
    ) -> str | None:
        """Put the job back after `delay` seconds; return its state now (cancelled
        when its cancellation was requested), None when the claim was lost."""
        params = {
            "id": job_id,
            "worker_id": self.worker_id,
            "error": error,
            "delay": delay,
        }
        with translate_errors():
            row = conn.execute(
                queries.query("job_retry"), params, prepare=self.prepare
            ).fetchone()
        return None if row is None else str(row[0])

    def fail(self, conn: Connection, job_id: int, error: str) -> bool:
        params = {"id": job_id, "worker_id": self.worker_id, "error": error}
        return self._finish(conn, "job_fail", params)

    def cancel_running(self, conn: Connection, job_id: int, error: str) -> bool:
        """Record that the handler was stopped on request; False: the claim was lost."""
        params = {"id": job_id, "worker_id": self.worker_id, "error": error}
        return self._finish(conn, "job_cancel_running", params)

    def release(
        self, conn: Connection, error: str, ids: Sequence[int] | None = None
    ) -> list[MovedJob]:
        """Put back in the queue, attempts not counted, the jobs `ids` if this
        runner holds them, or every job it holds."""
        return self._move_held(
            conn, "job_release", error, None if ids is None else list(ids)
        )

    def requeue_lost(self, conn: Connection, error: str) -> list[MovedJob]:
        """Put back the jobs held when the connection was lost, attempt counted."""
        return self._move_held(conn, "job_requeue_lost", error)

    def _move_held(
        self, conn: Connection, name: str, error: str, ids: list[int] | None = None
    ) -> list[MovedJob]:
        params = {"worker_id": self.worker_id, "error": error, "ids": ids}
        with translate_errors():
            rows = conn.execute(queries.query(name), params).fetchall()
        return [MovedJob(*row) for row in rows]

    def _finish(self, conn: Connection, name: str, params: dict[str, Any]) -> bool:
        with translate_errors():
            cur = conn.execute(queries.query(name), params, prepare=self.prepare)
        return cur.rowcount == 1


@dataclass(frozen=True)
class SweepSlot:
    """How a runner claims a periodic sweep; every duration in seconds."""

    name: str
    worker_id: uuid.UUID
    spacing: float
    """No pass starts sooner than this after the last one started."""
    stall_threshold: float
    """A pass whose runner has been silent this long is dead."""
    lease: float
    """A pass still running this long after its start is dead."""


def claim_sweep_slot(conn: Connection, slot: SweepSlot) -> bool:
    """Whether to run the sweep now; see the query for the rules."""
    params = {
        "sweep": slot.name,
        "worker_id": slot.worker_id,
        "interval": slot.spacing,
        "threshold": slot.stall_threshold,
        "lease": slot.lease,
    }
    with translate_errors():
        row = conn.execute(queries.query("sweep_claim_slot"), params).fetchone()
    return row is not None


def record_sweep_finished(conn: Connection, sweep: str, *, succeeded: bool) -> None:
    params = {"sweep": sweep, "succeeded": succeeded}
    with translate_errors():
        conn.execute(queries.query("sweep_finished"), params)


def rescue_stalled(conn: Connection, threshold: float) -> list[MovedJob]:
    """Requeue, or fail on their last attempt, the jobs of silent runners."""
    with translate_errors():
        rows = conn.execute(
            queries.query("job_rescue_stalled"), {"threshold": threshold}
        ).fetchall()
        conn.execute(queries.query("worker_forget_dead"), {"threshold": threshold})
    return [MovedJob(*row) for row in rows]


def prune_batch(
    conn: Connection, retention: float, batch: int, *, state: JobState
) -> int:
    """Delete up to `batch` jobs in the final `state` that finished before the
    retention; return how many."""
    params = {"state": state.value, "retention": retention, "batch": batch}
    with translate_errors():
        cur = conn.execute(queries.query("job_prune"), params)
    return cur.rowcount


# The unique key of a key's rotation jobs, followed by the key's id: the HTTP API
# and the automatic rotation share it, so that a key has one rotation in the queue.
ROTATION_KEY_PREFIX = "rotate_key:"


def rotation_key(key_id: int) -> str:
    """The unique key of the rotation jobs of the API key `key_id`."""
    return f"{ROTATION_KEY_PREFIX}{key_id}"


def api_key_expiry(
    conn: Connection, key_id: int
) -> tuple[bool, datetime | None] | None:
    """Whether the API key has expired, and its expiry; None when there is none."""
    with translate_errors():
        row = conn.execute(
            queries.query("api_key_expiry"), {"key_id": key_id}
        ).fetchone()
    return None if row is None else (bool(row[0]), row[1])


def enqueue_due_rotations(
    conn: Connection,
    age: float,
    batch: int,
    requested_by: str,
    recipient: str | None,
) -> list[tuple[int, int]]:
    """Enqueue a rotation of up to `batch` keys older than `age` seconds that are
    not expired and not rotated, oldest first; return (job id, key id) pairs.

    Each new secret is sealed to `recipient`, a public key; None: to nobody.
    """
    params = {
        "age": age,
        "batch": batch,
        "requested_by": requested_by,
        "recipient": recipient,
        "unique_prefix": ROTATION_KEY_PREFIX,
    }
    with translate_errors():
        rows = conn.execute(queries.query("job_insert_due_rotations"), params)
        return [(int(job_id), int(key_id)) for job_id, key_id in rows]
