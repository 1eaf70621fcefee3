"""The CLI's answers to bad input: one line on stderr and a non-zero exit."""

from __future__ import annotations

from runner import store
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


def test_enqueue_with_a_unique_key_prints_the_queued_job(env, conn):
    key_id = db.new_key(conn)
    first = run_cli(env, "enqueue", "echo", "--unique-key", "daily")
    again = run_cli(env, "enqueue", "echo", "--unique-key", "daily")
    rotation = ["enqueue", "rotate_key", "--key-id", str(key_id)]
    sealed = run_cli(env, *rotation, "--unique-key", f"rotate_key:{key_id}")
    not_ours = run_cli(env, *rotation, "--unique-key", f"rotate_key:{key_id}")

    assert first.returncode == again.returncode == 0, again.stderr
    assert first.stdout == again.stdout
    assert again.stderr == (
        f"job {int(first.stdout)} with unique key 'daily' is already queued or "
        "running: nothing enqueued\n"
    )
    assert not_ours.returncode == 0, not_ours.stderr
    assert not_ours.stdout == sealed.stdout
    assert "sealed to whoever enqueued it, not to you" in not_ours.stderr
    assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (2,)


def test_migrate_twice_and_list_handlers(env):
    for _ in range(2):
        done = run_cli(env, "migrate")
        assert done.returncode == 0, done.stderr
        assert f"schema version {store.SCHEMA_VERSION}" in done.stdout
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
        f"schema version {store.SCHEMA_VERSION}",
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
    expected = store.SCHEMA_VERSION
    assert (
        f"fail  schema version missing, expected {expected}: run `runner migrate`"
        in (done.stdout)
    )


def test_option_errors_are_one_line_with_status_2(env, conn):
    for args in (
        ["enqueue", "echo", "--priority", "abc"],
        ["enqueue", "echo", "--priority", "99999999999"],
        ["enqueue", "echo", "--max-attempts", "0"],
        ["enqueue", "echo", "--delay", "-1"],
        ["enqueue", "echo", "--run-at", "tomorrow"],
        ["enqueue", "echo", "--timeout", "3"],
        ["enqueue", "echo", "--delay", "3", "--run-at", "2030-01-01T00:00:00"],
        ["no-such-command"],
    ):
        done = run_cli(env, *args)
        assert done.returncode == 2, (args, done.stderr)
        one_line_error(done)
    assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (0,)


def test_values_the_handler_rejects_are_refused_before_enqueue(env, conn):
    for args in (
        ["--key-id", "-5"],
        ["--key-id", "0"],
        ["--key-id", "1", "--grace-hours", "-1"],
        ["--key-id", "1", "--grace-hours", "1000"],
        ["--key-id", "1", "--grace-hours", "NaN"],
        ["--key-id", "1", "--recipient", "notbase64"],
    ):
        line = one_line_error(run_cli(env, "enqueue", "rotate_key", *args))
        assert "invalid arguments for 'rotate_key'" in line or "JSON" in line, line
    assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (0,)


def test_run_at_without_an_offset_is_utc(env, conn):
    done = run_cli(
        {**env, "TZ": "America/New_York"},
        "enqueue",
        "echo",
        "--run-at",
        "2030-12-24T18:00:00",
    )
    assert done.returncode == 0, done.stderr
    run_at = db.job(conn, int(done.stdout))["run_at"]
    assert run_at.isoformat().startswith("2030-12-24T18:00:00")
    assert run_at.utcoffset().total_seconds() == 0


def test_bad_runner_settings_are_refused(env):
    for args in (
        ["run", "--stall-threshold", "0"],
        ["run", "--poll-interval", "0"],
        ["run", "--job-timeout", "0"],
        ["run", "--heartbeat-interval", "30", "--stall-threshold", "45"],
    ):
        line = one_line_error(run_cli(env, *args))
        assert "must be" in line, line


def test_a_broken_handler_module_is_one_line(env, tmp_path):
    (tmp_path / "broken_jobs.py").write_text("def oops(:\n")
    done = run_cli(
        {**env, "PYTHONPATH": f"{tmp_path}:{env['PYTHONPATH']}"},
        "--import",
        "broken_jobs",
        "handlers",
    )
    assert "cannot import handler module 'broken_jobs'" in one_line_error(done)


def test_malformed_arguments_are_usage_errors(env):
    assert run_cli(env, "enqueue", "echo", "--args", "{nope").returncode == 2
    assert run_cli(env, "enqueue", "echo", "--arg", "x").returncode == 2


def test_an_argument_given_twice_is_refused(env, conn):
    done = run_cli(
        env, "enqueue", "rotate_key", "--key-id", "1", "--args", '{"key_id": 2}'
    )
    assert "the argument 'key_id' is given twice" in one_line_error(done)
    assert done.returncode == 2
    assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (0,)


def test_run_times_outside_the_calendar_are_refused(env, conn):
    for when in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
        line = one_line_error(run_cli(env, "enqueue", "echo", "--run-at", when))
        assert "years 1 to 9999" in line
    assert "100 years" in one_line_error(
        run_cli(env, "enqueue", "echo", "--delay", "1e12")
    )
    assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (0,)


def test_spans_out_of_range_are_one_line_errors(env):
    for since in ("1000000000d", "9999-12-31T23:59:59-14:00"):
        for command in ("list", "stats"):
            done = run_cli(env, "jobs", command, "--since", since)
            assert "is out of range" in one_line_error(done)


def test_an_embedded_folder_that_cannot_be_made(env, tmp_path):
    env = {k: v for k, v in env.items() if k != "DATABASE_URL"}
    done = run_cli(env, "--data-dir", "/proc/nope/pg", "jobs", "list")
    assert "cannot make the embedded PostgreSQL's folder" in one_line_error(done)
