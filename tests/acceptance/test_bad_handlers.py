"""Handlers that misbehave fail their job, never the runner."""

from __future__ import annotations

import pytest

from tests.support import db
from tests.support.processes import wait_until


def finished(conn, job_id: int) -> dict:
    wait_until(
        lambda: db.job_state(conn, job_id) in ("succeeded", "failed"),
        message=f"job {job_id} to finish",
    )
    return db.job(conn, job_id)


@pytest.mark.parametrize("how", ["sys.exit", "keyboard"])
def test_a_handler_that_exits_fails_its_attempt(conn, start_runner, how):
    runner = start_runner()
    job_id = db.insert_job(conn, "exit_now", {"how": how}, max_attempts=2)
    after = db.insert_job(conn, "echo")
    job = finished(conn, job_id)
    assert (job["state"], job["attempts"]) == ("failed", 2)
    assert job["last_error"].startswith(("SystemExit", "KeyboardInterrupt"))
    assert finished(conn, after)["state"] == "succeeded"
    assert runner.proc.poll() is None


@pytest.mark.parametrize("kind", ["nan", "nul", "surrogate", "set", "huge"])
def test_a_result_that_cannot_be_stored_is_noted_not_retried(conn, start_runner, kind):
    start_runner()
    job_id = db.insert_job(conn, "odd_result", {"kind": kind})
    job = finished(conn, job_id)
    assert (job["state"], job["attempts"]) == ("succeeded", 1)
    assert "the handler's result was not stored" in job["result"]["unstored_result"]
