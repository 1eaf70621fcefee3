"""`runner jobs`: listing, inspecting, retrying, cancelling and counting jobs, with
the real `runner` commands and a real `runner run`."""

from __future__ import annotations

import json
import re

from handlers.rotate_key import hash_secret
from tests.acceptance.test_cli import one_line_error
from tests.support import db
from tests.support.processes import run_cli, wait_until


def final_state(conn, job_id: int) -> dict:
    wait_until(
        lambda: db.job_state(conn, job_id) in ("succeeded", "failed", "cancelled"),
        message=f"job {job_id} to finish",
    )
    return db.job(conn, job_id)


def ok(env, *args: str) -> str:
    done = run_cli(env, *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    return done.stdout


def enqueue(env, *args: str) -> int:
    return int(ok(env, "enqueue", *args))


def runner_id(conn) -> str:
    (row,) = conn.execute("SELECT id::text FROM runner.workers").fetchall()
    return str(row[0])


def test_a_failed_job_shows_in_the_list_with_its_error_history(conn, env, start_runner):
    start_runner()
    failing = enqueue(env, "fail", "--message", "it broke", "--max-attempts", "2")
    fine = enqueue(env, "echo", "--queue", "mail")
    assert final_state(conn, failing)["state"] == "failed"
    assert final_state(conn, fine)["state"] == "succeeded"

    lines = ok(env, "jobs", "list").splitlines()
    assert lines[0].split() == [
        "id",
        "task",
        "queue",
        "state",
        "attempts",
        "created",
        "updated",
        "last",
        "error",
    ]
    newest, older = lines[1].split(), lines[2].split()
    assert newest[:5] == [str(fine), "echo", "mail", "succeeded", "1/5"]
    assert older[:5] == [str(failing), "fail", "default", "failed", "2/2"]
    assert "RuntimeError: it broke" in lines[2]
    # The columns line up.
    assert lines[1].index("succeeded") == lines[2].index("failed")

    listed = json.loads(ok(env, "jobs", "list", "--state", "failed", "--json"))
    assert [job["id"] for job in listed] == [failing]
    assert listed[0]["last_error"].startswith("RuntimeError: it broke")
    assert ok(env, "jobs", "list", "--task", "nope") == "no jobs match\n"

    shown = ok(env, "jobs", "show", str(failing))
    assert re.search(r"^state +failed$", shown, re.MULTILINE), shown
    assert re.search(r"^attempts +2 of 2$", shown, re.MULTILINE), shown
    assert "error history, oldest first:" in shown
    runner = runner_id(conn)
    assert "attempt 1  " in shown and f"runner {runner}" in shown
    assert shown.count("RuntimeError: it broke") == 3  # last error and two attempts

    job = json.loads(ok(env, "jobs", "show", str(failing), "--json"))
    assert [(e["attempt"], e["runner"]) for e in job["errors"]] == [
        (1, runner),
        (2, runner),
    ]
    assert job["args"] == {"message": "it broke"}
    assert job["state"] == "failed" and job["finished_at"]


def test_retry_runs_a_failed_job_again_with_fresh_attempts(
    conn, env, start_runner, tmp_path
):
    start_runner()
    flag = tmp_path / "ready"
    job_id = enqueue(env, "fail_until", "--path", str(flag), "--max-attempts", "1")
    assert final_state(conn, job_id)["state"] == "failed"

    flag.touch()
    assert ok(env, "jobs", "retry", str(job_id)) == (
        f"job {job_id} queued again, with 1 attempts\n"
    )
    job = final_state(conn, job_id)
    assert (job["state"], job["attempts"]) == ("succeeded", 1)
    assert job["result"] == {"found": str(flag)}
    history = json.loads(ok(env, "jobs", "show", str(job_id), "--json"))["errors"]
    assert [e["error"].split(":")[0] for e in history] == [
        "RuntimeError",
        "retried by hand with a fresh set of attempts",
    ]


def test_cancelling_a_running_job_stops_it_for_good(conn, env, start_runner):
    runner = start_runner()
    job_id = enqueue(env, "sleep", "--seconds", "3600", "--max-attempts", "3")
    wait_until(lambda: db.job_state(conn, job_id) == "running", message="the start")

    said = ok(env, "jobs", "cancel", str(job_id))
    assert said == (
        f"job {job_id} is running: runner {runner_id(conn)} stops it at its next "
        "heartbeat, and it ends cancelled\n"
    )
    job = final_state(conn, job_id)
    assert (job["state"], job["attempts"]) == ("cancelled", 1)
    assert job["last_error"] == "cancelled on request while running"
    assert job["cancel_requested_at"] <= job["finished_at"]

    # The runner goes on with the next job; the cancelled one never comes back.
    after = enqueue(env, "echo")
    assert final_state(conn, after)["state"] == "succeeded"
    assert db.job(conn, job_id)["state"] == "cancelled"
    assert runner.proc.poll() is None
    assert f"job {job_id} (sleep) cancelled on request during attempt 1" in (
        runner.log()
    )
    shown = ok(env, "jobs", "show", str(job_id))
    assert re.search(r"^cancel requested +\d{4}-", shown, re.MULTILINE), shown


def test_a_cancelled_transactional_job_leaves_no_writes(conn, env, start_runner):
    start_runner()
    job_id = enqueue(env, "record", "--label", "half-done", "--sleep", "3600")
    wait_until(lambda: db.job_state(conn, job_id) == "running", message="the start")
    ok(env, "jobs", "cancel", str(job_id))
    assert final_state(conn, job_id)["state"] == "cancelled"
    assert conn.execute("SELECT count(*) FROM test_effects").fetchone() == (0,)


def test_cancel_a_queued_job_and_refuse_what_cannot_be(conn, env):
    job_id = enqueue(env, "echo", "--delay", "3600")
    assert ok(env, "jobs", "cancel", str(job_id)) == f"job {job_id} cancelled\n"
    assert db.job_state(conn, job_id) == "cancelled"
    line = one_line_error(run_cli(env, "jobs", "cancel", str(job_id)))
    assert line == f"error: job {job_id} is already cancelled: nothing to cancel"

    queued = enqueue(env, "echo", "--delay", "3600")
    line = one_line_error(run_cli(env, "jobs", "retry", str(queued)))
    assert line == (
        f"error: job {queued} is queued: only a failed or cancelled job can be retried"
    )
    # A cancelled job can be retried.
    ok(env, "jobs", "retry", str(job_id))
    assert db.job_state(conn, job_id) == "queued"


def test_show_withholds_secrets(conn, env, start_runner):
    start_runner()
    key_id = db.new_key(conn)
    done = run_cli(env, "enqueue", "rotate_key", "--key-id", str(key_id))
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout)
    assert final_state(conn, job_id)["state"] == "succeeded"
    sealed = db.job(conn, job_id)["result"]["sealed_secret"]

    text = ok(env, "jobs", "show", str(job_id))
    as_json = ok(env, "jobs", "show", str(job_id), "--json")
    for shown in (text, as_json):
        assert '"sealed_secret": "[withheld]"' in shown
        assert sealed["ciphertext"] not in shown
        assert sealed["ephemeral"] not in shown
    assert re.search(r"^withheld +result\.sealed_secret \(secrets\)$", text, re.M), text
    assert json.loads(as_json)["withheld"] == ["result.sealed_secret"]
    assert '"outcome": "rotated"' in text

    # Showing it wiped nothing: the requester still opens the secret, once.
    secret = re.search(r"store it now\): (\S+)", ok(env, "secret", str(job_id)))
    assert secret is not None
    (new,) = db.successors(conn, key_id)
    assert hash_secret(secret[1]) == new["key_hash"]

    # Arguments named like secrets are withheld as well, here and in the result.
    echo = enqueue(env, "echo", "--password", "hunter2", "--user", "ann")
    assert final_state(conn, echo)["state"] == "succeeded"
    shown = ok(env, "jobs", "show", str(echo))
    assert "hunter2" not in shown and '"user": "ann"' in shown
    assert "args.password, result.password (secrets)" in shown


def test_stats_count_by_state_and_task(conn, env, start_runner):
    start_runner()
    done = [enqueue(env, "echo"), enqueue(env, "fail", "--max-attempts", "1")]
    for job_id in done:
        final_state(conn, job_id)
    enqueue(env, "echo", "--delay", "3600")

    lines = ok(env, "jobs", "stats").splitlines()
    assert lines[0].startswith("queued and running now; finished since ")
    table = [line.split() for line in lines[1:-1]]
    assert table == [
        ["task", "queued", "running", "succeeded", "failed", "cancelled"],
        ["echo", "1", "0", "1", "0", "0"],
        ["fail", "0", "0", "0", "1", "0"],
        ["(all)", "1", "0", "1", "1", "0"],
    ]
    assert lines[-1] == "no runnable job is waiting"

    counts = json.loads(ok(env, "jobs", "stats", "--json", "--since", "1d"))
    assert counts["by_state"] == {
        "queued": 1,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert counts["by_task"]["fail"]["failed"] == 1
    assert counts["runnable"] == 0
    assert counts["oldest_runnable_age_seconds"] is None


def test_failed_jobs_outlive_succeeded_ones(conn, env, start_runner):
    start_runner(
        RUNNER_PRUNE_INTERVAL="0.5",
        RUNNER_RETENTION="0",
        RUNNER_FAILED_RETENTION="3600",
    )
    failed = enqueue(env, "fail", "--max-attempts", "1")
    assert final_state(conn, failed)["state"] == "failed"
    succeeded = enqueue(env, "echo")
    wait_until(
        lambda: (
            not conn.execute(
                "SELECT 1 FROM runner.jobs WHERE id = %s", (succeeded,)
            ).fetchone()
        ),
        message="the succeeded job to be pruned",
    )
    assert db.job_state(conn, failed) == "failed"
    line = one_line_error(run_cli(env, "run", "--failed-retention", "-1"))
    assert "--failed-retention" in line


def test_every_command_fails_in_one_line(conn, env):
    for args in (
        ["show", "999999"],
        ["retry", "999999"],
        ["cancel", "999999"],
    ):
        done = run_cli(env, "jobs", *args)
        assert done.returncode == 1
        assert one_line_error(done) == "error: no job with id 999999"

    unreachable = {**env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    for args in (["list"], ["show", "1"], ["retry", "1"], ["cancel", "1"], ["stats"]):
        done = run_cli(unreachable, "jobs", *args)
        assert done.returncode == 1
        assert "127.0.0.1" in one_line_error(done)

    for args in (
        ["list", "--since", "yesterday"],
        ["list", "--state", "lost"],
        ["list", "--limit", "0"],
        ["show", "abc"],
        ["stats", "--since", "soon"],
        ["cancel"],
    ):
        done = run_cli(env, "jobs", *args)
        assert done.returncode == 2, (args, done.stderr)
        one_line_error(done)

    conn.execute("UPDATE runner.schema_version SET version = 1")
    line = one_line_error(run_cli(env, "jobs", "list"))
    assert line.endswith("expected 2: run `runner migrate`"), line
