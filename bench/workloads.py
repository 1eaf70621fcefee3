"""The measurements every system gets alike: drain, pick-up latency and idle cost.

Each run starts from a fresh copy of the system's template database, so no run sees
another's rows, and the worker is a real process measured from outside.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.procs import Process, Timeout, cpu_seconds, rss_mb, wait_until
from bench.server import Server
from bench.systems import System

# Seconds a drain of the full size may take before the run is given up.
DRAIN_TIMEOUT = 600.0
# How often the benchmark looks whether a drain has finished, in seconds. The rate
# comes from the jobs' own timestamps, so this only bounds the wait.
DRAIN_POLL = 0.1
# Seconds a started worker has to take its first job (peers import a lot).
READY_TIMEOUT = 60.0
# Seconds after the probe job before an idle window opens. An idle backend holds its
# transaction counts for up to 10 s before it reports them (PostgreSQL's
# PGSTAT_IDLE_INTERVAL), so the worker's start-up would otherwise be counted in
# the window.
IDLE_SETTLE = 11.0


class Workspace:
    """Template databases, one per system, and a folder for worker logs."""

    def __init__(self, server: Server, log_dir: Path) -> None:
        self.server = server
        self.log_dir = log_dir
        self._templates: dict[str, str] = {}

    def template(self, system: System) -> str:
        name = self._templates.get(system.name)
        if name is None:
            name = self.server.create_database(f"{system.name}_template")
            system.run("setup", self.server.url(name))
            self._templates[system.name] = name
        return name

    def add_template(self, key: str, name: str) -> None:
        self._templates[key] = name

    def named_template(self, key: str) -> str | None:
        return self._templates.get(key)

    @contextmanager
    def database(self, system: System, template: str | None = None) -> Iterator[str]:
        """A fresh database for one run, dropped afterwards; yields its URL."""
        name = self.server.create_database(
            system.name, template or self.template(system)
        )
        try:
            yield self.server.url(name)
        finally:
            self.server.drop_database(name)

    def log_path(self, label: str) -> Path:
        fd, path = tempfile.mkstemp(prefix=f"{label}-", suffix=".log", dir=self.log_dir)
        os.close(fd)
        return Path(path)


@contextmanager
def workers(
    system: System, url: str, ws: Workspace, count: int = 1, **env: str
) -> Iterator[list[Process]]:
    procs = [
        system.start_worker(url, ws.log_path(f"{system.name}-worker"), **env)
        for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def _wait_drained(
    system: System, conn: psycopg.Connection[Any], procs: list[Process], timeout: float
) -> None:
    def drained() -> bool:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(
                    f"{system.name} worker exited early:\n{proc.log_tail()}"
                )
        return system.remaining(conn) == 0

    wait_until(drained, timeout, f"{system.name} to drain", pause=DRAIN_POLL)


@dataclass
class DrainResult:
    rate: float
    jobs: int
    seconds: float
    rss_mb: float


def drain(
    system: System,
    ws: Workspace,
    jobs: int,
    processes: int = 1,
    fill: Callable[[str, int], None] | None = None,
    template: str | None = None,
) -> DrainResult:
    """Queue `jobs` jobs, start the workers, and time the drain from the database.

    The rate counts from the first job's finish to the last's, over jobs - 1 jobs:
    the runner clears a job's claim time when it finishes it, so the finish times
    are the timestamps that every system keeps.
    """
    with ws.database(system, template) as url:
        if fill is None:
            system.run("fill", url, str(jobs))
        else:
            fill(url, jobs)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE")
            with workers(system, url, ws, processes) as procs:
                _wait_drained(system, conn, procs, DRAIN_TIMEOUT)
                rss = rss_mb(procs[0].pid)
            count, first, last = system.finished(conn)
    if count != jobs:
        raise RuntimeError(f"{system.name}: {count} of {jobs} jobs succeeded")
    seconds = last - first
    return DrainResult((count - 1) / seconds, count, seconds, rss)


def _probe(
    system: System, url: str, conn: psycopg.Connection[Any], procs: list[Process]
) -> None:
    """Run one job through the worker: it is up, connected and listening."""
    system.run("probe", url)
    _wait_drained(system, conn, procs, READY_TIMEOUT)


def latency(
    system: System, ws: Workspace, count: int, interval_ms: float
) -> list[float]:
    """Milliseconds from each enqueue's commit to its handler's start."""
    marks = ws.log_path(f"{system.name}-marks")
    commits = ws.log_path(f"{system.name}-commits")
    with ws.database(system) as url, psycopg.connect(url, autocommit=True) as conn:
        with workers(system, url, ws, BENCH_MARKS_FILE=str(marks)) as procs:
            _probe(system, url, conn, procs)
            time.sleep(0.5)
            system.run("latency", url, str(count), str(interval_ms), str(commits))
            wait_until(
                lambda: len(marks.read_text().splitlines()) >= count,
                30,
                f"{system.name} to start every marked job",
            )
    started = _read_times(marks)
    committed = _read_times(commits)
    missing = set(committed) - set(started)
    if missing:
        raise Timeout(f"{system.name}: {len(missing)} marked jobs never started")
    return [(started[key] - committed[key]) * 1000 for key in sorted(committed)]


def _read_times(path: Path) -> dict[int, float]:
    times = {}
    for line in path.read_text().splitlines():
        key, at = line.split()
        times[int(key)] = float(at)
    return times


@dataclass
class IdleResult:
    cpu_seconds: float
    transactions: int
    seconds: float


def idle(system: System, ws: Workspace, seconds: float) -> IdleResult:
    """The CPU time of an idle worker, and the transactions it causes, over `seconds`.

    Transactions are read from pg_stat_database for the worker's own database, to
    which nothing else is connected during the window; the reading connection
    goes to another database.
    """
    with ws.database(system) as url, psycopg.connect(url, autocommit=True) as conn:
        dbname = conn.info.dbname
        with workers(system, url, ws) as procs:
            _probe(system, url, conn, procs)
            conn.close()
            time.sleep(IDLE_SETTLE)
            pid = procs[0].pid
            cpu_before, xacts_before = cpu_seconds(pid), _transactions(ws, dbname)
            started = time.monotonic()
            time.sleep(seconds)
            cpu_after, xacts_after = cpu_seconds(pid), _transactions(ws, dbname)
            elapsed = time.monotonic() - started
    return IdleResult(cpu_after - cpu_before, xacts_after - xacts_before, elapsed)


def _transactions(ws: Workspace, dbname: str) -> int:
    with psycopg.connect(ws.server.admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = %s",
            (dbname,),
        ).fetchone()
    return int(row[0]) if row else 0
