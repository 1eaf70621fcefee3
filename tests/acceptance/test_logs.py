"""The log of `runner run` with JSON lines: one event per line, each with an action,
job events with the job's id, task and attempt, and silence while idle."""

from __future__ import annotations

import json
import socket
from typing import Any

from tests.support import db
from tests.support.processes import run_cli, wait_until

JSON = {"RUNNER_LOG_FORMAT": "json"}
# Fields that place a line in the life of one job.
JOB_FIELDS = ("job_id", "task", "attempt")


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every line as a JSON object with an action; fails on the first that is not."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), f"line {number} is not an object: {line!r}"
        assert entry.get("action"), f"line {number} has no action: {line!r}"
        entries.append(entry)
    return entries


def settled(conn, job_ids: list[int]) -> bool:
    return all(
        db.job_state(conn, job_id) in ("succeeded", "failed") for job_id in job_ids
    )


def test_every_line_is_one_json_event_and_job_lines_name_the_job(conn, start_runner):
    with conn.transaction():
        jobs = [
            db.insert_job(conn, "echo", {"n": 1}),
            db.insert_job(conn, "flaky", {"succeed_on": 2}),
            db.insert_job(conn, "fail", {"message": "two\nlines"}, max_attempts=1),
            db.insert_job(conn, "fail_permanently"),
            db.insert_job(conn, "hang", max_attempts=1),
            db.insert_job(conn, "no_such_task"),
        ]
    runner = start_runner(**JSON)
    wait_until(lambda: settled(conn, jobs), message="every job to finish")
    assert runner.stop() == 0

    entries = parse_lines(runner.log())
    actions = {entry["action"] for entry in entries}
    assert {
        "worker_starting",
        "worker_listening",
        "job_started",
        "job_succeeded",
        "job_retried",
        "job_failed",
        "worker_stopping",
        "worker_stopped",
    } <= actions
    assert "unstructured" not in actions
    for entry in entries:
        if entry["action"].startswith("job_"):
            missing = [name for name in JOB_FIELDS if name not in entry]
            assert not missing, f"{entry} lacks {missing}"
    started = [e["job_id"] for e in entries if e["action"] == "job_started"]
    assert sorted(set(started)) == sorted(jobs)


def test_a_handlers_own_lines_name_the_job(conn, start_runner):
    key_id = db.new_key(conn)
    runner = start_runner(**JSON)
    first = db.insert_job(conn, "rotate_key", {"key_id": key_id})
    wait_until(lambda: settled(conn, [first]), message="the first rotation")
    # The second rotation of the key is one that the handler itself logs.
    again = db.insert_job(conn, "rotate_key", {"key_id": key_id})
    wait_until(lambda: settled(conn, [again]), message="the second rotation")
    assert runner.stop() == 0

    [entry] = [
        e for e in parse_lines(runner.log()) if e["action"] == "key_already_rotated"
    ]
    assert {name: entry.get(name) for name in JOB_FIELDS} == {
        "job_id": again,
        "task": "rotate_key",
        "attempt": 1,
    }


def test_an_idle_runner_writes_nothing_after_starting(conn, start_runner):
    runner = start_runner(**JSON, RUNNER_PRUNE_INTERVAL="0.5")
    start_lines = runner.log()
    parse_lines(start_lines)

    def sweeps_done() -> dict[str, float]:
        rows = conn.execute(
            "SELECT name, extract(epoch FROM last_succeeded_at) FROM runner.sweeps"
        ).fetchall()
        done = {name: float(at) for name, at in rows if at is not None}
        return done if len(done) == 2 else {}

    # Idle for several poll intervals (1 s), rescues and prunes (0.5 s each),
    # each of which must stay silent.
    first = wait_until(sweeps_done, message="both sweeps")
    wait_until(
        lambda: all(at >= first[name] + 3 for name, at in sweeps_done().items()),
        timeout=30,
        message="3 s more of sweeps",
    )
    assert runner.log() == start_lines
    assert runner.stop() == 0
    parse_lines(runner.log())


def test_a_fatal_error_at_start_is_a_json_line(env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(
            {**env, **JSON, "RUNNER_METRICS_PORT": str(port)}, "run", timeout=30
        )
    assert done.returncode == 1
    assert done.stdout == ""
    [entry] = parse_lines(done.stderr)
    assert entry["level"] == "error"
    assert f"cannot serve metrics on 127.0.0.1:{port}" in entry["message"]
