"""The database's clock is the only clock: a runner on a host whose clock is wrong."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tests.support import db
from tests.support.faketime import faketime_env
from tests.support.processes import run_cli, wait_until

# Several minutes off, both ways; longer than any deadline the test waits for.
SKEWS = {"-7m": "behind", "+7m": "ahead of"}
DELAY = 2.0


def actions(log: str, action: str) -> list[dict[str, object]]:
    lines = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return [entry for entry in lines if entry.get("action") == action]


@pytest.mark.parametrize("offset", list(SKEWS))
def test_jobs_follow_the_database_clock(conn, env, start_runner, offset):
    clock = {**faketime_env(offset), "RUNNER_LOG_FORMAT": "json"}
    runner = start_runner(**clock)

    (warning,) = actions(runner.log(), "clock_skew")
    assert warning["level"] == "warning"
    assert f"s {SKEWS[offset]} the database's" in str(warning["message"])

    # Enqueued from the skewed host too: the database computes the run time.
    done = run_cli({**env, **clock}, "enqueue", "echo", "--arg", "n=1", "--delay", "2")
    assert done.returncode == 0, done.stderr
    delayed = int(done.stdout)
    job = db.job(conn, delayed)
    assert job["run_at"] - job["created_at"] == timedelta(seconds=DELAY)

    # With the host's own clock: `--wait` sleeps, which libfaketime breaks.
    key_id = db.new_key(conn)
    rotate = ["rotate_key", "--key-id", str(key_id), "--wait", "--timeout", "120"]
    done = run_cli(env, "enqueue", *rotate)
    assert done.returncode == 0, done.stderr
    assert "new secret (shown once, store it now): rk_" in done.stdout
    rotation = db.job(conn, int(done.stdout.splitlines()[0]))
    old_key = db.api_key(conn, key_id)
    # The handler's expiry and the job's finish share the transaction's now().
    assert old_key["expires_at"] - rotation["finished_at"] == timedelta(hours=24)
    assert rotation["result"]["old_key_expires_at"] == old_key["expires_at"].isoformat()
    (successor,) = db.successors(conn, key_id)
    assert successor["created_at"] == rotation["finished_at"]

    # Neither at once nor seven minutes late: due by the database's clock.
    wait_until(
        lambda: db.job_state(conn, delayed) == "succeeded",
        timeout=120,
        message="the delayed job to succeed",
    )
    job = db.job(conn, delayed)
    assert job["attempts"] == 1
    assert job["finished_at"] >= job["run_at"]

    # Heartbeats in the database's time, not seven minutes off: other runners never
    # take this one for dead.
    (off_by,) = conn.execute(
        "SELECT max(abs(extract(epoch FROM now() - last_seen_at))) FROM runner.workers"
    ).fetchone()
    assert off_by < 60
    assert actions(runner.log(), "job_rescued") == []
    assert runner.stop() == 0
