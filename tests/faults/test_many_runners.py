"""Many `runner run` processes on one database: each job once, each sweep once."""

from __future__ import annotations

import re
import signal
import subprocess
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from tests.support import observers
from tests.support.processes import REPO, RUNNER, run_cli, wait_until

JOBS = 5000
# Sweep intervals in seconds, short so that a test sees many intervals go by.
RESCUE_INTERVAL = 1.0
PRUNE_INTERVAL = 2.0
# A runner may take a sweep's slot a little early (see runner.scheduler._sweep).
SLOT_FRACTION = 0.9
# Intervals of the rescuer to watch, at the least.
WATCHED_RESCUES = 8


def db_now(conn) -> datetime:
    return conn.execute("SELECT now()").fetchone()[0]


def insert_record_jobs(conn, count: int) -> None:
    """Insert `count` jobs of the transactional `record` task in one statement."""
    conn.execute(
        "INSERT INTO runner.jobs (task, args)"
        " SELECT 'record', jsonb_build_object('label', 'job ' || n)"
        " FROM generate_series(1, %s) AS n",
        (count,),
    )


def succeeded(conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM runner.jobs WHERE state = 'succeeded'"
    ).fetchone()
    return int(row[0])


def starts_after(conn, name: str, since: datetime) -> list[datetime]:
    return [at for at in observers.sweep_starts(conn, name) if at > since]


def check_sweep_runs(
    conn, name: str, interval: float, since: datetime, until: datetime
) -> None:
    """The sweep ran once per interval in total, whatever the number of runners."""
    starts = observers.sweep_starts(conn, name)
    shortest = timedelta(seconds=round(SLOT_FRACTION * interval, 6))
    gaps = [later - earlier for earlier, later in pairwise(starts)]
    assert all(gap >= shortest for gap in gaps), (name, min(gaps), starts)

    # N intervals hold N + 1 runs, or a few more as runs may come a little early.
    window = [at for at in starts if since < at <= until]
    intervals = (until - since).total_seconds() / interval
    assert len(window) <= intervals / SLOT_FRACTION + 1, (name, intervals, window)


@pytest.mark.parametrize("runners", [2, pytest.param(8, marks=pytest.mark.slow)])
def test_runners_share_the_jobs_and_the_sweeps(conn, start_runner, runners):
    observers.watch_sweeps(conn)
    procs = [
        start_runner(
            ready=False,
            RUNNER_RESCUE_INTERVAL=str(RESCUE_INTERVAL),
            RUNNER_PRUNE_INTERVAL=str(PRUNE_INTERVAL),
        )
        for _ in range(runners)
    ]
    for proc in procs:
        proc.wait_ready(timeout=60)
    since = db_now(conn)

    insert_record_jobs(conn, JOBS)
    wait_until(
        lambda: succeeded(conn) == JOBS, timeout=600, message=f"{JOBS} jobs to succeed"
    )
    wait_until(
        lambda: len(starts_after(conn, "rescuer", since)) >= WATCHED_RESCUES,
        timeout=60,
        message=f"{WATCHED_RESCUES} rescuer runs",
    )
    until = db_now(conn)
    # One SIGTERM each, all at once; RunnerProcess.stop would send a second.
    for proc in procs:
        proc.signal(signal.SIGTERM)
    assert [proc.proc.wait(60) for proc in procs] == [0] * runners

    states = conn.execute(
        "SELECT state::text, attempts, count(*) FROM runner.jobs GROUP BY 1, 2"
    ).fetchall()
    assert states == [("succeeded", 1, JOBS)]
    effects = conn.execute(
        "SELECT count(*), count(DISTINCT e.job_id) FROM test_effects AS e"
        " JOIN runner.jobs AS j ON j.id = e.job_id AND j.args->>'label' = e.label"
    ).fetchone()
    assert effects == (JOBS, JOBS)
    assert conn.execute("SELECT count(*) FROM test_effects").fetchone() == (JOBS,)

    # Every job was run by one runner alone, and every runner took a share.
    done = [re.findall(r"job (\d+) \(record\) succeeded", p.log()) for p in procs]
    assert all(done), [len(ids) for ids in done]
    every_id = [job_id for ids in done for job_id in ids]
    assert len(every_id) == len(set(every_id)) == JOBS

    check_sweep_runs(conn, "rescuer", RESCUE_INTERVAL, since, until)
    check_sweep_runs(conn, "pruner", PRUNE_INTERVAL, since, until)
    assert conn.execute("SELECT count(*) FROM runner.workers").fetchone() == (0,)


OTHER_APPLICATIONS = (
    "SELECT application_name FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def threads_of(pid: int) -> int | None:
    """The number of threads of a live process, or None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    match = re.search(r"^Threads:\s+(\d+)$", status, re.MULTILINE)
    return int(match[1]) if match else None


def test_cli_commands_never_start_a_scheduler(conn, env):
    applications: set[str] = set()
    thread_counts: set[int] = set()
    job_counts: set[int] = set()

    def look(proc: subprocess.Popen[str]) -> bool:
        """Note what the running command shows; True once it has exited."""
        threads = threads_of(proc.pid)
        if threads is not None and proc.poll() is None:
            thread_counts.add(threads)
        applications.update(name for (name,) in conn.execute(OTHER_APPLICATIONS))
        (jobs,) = conn.execute("SELECT count(*) FROM runner.jobs").fetchone()
        job_counts.add(jobs)
        return proc.poll() is not None

    # No runner: the job stays queued and the command waits until its time-out.
    with subprocess.Popen(
        [RUNNER, "enqueue", "echo", "--arg", "n=1", "--wait", "--timeout", "3"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as waiting:
        wait_until(lambda: look(waiting), timeout=60, message="enqueue --wait")
        _, stderr = waiting.communicate()
    assert waiting.returncode == 1
    assert "still queued after 3 s" in stderr
    assert 1 in job_counts, "the job was never seen while the command waited"
    assert "runner" in applications, "the waiting command was never seen"
    assert "runner scheduler" not in applications
    # One thread: no scheduler thread and no pool of its executors.
    assert thread_counts == {1}

    for command in (
        ["migrate"],
        ["handlers"],
        ["database-url"],
        ["demo-keys", "--count", "1"],
        ["enqueue", "echo", "--arg", "n=2"],
        ["jobs", "list"],
        ["jobs", "stats"],
    ):
        done = run_cli(env, *command)
        assert done.returncode == 0, (command, done.stderr)

    assert conn.execute("SELECT count(*) FROM runner.workers").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM runner.sweeps").fetchone() == (0,)
