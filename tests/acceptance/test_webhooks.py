"""Rotation webhooks end to end: `runner webhooks`, `runner run` and a real receiver.

The receiver is an HTTP server on 127.0.0.1, reached through the allow-list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from handlers import webhook_secrets
from handlers.rotate_key import hash_secret, rotate_key
from runner import JobContext
from tests.support import db, telemetry
from tests.support.cluster import free_port
from tests.support.processes import run_cli, wait_until
from tests.support.receiver import HANG, Receiver, receiving, verify

PROJECT = 7
LOCAL = {"RUNNER_WEBHOOK_ALLOW": "127.0.0.1/32"}
_SECRET_LINE = re.compile(r"signing secret \(shown once, store it now\): (\S+)")


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """The runner's environment with a key for the webhook secrets."""
    return {**env, "RUNNER_WEBHOOK_KEY": webhook_secrets.new_key()}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def register(env: dict[str, str], url: str, **overrides: str) -> tuple[int, str]:
    """Add a webhook with the CLI; its id and the secret it printed."""
    done = run_cli(
        {**env, **LOCAL, **overrides},
        "webhooks",
        "add",
        url,
        "--project-id",
        str(PROJECT),
    )
    assert done.returncode == 0, done.stderr
    secret = _SECRET_LINE.search(done.stdout)
    assert secret is not None, done.stdout
    return int(done.stdout.split()[1]), secret[1]


def rotate(conn, **args: object) -> int:
    """Enqueue a rotation of a fresh key of the project, as SQL would."""
    key_id = db.new_key(conn, project_id=PROJECT)
    return db.insert_job(conn, "rotate_key", {"key_id": key_id, **args})


def delivery_of(conn, rotation_job: int) -> dict:
    """The send_webhook job that a rotation enqueued, once it has finished."""
    wait_until(
        lambda: db.job_state(conn, rotation_job) == "succeeded", message="rotation"
    )
    (job_id,) = db.job(conn, rotation_job)["result"]["webhook_jobs"]
    wait_until(
        lambda: db.job_state(conn, job_id) in ("succeeded", "failed"),
        message="the delivery to finish",
    )
    return db.job(conn, job_id)


def assert_nothing_leaks(secret: str, texts: list[str]) -> None:
    for text in texts:
        assert secret not in text
        assert "v1=" not in text


def test_a_rotation_is_announced_signed(conn, env, start_runner, receiver):
    webhook_id, secret = register(env, receiver.url)
    key_id = db.new_key(conn, project_id=PROJECT)
    old = db.api_key(conn, key_id)
    port = free_port()
    runner = start_runner(RUNNER_METRICS_PORT=str(port), **LOCAL)

    done = run_cli(env, "enqueue", "rotate_key", "--key-id", str(key_id), "--wait")
    assert done.returncode == 0, done.stderr
    (request,) = receiver.wait_for(1)

    assert verify(secret, request.headers["runner-signature"], request.body)
    event = json.loads(request.body)
    (new,) = db.successors(conn, key_id)
    assert request.headers["idempotency-key"] == event["id"]
    assert request.headers["runner-event"] == "api_key.rotated"
    assert request.headers["content-type"] == "application/json"
    assert request.path == "/hooks/runner"
    assert event["type"] == "api_key.rotated"
    assert event["project_id"] == PROJECT
    data = event["data"]
    assert (data["old_key_id"], data["new_key_id"]) == (key_id, new["id"])
    assert data["old_key_prefix"] == old["key_prefix"]
    assert data["new_key_prefix"] == new["key_prefix"]
    expiry = db.api_key(conn, key_id)["expires_at"]
    assert data["old_key_expires_at"] == expiry.isoformat()

    # Neither the new key's secret (printed by --wait) nor the signing secret is
    # in the body, in any job, or in the runner's log.
    new_secret = done.stdout.rsplit(" ", 1)[1].strip()
    assert hash_secret(new_secret) == new["key_hash"]
    jobs = conn.execute("SELECT string_agg(t::text, ' ') FROM runner.jobs t")
    for text in (request.body.decode(), str(jobs.fetchone()), runner.log()):
        assert new_secret not in text and secret not in text

    audit = conn.execute(
        "SELECT requested_by, job_id, old_key_id, new_key_id"
        " FROM control_plane.api_key_rotations"
    ).fetchall()
    assert audit == [("cli", int(done.stdout.split()[0]), key_id, new["id"])]
    delivered = delivery_of(conn, int(done.stdout.split()[0]))
    assert delivered["result"]["webhook_id"] == webhook_id
    wait_until(
        lambda: (
            telemetry.metric(
                port, "runner_webhook_deliveries_total", outcome="delivered"
            )
            == 1
        ),
        message="the delivery to be counted",
    )
    assert telemetry.metric(port, "runner_webhook_delivery_duration_seconds_count") == 1


def test_a_server_error_is_retried_with_the_same_event(
    conn, env, start_runner, receiver
):
    _, secret = register(env, receiver.url)
    receiver.answer(500)
    start_runner(**LOCAL)

    job = delivery_of(conn, rotate(conn))
    assert (job["state"], job["attempts"]) == ("succeeded", 2)
    assert "answered 500 Internal Server Error" in job["last_error"]
    first, second = receiver.wait_for(2)
    assert first.body == second.body
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    for request in (first, second):
        assert verify(secret, request.headers["runner-signature"], request.body)


def test_a_client_error_fails_at_once(conn, env, start_runner, receiver):
    _, secret = register(env, receiver.url)
    receiver.answer(400)
    runner = start_runner(**LOCAL)

    job = delivery_of(conn, rotate(conn))
    assert (job["state"], job["attempts"]) == ("failed", 1)
    assert "answered 400 Bad Request" in job["last_error"]
    assert len(receiver.requests) == 1
    assert_nothing_leaks(secret, [job["last_error"], runner.log()])


def test_a_receiver_that_does_not_answer_in_time_is_retried(
    conn, env, start_runner, receiver
):
    _, secret = register(env, receiver.url)
    receiver.answer(HANG)
    start_runner(RUNNER_WEBHOOK_TIMEOUT="0.5", **LOCAL)

    job = delivery_of(conn, rotate(conn))
    assert (job["state"], job["attempts"]) == ("succeeded", 2)
    assert "did not answer within 0.5 s (ReadTimeout)" in job["last_error"]
    hung, answered = receiver.wait_for(2)
    assert hung.headers["idempotency-key"] == answered.headers["idempotency-key"]
    assert_nothing_leaks(secret, [job["last_error"]])


def test_retries_end_in_a_visible_failure(conn, env, start_runner, receiver):
    _, secret = register(env, receiver.url)
    receiver.answer(*[503] * 10)
    port = free_port()
    runner = start_runner(RUNNER_METRICS_PORT=str(port), **LOCAL)

    job = delivery_of(conn, rotate(conn))
    assert (job["state"], job["attempts"]) == ("failed", 10)
    assert "answered 503 Service Unavailable" in job["last_error"]
    assert len({r.headers["idempotency-key"] for r in receiver.wait_for(10)}) == 1
    wait_until(lambda: "(send_webhook) failed" in runner.log(), message="the log")
    assert (
        telemetry.metric(port, "runner_webhook_deliveries_total", outcome="retried")
        == 9
    )
    assert (
        telemetry.metric(port, "runner_webhook_deliveries_total", outcome="failed") == 1
    )
    assert_nothing_leaks(secret, [job["last_error"], runner.log()])


def test_a_refused_address_fails_at_once_without_connecting(
    conn, env, start_runner, receiver
):
    # Registered where the allow-list let it through; the runner has none.
    register(env, "http://10.0.0.1/hook", RUNNER_WEBHOOK_ALLOW="10.0.0.0/8")
    port = free_port()
    start_runner(RUNNER_METRICS_PORT=str(port))

    job = delivery_of(conn, rotate(conn))
    assert (job["state"], job["attempts"]) == ("failed", 1)
    assert "webhook address 10.0.0.1 is not a public address" in job["last_error"]
    assert (
        telemetry.metric(port, "runner_webhook_deliveries_total", outcome="refused")
        == 1
    )
    assert telemetry.metric(port, "runner_webhook_delivery_duration_seconds_count") == 0


def test_a_removed_webhook_is_skipped(conn, env, start_runner, receiver):
    register(env, receiver.url)
    with conn.transaction():
        # Rotated here, not by a runner: the delivery is queued, and the webhook
        # removed, before any runner starts.
        ctx = JobContext(
            job_id=0, task="rotate_key", attempt=1, max_attempts=1, conn=conn
        )
        key_id = db.new_key(conn, project_id=PROJECT)
        (job_id,) = rotate_key.run(ctx, {"key_id": key_id})["webhook_jobs"]
        conn.execute("DELETE FROM control_plane.webhooks")
    start_runner(**LOCAL)
    wait_until(lambda: db.job_state(conn, job_id) == "succeeded", message="delivery")
    assert db.job(conn, job_id)["result"]["outcome"] == "webhook_removed"
    assert receiver.requests == []


def test_the_cli_removes_a_webhook(env, receiver):
    webhook_id, _ = register(env, receiver.url)
    removed = run_cli(env, "webhooks", "remove", str(webhook_id))
    assert removed.returncode == 0, removed.stderr
    expected = f"removed webhook {webhook_id}  project 7  {receiver.url}\n"
    assert removed.stdout == expected
    again = run_cli(env, "webhooks", "remove", str(webhook_id))
    assert again.returncode == 1
    assert again.stderr == f"error: no webhook with id {webhook_id}\n"


def test_the_cli_lists_fingerprints_never_secrets(conn, env, receiver):
    webhook_id, secret = register(env, receiver.url)
    listed = run_cli(env, "webhooks", "list")
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    assert line.startswith(f"webhook {webhook_id}  project 7  {receiver.url}  ")
    assert webhook_secrets.fingerprint(secret) in line
    assert secret not in listed.stdout
    assert run_cli(env, "webhooks", "list", "--project-id", "8").stdout == (
        "no webhooks registered\n"
    )


def test_a_given_secret_is_read_from_stdin_and_not_echoed(env, receiver):
    secret = "s3cr3t-" * 6
    done = run_cli(
        {**env, **LOCAL},
        "webhooks",
        "add",
        receiver.url,
        "--project-id",
        "7",
        "--secret-stdin",
        input=secret + "\n",
    )
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout
    assert webhook_secrets.fingerprint(secret) in done.stdout


@pytest.mark.parametrize(
    ("url", "overrides", "message"),
    [
        ("http://127.0.0.1:9/", {}, "not a public address"),
        ("ftp://example.com/", LOCAL, "must start with http:// or https://"),
        ("http://127.0.0.1:9/", {**LOCAL, "RUNNER_WEBHOOK_KEY": ""}, "new-key"),
    ],
)
def test_bad_registrations_are_one_line_errors(conn, env, url, overrides, message):
    done = run_cli({**env, **overrides}, "webhooks", "add", url, "--project-id", "7")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ") and message in line
    assert conn.execute("SELECT count(*) FROM control_plane.webhooks").fetchone() == (
        0,
    )
