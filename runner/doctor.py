"""The doctor: checks a deployment and reports one finding per line."""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from runner import store
from runner.errors import DatabaseError
from runner.listener import Listener
from runner.queries import query

# Host and database clocks further apart than this, in seconds, are a finding.
CLOCK_SKEW_LIMIT = 5.0
# A table whose dead rows outnumber live ones this many times needs a vacuum.
DEAD_ROW_RATIO_LIMIT = 1.0


class Level(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    level: Level
    text: str

    def __str__(self) -> str:
        return f"{self.level.value:<4}  {self.text}"


Check = Callable[[store.Connection], Finding]


def examine(
    database_url: str, listen_database_url: str | None = None
) -> Iterator[Finding]:
    """Run every check; a database that cannot be reached is the only finding."""
    try:
        conn = store.connect(database_url, application_name="runner doctor", timeout=5)
    except DatabaseError as exc:
        yield Finding(Level.FAIL, f"cannot reach {store.describe(database_url)}: {exc}")
        return
    with conn:
        yield Finding(Level.OK, f"connected to {store.describe(database_url)}")
        version = store.schema_version(conn)
        if version != store.SCHEMA_VERSION:
            yield Finding(
                Level.FAIL,
                f"schema version {version or 'missing'}, expected "
                f"{store.SCHEMA_VERSION}: run `runner migrate`",
            )
            return
        yield Finding(Level.OK, f"schema version {version}")
        yield _notifications(conn, listen_database_url or database_url)
        checks: list[Check] = [
            _pooling,
            _clock,
            _claim_index,
            _table,
            _oldest_queued,
            _workers,
        ]
        for check in checks:
            with store.translate_errors():
                yield check(conn)


def _notifications(conn: store.Connection, listen_url: str) -> Finding:
    read_end, write_end = os.pipe()
    listener = Listener(listen_url, read_end)
    try:
        listener.connect()
        arrive = listener.notifications_arrive(conn)
    finally:
        listener.close()
        os.close(read_end)
        os.close(write_end)
    if arrive:
        return Finding(Level.OK, "notifications arrive")
    return Finding(
        Level.FAIL,
        "notifications do not arrive: a pooler in transaction mode drops them; "
        "runners fall back to polling. Set RUNNER_LISTEN_DATABASE_URL to a direct "
        "connection",
    )


def _pooling(conn: store.Connection) -> Finding:
    """Transaction pooling shows as a backend that changes between transactions."""
    pids = {conn.execute(query("backend_pid")).fetchone() for _ in range(5)}
    if len(pids) > 1:
        return Finding(
            Level.WARN,
            "pooler in transaction mode: each transaction may run on another server "
            "connection (prepared statements are turned off behind it)",
        )
    return Finding(Level.OK, "no transaction pooling seen (session or direct)")


def _clock(conn: store.Connection) -> Finding:
    skew = store.clock_skew(conn)
    text = f"host clock differs from the database's by {skew:+.3f} s"
    if abs(skew) > CLOCK_SKEW_LIMIT:
        return Finding(Level.WARN, text + " (the runner uses the database's)")
    return Finding(Level.OK, text)


def _claim_index(conn: store.Connection) -> Finding:
    row = conn.execute(query("doctor_claim_index")).fetchone()
    if row is None or not row[0]:
        return Finding(Level.FAIL, "claim index runner.jobs_claim_idx is missing")
    return Finding(Level.OK, "claim index present")


def _table(conn: store.Connection) -> Finding:
    row = conn.execute(query("doctor_table")).fetchone()
    if row is None:
        return Finding(Level.WARN, "no statistics for runner.jobs yet")
    size, live, dead = row
    text = f"jobs table {size / 1048576:.1f} MiB, {live} live rows, {dead} dead rows"
    if dead > max(live, 1000) * DEAD_ROW_RATIO_LIMIT:
        return Finding(Level.WARN, text + ": autovacuum is falling behind")
    return Finding(Level.OK, text)


def _oldest_queued(conn: store.Connection) -> Finding:
    row = conn.execute(query("doctor_oldest_queued")).fetchone()
    count, age = row if row else (0, None)
    if not count:
        return Finding(Level.OK, "no runnable job is waiting")
    return Finding(Level.OK, f"{count} runnable jobs, the oldest waiting {age:.1f} s")


def _workers(conn: store.Connection) -> Finding:
    row = conn.execute(query("doctor_workers")).fetchone()
    alive, known = row if row else (0, 0)
    if not alive:
        return Finding(Level.WARN, "no runner has shown it is alive in the last minute")
    return Finding(Level.OK, f"{alive} runners alive ({known} registered)")
