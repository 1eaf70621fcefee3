"""Counting the committed effects of jobs: API key writes and `record` rows.

A trigger copies every committed write of a key's expiry into a table of the test's
own; the writes of a transaction that rolls back leave nothing there.
"""

from __future__ import annotations

from typing import Any

import psycopg

Connection = psycopg.Connection[Any]


def track(conn: Connection) -> None:
    """From now on, record every write of an API key's expiry."""
    conn.execute(
        """
        CREATE TABLE test_key_writes (key_id integer, expires_at timestamptz);

        CREATE FUNCTION test_key_write() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO test_key_writes VALUES (NEW.id, NEW.expires_at);
            RETURN NULL;
        END
        $$;

        CREATE TRIGGER test_key_write
            AFTER UPDATE OF expires_at ON control_plane.api_keys
            FOR EACH ROW EXECUTE FUNCTION test_key_write();
        """
    )


def rotations(conn: Connection, key_id: int) -> tuple[int, int]:
    """How many successors a key has, and how many writes set its expiry.

    A key rotated exactly once gives (1, 1). Needs `track` before the rotation.
    """
    row = conn.execute(
        "SELECT (SELECT count(*) FROM control_plane.api_keys"
        "        WHERE replaces_key_id = %(key)s),"
        "       (SELECT count(*) FROM test_key_writes WHERE key_id = %(key)s)",
        {"key": key_id},
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def effects(conn: Connection, job_id: int) -> int:
    """How many rows the `record` task committed for a job."""
    row = conn.execute(
        "SELECT count(*) FROM test_effects WHERE job_id = %s", (job_id,)
    ).fetchone()
    assert row is not None
    return int(row[0])
