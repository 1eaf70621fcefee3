"""The default setup: no DATABASE_URL, an embedded PostgreSQL in a data directory."""

from __future__ import annotations

import json
import signal

from tests.support.processes import RunnerProcess, run_cli, runner_env, wait_until


def test_run_and_enqueue_share_the_embedded_database(tmp_path):
    env = runner_env("", RUNNER_DATA_DIR=str(tmp_path / "pgdata"))
    del env["DATABASE_URL"]
    keys = run_cli(env, "demo-keys", "--count", "2")
    assert keys.returncode == 0, keys.stderr
    key_id = keys.stdout.split()[1]

    runner = RunnerProcess(env, tmp_path / "runner.log")
    try:
        runner.wait_ready()
        assert "using the embedded PostgreSQL in" in runner.log()
        done = run_cli(env, "enqueue", "rotate_key", "--key-id", key_id, "--wait")
        assert done.returncode == 0, done.stderr
        assert '"outcome": "rotated"' in done.stdout
        assert runner.stop() == 0
    finally:
        runner.kill()


def test_an_unreachable_database_is_retried_not_fatal(tmp_path):
    env = runner_env("postgresql://nobody@127.0.0.1:1/none", RUNNER_LOG_FORMAT="json")
    runner = RunnerProcess(env, tmp_path / "runner.log")
    try:
        wait_until(
            lambda: runner.log().count('"action": "database_unavailable"') >= 2,
            message="two reconnection attempts",
        )
        assert runner.proc.poll() is None
        runner.signal(signal.SIGTERM)
        assert runner.stop() == 0
    finally:
        runner.kill()
    lines = [json.loads(line) for line in runner.log().splitlines()]
    assert all({"time", "level", "message"} <= set(line) for line in lines)
    assert "reconnecting in" in lines[1]["message"]
