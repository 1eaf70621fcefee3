"""The CLI's answers to bad input: one line on stderr and a non-zero exit."""

from __future__ import annotations

from tests.support import db
from tests.support.processes import run_cli


def one_line_error(done) -> str:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") or lines[0].startswith("Error: ")
    return lines[0]


def test_unknown_task(env, conn):
    assert "unknown task 'nope'" in one_line_error(run_cli(env, "enqueue", "nope"))
    assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (0,)


def test_malformed_arguments(env):
    assert "not valid JSON" in one_line_error(
        run_cli(env, "enqueue", "echo", "--args", "{nope")
    )
    assert "must be a JSON object" in one_line_error(
        run_cli(env, "enqueue", "echo", "--args", "[1]")
    )
    assert "name=value" in one_line_error(run_cli(env, "enqueue", "echo", "--arg", "x"))
    assert "unexpected argument" in one_line_error(
        run_cli(env, "enqueue", "echo", "stray")
    )
    assert "key_id" in one_line_error(run_cli(env, "enqueue", "rotate_key"))


def test_database_unreachable(env):
    env = {**env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    for args in (["enqueue", "echo"], ["migrate"], ["demo-keys"]):
        line = one_line_error(run_cli(env, *args))
        assert "127.0.0.1" in line or "connection" in line


def test_enqueue_options_are_stored(env, conn):
    done = run_cli(
        env,
        "enqueue",
        "echo",
        "--arg",
        "a=1",
        "--arg",
        "b=text",
        "--args",
        '{"c": [1, 2]}',
        "--queue",
        "mail",
        "--priority",
        "5",
        "--max-attempts",
        "2",
        "--flag",
    )
    assert done.returncode == 0, done.stderr
    job = db.job(conn, int(done.stdout))
    assert job["args"] == {"a": 1, "b": "text", "c": [1, 2], "flag": True}
    assert (job["queue"], job["priority"], job["max_attempts"]) == ("mail", 5, 2)


def test_migrate_twice_and_list_handlers(env):
    for _ in range(2):
        done = run_cli(env, "migrate")
        assert done.returncode == 0, done.stderr
        assert "schema version 1" in done.stdout
    listed = run_cli(env, "handlers")
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert {"noop", "rotate_key", "echo", "sleep"} <= set(names)


def test_demo_keys_creates_keys_to_rotate(env, conn):
    done = run_cli(env, "demo-keys", "--count", "3")
    assert done.returncode == 0, done.stderr
    ids = [int(line.split()[1]) for line in done.stdout.splitlines()]
    assert len(ids) == 3
    for key_id in ids:
        assert db.api_key(conn, key_id)["key_hash"]


def test_doctor_reports_a_healthy_database(env, start_runner):
    start_runner()
    done = run_cli(env, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert all(line.split()[0] in ("ok", "warn") for line in lines), lines
    for text in (
        "schema version 1",
        "notifications arrive",
        "claim index present",
        "jobs table",
        "1 runners alive",
    ):
        assert any(text in line for line in lines), (text, lines)


def test_doctor_fails_on_a_database_without_the_schema(env, conn):
    conn.execute("DROP SCHEMA runner CASCADE")
    done = run_cli(env, "doctor")
    assert done.returncode == 1
    assert "fail  schema version missing, expected 1: run `runner migrate`" in (
        done.stdout
    )
