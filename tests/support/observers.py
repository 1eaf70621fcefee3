"""Watching the runners from inside the database.

Triggers copy each sweep's start and success, and each statement that deletes jobs,
into tables of the test's own. A sweep that finds nothing logs nothing, and the
runners' connections come and go, so the database is the one place that sees every
run, from every runner, in the order it happened.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import psycopg

Connection = psycopg.Connection[Any]


class SweepEvent(NamedTuple):
    """A sweep started (its slot was claimed) or succeeded, in the database's time."""

    name: str
    event: str
    at: datetime
    backend: int
    application: str


class DeleteBatch(NamedTuple):
    """One DELETE statement on runner.jobs."""

    xact: int
    backend: int
    application: str
    deleted: int
    unfinished: int
    newest_finished_at: datetime | None


def watch_sweeps(conn: Connection) -> None:
    """Record every claimed sweep slot and every recorded success from now on."""
    conn.execute(
        """
        CREATE TABLE test_sweep_events (
            id bigserial PRIMARY KEY,
            name text NOT NULL,
            event text NOT NULL,
            at timestamptz NOT NULL,
            backend integer NOT NULL,
            application text NOT NULL
        );

        CREATE FUNCTION test_sweep_event() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT'
               OR NEW.last_started_at IS DISTINCT FROM OLD.last_started_at THEN
                INSERT INTO test_sweep_events (name, event, at, backend, application)
                VALUES (NEW.name, 'started', NEW.last_started_at, pg_backend_pid(),
                        current_setting('application_name'));
            END IF;
            IF TG_OP = 'UPDATE'
               AND NEW.last_succeeded_at IS DISTINCT FROM OLD.last_succeeded_at THEN
                INSERT INTO test_sweep_events (name, event, at, backend, application)
                VALUES (NEW.name, 'succeeded', NEW.last_succeeded_at,
                        pg_backend_pid(), current_setting('application_name'));
            END IF;
            RETURN NULL;
        END
        $$;

        CREATE TRIGGER test_sweep_event
            AFTER INSERT OR UPDATE ON runner.sweeps
            FOR EACH ROW EXECUTE FUNCTION test_sweep_event();
        """
    )


def sweep_events(conn: Connection, name: str) -> list[SweepEvent]:
    """The recorded events of one sweep, in the order they happened."""
    rows = conn.execute(
        "SELECT name, event, at, backend, application FROM test_sweep_events"
        " WHERE name = %s ORDER BY id",
        (name,),
    ).fetchall()
    return [SweepEvent(*row) for row in rows]


def sweep_starts(conn: Connection, name: str) -> list[datetime]:
    """When each run of a sweep started, oldest first."""
    return [e.at for e in sweep_events(conn, name) if e.event == "started"]


def watch_deletes(conn: Connection) -> None:
    """Record every DELETE statement on runner.jobs from now on, with what it took."""
    conn.execute(
        """
        CREATE TABLE test_job_deletes (
            id bigserial PRIMARY KEY,
            xact bigint NOT NULL,
            backend integer NOT NULL,
            application text NOT NULL,
            deleted integer NOT NULL,
            unfinished integer NOT NULL,
            newest_finished_at timestamptz
        );

        CREATE FUNCTION test_job_delete() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO test_job_deletes
                (xact, backend, application, deleted, unfinished, newest_finished_at)
            SELECT txid_current(), pg_backend_pid(),
                   current_setting('application_name'), count(*),
                   count(*) FILTER (WHERE finished_at IS NULL), max(finished_at)
            FROM gone;
            RETURN NULL;
        END
        $$;

        CREATE TRIGGER test_job_delete
            AFTER DELETE ON runner.jobs
            REFERENCING OLD TABLE AS gone
            FOR EACH STATEMENT EXECUTE FUNCTION test_job_delete();
        """
    )


def delete_batches(conn: Connection) -> list[DeleteBatch]:
    """The recorded DELETE statements that removed at least one job, in order."""
    rows = conn.execute(
        "SELECT xact, backend, application, deleted, unfinished, newest_finished_at"
        " FROM test_job_deletes WHERE deleted > 0 ORDER BY id"
    ).fetchall()
    return [DeleteBatch(*row) for row in rows]


def deleted_total(conn: Connection) -> int:
    row = conn.execute("SELECT coalesce(sum(deleted), 0) FROM test_job_deletes")
    value = row.fetchone()
    assert value is not None
    return int(value[0])
