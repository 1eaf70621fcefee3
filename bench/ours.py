"""The measurements of the runner alone: enqueueing, key rotation, the claim's cost
against the backlog, the bare-SQL floor, and the cost of the notify triggers."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import sql

import runner
from bench.procs import REPO, python_env
from bench.server import Server
from bench.systems import System
from bench.workloads import Workspace
from runner import store
from runner.queries import query
from runner.sealing import Recipient

RUNNER_BIN = str(Path(sys.executable).with_name("runner"))


def enqueue_cli(system: System, ws: Workspace, count: int) -> float:
    """Jobs/s of `runner enqueue noop`, one process per job, run one after another."""
    with ws.database(system) as url:
        env = python_env(DATABASE_URL=url)
        started = time.perf_counter()
        for _ in range(count):
            subprocess.run(
                [RUNNER_BIN, "enqueue", "noop"],
                env=env,
                check=True,
                capture_output=True,
                cwd=REPO,
            )
        return count / (time.perf_counter() - started)


def enqueue_api(system: System, ws: Workspace, count: int) -> float:
    """Jobs/s of runner.enqueue on one autocommit connection: a commit per job."""
    with ws.database(system) as url, store.connect(url, autocommit=True) as conn:
        for _ in range(20):
            runner.enqueue("noop", {}, conn=conn)
        started = time.perf_counter()
        for _ in range(count):
            runner.enqueue("noop", {}, conn=conn)
        return count / (time.perf_counter() - started)


def enqueue_batch(system: System, ws: Workspace, count: int) -> float:
    """Jobs/s of one runner.enqueue_many call of `count` jobs, with its checks and
    its commit."""
    args = [{"n": n} for n in range(count)]
    with ws.database(system) as url:
        started = time.perf_counter()
        runner.enqueue_many("noop", args, database_url=url)
        return count / (time.perf_counter() - started)


# Key rotation


def rotation_template(system: System, ws: Workspace, keys: int) -> str:
    """A template database holding `keys` API keys, made with create_key."""
    from handlers.rotate_key import create_key

    name = ws.server.create_database("runner_keys", ws.template(system))
    with store.connect(ws.server.url(name)) as conn, conn.transaction():
        for n in range(keys):
            create_key(conn, 1 + n % 100, scopes=["read", "write"])
    return name


def fill_rotations(url: str, jobs: int) -> None:
    """One rotate_key job per key, each sealing its secret to one public key, as
    `runner enqueue rotate_key` does."""
    recipient = Recipient().public
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO runner.jobs (task, args) SELECT 'rotate_key',"
            " jsonb_build_object('key_id', id, 'recipient', %s::text)"
            " FROM control_plane.api_keys ORDER BY id LIMIT %s",
            (recipient, jobs),
        )


# The claim against the backlog


def build_backlog(system: System, ws: Workspace, finished: int, queued: int) -> str:
    """A database whose jobs table holds `finished` succeeded jobs, then `queued`
    runnable ones; returns its URL."""
    name = ws.server.create_database(f"runner_backlog_{finished}", ws.template(system))
    url = ws.server.url(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO runner.jobs"
            " (task, state, attempts, created_at, updated_at, run_at, finished_at)"
            " SELECT 'noop', 'succeeded', 1, t, t, t, t"
            " FROM generate_series(1, %s) AS n,"
            " LATERAL (SELECT now() - interval '1 day' + n * interval '1 ms') AS x(t)",
            (finished,),
        )
        conn.execute(
            "INSERT INTO runner.jobs (task) SELECT 'noop' FROM generate_series(1, %s)",
            (queued,),
        )
    return url


def claim_times(url: str, claims: int, warmup: int = 50) -> tuple[float, str]:
    """Median seconds of the runner's claim query, each claim followed (untimed) by
    its job's success, as in the runner's loop; VACUUM ANALYZE first. Also returns
    the index the claim's plan scans."""
    worker = store.WorkerStore(uuid.uuid4())
    times = []
    with store.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE runner.jobs")
        plan = "\n".join(
            str(row[0])
            for row in conn.execute(
                "EXPLAIN " + query("job_claim"),
                worker.claim_params((), limit=1),
            )
        )
        index = (
            m.group(1)
            if (m := re.search(r"Index Scan using (\w+) on jobs", plan))
            else "?"
        )
        for n in range(warmup + claims):
            started = time.perf_counter()
            job, _ = worker.claim(conn, ())
            elapsed = time.perf_counter() - started
            if job is None:
                raise RuntimeError("the backlog ran out of queued jobs")
            worker.succeed(conn, job.id, None)
            if n >= warmup:
                times.append(elapsed)
    return statistics.median(times), index


# The floor: bare SQL on a minimal jobs table

FLOOR_SETUP: list[LiteralString] = [
    "DROP TABLE IF EXISTS floor_jobs",
    "CREATE TABLE floor_jobs (id bigserial PRIMARY KEY,"
    " state text NOT NULL DEFAULT 'queued', args jsonb NOT NULL DEFAULT '{}',"
    " claimed_at timestamptz, finished_at timestamptz)",
    "CREATE INDEX floor_jobs_claim ON floor_jobs (id) WHERE state = 'queued'",
]
FLOOR_CLAIM_ONE = (
    "UPDATE floor_jobs SET state = 'running', claimed_at = now() WHERE id ="
    " (SELECT id FROM floor_jobs WHERE state = 'queued' ORDER BY id LIMIT 1"
    " FOR UPDATE SKIP LOCKED) RETURNING id"
)
FLOOR_COMPLETE_ONE = (
    "UPDATE floor_jobs SET state = 'done', finished_at = now() WHERE id = %s"
)
FLOOR_CLAIM_MANY = (
    "WITH c AS (SELECT id FROM floor_jobs WHERE state = 'queued' ORDER BY id"
    " LIMIT 100 FOR UPDATE SKIP LOCKED)"
    " UPDATE floor_jobs AS f SET state = 'running', claimed_at = now()"
    " FROM c WHERE f.id = c.id RETURNING f.id"
)
FLOOR_COMPLETE_MANY = (
    "UPDATE floor_jobs SET state = 'done', finished_at = now() WHERE id = ANY(%s)"
)
# The same pairs for pgbench, which passes values between statements with \gset.
PGBENCH_ONE = (
    FLOOR_CLAIM_ONE + " AS job_id \\gset\n"
    "UPDATE floor_jobs SET state = 'done', finished_at = now() WHERE id = :job_id;\n"
)
PGBENCH_MANY = (
    "WITH c AS (SELECT id FROM floor_jobs WHERE state = 'queued' ORDER BY id"
    " LIMIT 100 FOR UPDATE SKIP LOCKED),"
    " u AS (UPDATE floor_jobs AS f SET state = 'running', claimed_at = now()"
    " FROM c WHERE f.id = c.id RETURNING f.id)"
    " SELECT coalesce(array_agg(id), '{}')::text AS ids FROM u \\gset\n"
    "UPDATE floor_jobs SET state = 'done', finished_at = now()"
    " WHERE id = ANY (:ids::bigint[]);\n"
)


def floor_reset(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in FLOOR_SETUP:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO floor_jobs (args) SELECT '{}' FROM generate_series(1, %s)",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE floor_jobs")


def floor_rate(url: str) -> float:
    """Jobs/s from the table: completed jobs over first claim to last completion.

    Counted from the rows, not from the client: a run that empties the queue early
    does not count its empty transactions as jobs.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM max(finished_at) - min(claimed_at))"
            " FROM floor_jobs WHERE state = 'done'"
        ).fetchone()
    if row is None or not row[0] or not row[1]:
        return float("nan")
    return int(row[0]) / float(row[1])


def floor_psycopg(url: str, batch: bool, seconds: float) -> float:
    """Jobs/s of a tight psycopg loop over one autocommit connection."""
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            if batch:
                ids = [r[0] for r in conn.execute(FLOOR_CLAIM_MANY, prepare=True)]
                if not ids:
                    break
                conn.execute(FLOOR_COMPLETE_MANY, (ids,), prepare=True)
            else:
                row = conn.execute(FLOOR_CLAIM_ONE, prepare=True).fetchone()
                if row is None:
                    break
                conn.execute(FLOOR_COMPLETE_ONE, (row[0],), prepare=True)
    return floor_rate(url)


def floor_pgbench(
    server: Server, url: str, batch: bool, seconds: float, scratch: Path
) -> float:
    """Jobs/s of pgbench, one client, prepared statements, running the same pair."""
    if server.bin_dir is None or not (server.bin_dir / "pgbench").exists():
        raise RuntimeError("pgbench not found (it ships with the pgserver package)")
    script = scratch / ("floor-many.sql" if batch else "floor-one.sql")
    script.write_text(PGBENCH_MANY if batch else PGBENCH_ONE)
    result = subprocess.run(
        [
            str(server.bin_dir / "pgbench"),
            "-n",
            "-c",
            "1",
            "-M",
            "prepared",
            "-T",
            str(max(1, round(seconds))),
            "-f",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed: {result.stderr.strip()[-300:]}")
    return floor_rate(url)


# The notify triggers


def notify_setup(url: str) -> None:
    """A copy of runner.jobs with its columns, defaults, constraints and indexes, but
    not its triggers (LIKE copies no trigger)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.jobs_without_triggers (LIKE runner.jobs INCLUDING ALL)"
        )


def notify_insert(url: str, schema: str, table: str, rows: int) -> float:
    """Seconds of one INSERT ... SELECT of `rows` jobs into a table, and its commit."""
    name = sql.Identifier(schema, table)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(name))
        conn.execute("CHECKPOINT")
        started = time.perf_counter()
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (task) SELECT 'noop' FROM generate_series(1, %s)"
            ).format(name),
            (rows,),
        )
        return time.perf_counter() - started


def trigger_names(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows: list[Any] = conn.execute(
            "SELECT tgname FROM pg_trigger"
            " WHERE tgrelid = 'runner.jobs'::regclass AND NOT tgisinternal"
            " ORDER BY tgname"
        ).fetchall()
    return [str(r[0]) for r in rows]
