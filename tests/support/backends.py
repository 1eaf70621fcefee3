"""The runner's connections as the server sees them, in pg_stat_activity.

The runner names each connection (application_name) after its role.
"""

from __future__ import annotations

from typing import Any

import psycopg

Connection = psycopg.Connection[Any]

LISTENER = "runner listener"
WORKER = "runner worker"
SCHEDULER = "runner scheduler"


def by_name(conn: Connection) -> dict[str, set[int]]:
    """The runner's backends on this database: their pids by application name."""
    rows = conn.execute(
        "SELECT application_name, pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'runner %%'"
    ).fetchall()
    found: dict[str, set[int]] = {}
    for name, pid in rows:
        found.setdefault(name, set()).add(pid)
    return found


def terminate(conn: Connection, names: tuple[str, ...]) -> set[str]:
    """Terminate the backends of these names on this database; return the names hit."""
    # Materialized, so that no plan can terminate a backend before choosing it.
    rows = conn.execute(
        "WITH chosen AS MATERIALIZED ("
        "    SELECT pid, application_name FROM pg_stat_activity"
        "    WHERE datname = current_database() AND application_name = ANY(%s))"
        " SELECT application_name FROM chosen WHERE pg_terminate_backend(pid)",
        (list(names),),
    ).fetchall()
    return {name for (name,) in rows}


def last_statement(conn: Connection, name: str) -> str:
    """The statement that the backend of this name runs or ran last; "" if none."""
    row = conn.execute(
        "SELECT query FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s",
        (name,),
    ).fetchone()
    return "" if row is None else str(row[0])


def waits_for_lock(conn: Connection, statement: str, name: str = WORKER) -> bool:
    """Whether the backend of this name waits for a lock in a statement containing
    `statement`."""
    return _matches(conn, name, "active", statement, waiting=True)


def in_transaction_after(conn: Connection, statement: str, name: str = WORKER) -> bool:
    """Whether the backend of this name is inside a transaction (for the job loop: a
    transactional handler runs) whose last statement contains `statement`."""
    return _matches(conn, name, "idle in transaction", statement, waiting=False)


def _matches(
    conn: Connection, name: str, state: str, statement: str, *, waiting: bool
) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s"
        " AND state = %s AND coalesce(wait_event_type = 'Lock', false) = %s"
        " AND position(%s IN query) > 0",
        (name, state, waiting, statement),
    ).fetchone()
    return row is not None and row[0] > 0
