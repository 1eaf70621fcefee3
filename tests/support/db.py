"""Reading the test database directly."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from handlers.rotate_key import create_key
from runner import store


def job(conn: psycopg.Connection[Any], job_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT *, state::text AS state FROM runner.jobs WHERE id = %s", (job_id,)
        ).fetchone()
    assert row is not None, f"no job {job_id}"
    return row


def job_state(conn: psycopg.Connection[Any], job_id: int) -> str:
    return str(job(conn, job_id)["state"])


def api_key(conn: psycopg.Connection[Any], key_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM control_plane.api_keys WHERE id = %s", (key_id,)
        ).fetchone()
    assert row is not None, f"no key {key_id}"
    return row


def successors(conn: psycopg.Connection[Any], key_id: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM control_plane.api_keys WHERE replaces_key_id = %s",
            (key_id,),
        ).fetchall()


def new_key(conn: psycopg.Connection[Any], **fields: Any) -> int:
    """A key as the control plane would have it; `expires_in` in seconds."""
    expires_in = fields.pop("expires_in", None)
    with conn.transaction():
        key_id, _, _ = create_key(conn, fields.pop("project_id", 7), **fields)
        if expires_in is not None:
            conn.execute(
                "UPDATE control_plane.api_keys"
                " SET expires_at = now() + make_interval(secs => %s) WHERE id = %s",
                (float(expires_in), key_id),
            )
    return key_id


def insert_job(
    conn: psycopg.Connection[Any], task: str, args: Any = None, **columns: Any
) -> int:
    """Insert a job with plain SQL, as any client could."""
    names = ["task", "args", *columns]
    statement = sql.SQL("INSERT INTO runner.jobs ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.Placeholder() * len(names)),
    )
    row = conn.execute(
        statement, [task, Jsonb(args or {}), *columns.values()]
    ).fetchone()
    assert row is not None
    return int(row[0])


def claim_params(queues: tuple[str, ...] = ()) -> dict[str, Any]:
    """Parameters of the `job_claim` query, for EXPLAIN: a claim of a full batch."""
    return store.WorkerStore(uuid.UUID(int=0)).claim_params(queues, limit=100)
