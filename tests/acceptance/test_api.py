"""The HTTP API of a real `runner run`, driven with a real HTTP client."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator

import httpx
import pytest

from handlers.rotate_key import hash_secret
from runner import store
from runner.sealing import Recipient
from tests.support import db, telemetry
from tests.support.cluster import free_port
from tests.support.processes import run_cli, wait_until

ROTATE = "/v1/keys/{}/rotate"
# One byte short of a public key; an error must never quote it (a value in its
# place may be a private key pasted by mistake).
BAD_RECIPIENT = base64.b64encode(bytes(range(31))).decode()


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def api(start_runner, token) -> Iterator[Api]:
    """A runner that serves the API, and a client that bears its token."""
    with Api(start_runner, token) as client:
        yield client


class Api:
    def __init__(self, start_runner, token: str, *args: str, **env: str) -> None:
        self.port = free_port()
        self.runner = start_runner(
            *args,
            RUNNER_METRICS_PORT=str(self.port),
            RUNNER_API_TOKEN=token,
            RUNNER_LOG_LEVEL="debug",
            **env,
        )
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
            trust_env=False,
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def rotate(self, key_id: object, **body: object) -> httpx.Response:
        return self.client.post(ROTATE.format(key_id), json=body or None)

    def job(self, job_id: object) -> httpx.Response:
        return self.client.get(f"/v1/jobs/{job_id}")

    def finished_job(self, job_id: int) -> dict:
        def final() -> dict | None:
            job = self.job(job_id).json()
            return job if job["state"] in ("succeeded", "failed") else None

        return wait_until(final, message=f"job {job_id} to finish")


def test_a_rotation_runs_and_its_secret_opens_for_the_requester(conn, api):
    key_id = db.new_key(conn)
    recipient = Recipient()

    asked = api.rotate(
        key_id, grace_hours=1, recipient=recipient.public, requested_by="alice"
    )

    assert asked.status_code == 202, asked.text
    job_id = asked.json()["job_id"]
    assert asked.json() == {
        "job_id": job_id,
        "state": "queued",
        "created": True,
        "url": f"/v1/jobs/{job_id}",
    }
    assert asked.headers["location"] == f"/v1/jobs/{job_id}"
    job = api.finished_job(job_id)
    assert job["state"] == "succeeded", job
    result = job["result"]
    (new_key,) = db.successors(conn, key_id)
    assert result["new_key_id"] == new_key["id"]
    assert result["grace_hours"] == 1
    secret = recipient.open(result["sealed_secret"])
    assert hash_secret(secret) == new_key["key_hash"]
    assert secret not in api.job(job_id).text
    assert job["args"]["requested_by"] == "alice"
    audit = conn.execute(
        "SELECT requested_by FROM control_plane.api_key_rotations"
        " WHERE old_key_id = %s",
        (key_id,),
    ).fetchall()
    assert audit == [("alice",)]


def test_a_rotation_without_a_body_takes_the_defaults(conn, api):
    key_id = db.new_key(conn)

    asked = api.client.post(ROTATE.format(key_id))

    assert asked.status_code == 202, asked.text
    job = api.finished_job(asked.json()["job_id"])
    assert job["args"] == {"key_id": key_id, "grace_hours": 24.0, "requested_by": "api"}
    assert job["unique_key"] == f"rotate_key:{key_id}"
    assert "sealed_secret" not in job["result"]


def test_requests_without_the_right_token_are_refused(conn, api, token):
    key_id = db.new_key(conn)
    url = f"http://127.0.0.1:{api.port}" + ROTATE.format(key_id)
    wrong = {
        "no header": {},
        "another scheme": {"Authorization": f"Basic {token}"},
        "no token": {"Authorization": "Bearer"},
        "a wrong token": {"Authorization": "Bearer " + token[:-1] + "x"},
        "a longer token": {"Authorization": f"Bearer {token}x"},
        "latin-1": {"Authorization": "Bearer caf\xe9".encode("latin-1")},
    }
    with httpx.Client(timeout=10, trust_env=False) as anonymous:
        for why, headers in wrong.items():
            answer = anonymous.post(url, headers=headers)
            assert answer.status_code == 401, why
            assert answer.headers["www-authenticate"].startswith(
                'Bearer realm="runner"'
            )
            assert set(answer.json()) == {"error"}
            assert token not in answer.text
            unknown = anonymous.get(f"http://127.0.0.1:{api.port}/v1/jobs/1")
            assert unknown.status_code == 401, "the token is checked first"

    assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (0,)
    assert api.rotate(key_id).status_code == 202
    log = api.runner.log()
    assert "refused an API request from 127.0.0.1" in log
    assert token not in log and token[:-1] not in log


def test_the_api_is_off_without_a_token(conn, start_runner):
    key_id = db.new_key(conn)
    port = free_port()
    start_runner(RUNNER_METRICS_PORT=str(port), RUNNER_API_TOKEN="")

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
        assert client.post(ROTATE.format(key_id)).status_code == 404
        assert client.get("/v1/jobs/1").status_code == 404
        assert client.get("/metrics").status_code == 200


def test_unknown_keys_and_jobs_are_not_found(conn, api):
    expired = db.new_key(conn, expires_in=-60)

    for key_id in (999, "abc", "-1", "0", 2**31):
        answer = api.rotate(key_id)
        assert answer.status_code == 404, key_id
        assert answer.json()["error"].startswith("no key with id"), answer.text
    for job_id in (999, "abc", 2**63):
        answer = api.job(job_id)
        assert answer.status_code == 404, job_id
        assert answer.json()["error"].startswith("no job with id"), answer.text
    refused = api.rotate(expired)
    assert refused.status_code == 409
    assert "cannot be rotated" in refused.json()["error"]
    assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (0,)


BAD_BODIES = {
    b"{": "the body is not valid JSON",
    b"\xff": "the body is not valid JSON",
    b"[1]": "the body must be a JSON object",
    b'{"grace_hours": "1"}': "grace_hours must be a number of hours",
    b'{"grace_hours": true}': "grace_hours must be a number of hours",
    b'{"grace_hours": NaN}': "grace_hours must be a finite number of hours",
    b'{"grace_hours": 1e999}': "grace_hours must be a finite number of hours",
    b'{"grace_hours": -1}': "grace_hours must be a number of hours, 0 or more",
    b'{"grace_hours": 1000}': "longer than the maximum of 720 hours",
    b'{"recipient": "nope"}': "recipient must be a base64 X25519 public key",
    b'{"recipient": 5}': "recipient must be a string",
    b'{"requested_by": ""}': "requested_by must be 1 to 200 characters",
    b'{"requested_by": "a\\u0000b"}': "NUL character",
    b'{"colour": "red"}': "unknown field 'colour'",
}


def test_bad_bodies_are_unprocessable(conn, api):
    key_id = db.new_key(conn)

    for body, error in BAD_BODIES.items():
        answer = api.client.post(ROTATE.format(key_id), content=body)
        assert answer.status_code == 422, body
        assert error in answer.json()["error"], (body, answer.text)
    assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (0,)


def test_asking_again_while_queued_returns_the_queued_job(conn, start_runner, token):
    key_id, other_key = db.new_key(conn), db.new_key(conn)
    # This runner serves the API but takes no job from the default queue.
    with Api(start_runner, token, "--queue", "elsewhere") as api:
        first = api.rotate(key_id, grace_hours=2)
        again = api.rotate(key_id, grace_hours=2, requested_by="bob")
        other_grace = api.rotate(key_id, grace_hours=0)
        other_recipient = api.rotate(
            key_id, grace_hours=2, recipient=Recipient().public
        )
        # A rotation the schedule queued takes rotate_key's default grace period.
        scheduled = store.insert_unique_job(
            conn,
            "rotate_key",
            {"key_id": other_key, "requested_by": "schedule"},
            store.rotation_key(other_key),
        )
        same_as_scheduled = api.rotate(other_key)
        metrics = telemetry.scrape(api.port)

    assert (first.status_code, again.status_code) == (202, 200)
    job_id = first.json()["job_id"]
    assert again.json() == {
        "job_id": job_id,
        "state": "queued",
        "created": False,
        "url": f"/v1/jobs/{job_id}",
    }
    for refused in (other_grace, other_recipient):
        assert refused.status_code == 409
        assert refused.json()["job_id"] == job_id
        assert "another grace period or recipient" in refused.json()["error"]
    assert same_as_scheduled.status_code == 200
    assert same_as_scheduled.json()["job_id"] == scheduled.id
    assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (2,)
    route = 'route="/v1/keys/{key_id}/rotate"'
    for status, count in (("202", 1), ("200", 2), ("409", 2)):
        assert f'runner_api_requests_total{{{route},status="{status}"}} {count}.0' in (
            metrics
        )
    assert 'runner_key_rotations_enqueued_total{source="api"} 1.0' in metrics


def test_old_keys_are_rotated_on_schedule(conn, start_runner):
    old, young = db.new_key(conn), db.new_key(conn)
    conn.execute(
        "UPDATE control_plane.api_keys SET created_at = now() - interval '2 hours'"
        " WHERE id = %s",
        (old,),
    )
    port = free_port()
    start_runner(
        RUNNER_METRICS_PORT=str(port),
        RUNNER_ROTATE_KEYS_OLDER_THAN="1",
        RUNNER_ROTATE_KEYS_INTERVAL="0.5",
        RUNNER_ROTATE_KEYS_RECIPIENT="none",
    )

    wait_until(lambda: db.successors(conn, old), message="the old key's rotation")
    audit = conn.execute(
        "SELECT old_key_id, requested_by FROM control_plane.api_key_rotations"
    ).fetchall()
    assert audit == [(old, "schedule")]
    assert db.successors(conn, young) == []
    assert (
        telemetry.metric(port, "runner_key_rotations_enqueued_total", source="schedule")
        == 1
    )


def test_settings_the_api_and_the_rotation_cannot_work_with_are_refused(env):
    cases = [
        ({"RUNNER_API_TOKEN": "short"}, "--api-token must be at least 32"),
        (
            {"RUNNER_API_TOKEN": "x" * 40, "RUNNER_METRICS_PORT": "0"},
            "the HTTP API needs the HTTP server",
        ),
        (
            {
                "RUNNER_ROTATE_KEYS_OLDER_THAN": "24",
                "RUNNER_ROTATE_KEYS_RECIPIENT": Recipient().public,
                "RUNNER_ROTATION_MAX_GRACE_HOURS": "12",
            },
            "automatic key rotation cannot run",
        ),
        (
            {"RUNNER_ROTATE_KEYS_OLDER_THAN": "24"},
            "automatic key rotation needs --rotate-keys-recipient",
        ),
        (
            {"RUNNER_ROTATE_KEYS_OLDER_THAN": "24", "RUNNER_ROTATE_KEYS_RECIPIENT": ""},
            "automatic key rotation needs --rotate-keys-recipient",
        ),
        (
            {
                "RUNNER_ROTATE_KEYS_OLDER_THAN": "24",
                "RUNNER_ROTATE_KEYS_RECIPIENT": BAD_RECIPIENT,
            },
            "--rotate-keys-recipient must be a base64 X25519 public key",
        ),
    ]
    for overrides, message in cases:
        done = run_cli({**env, **overrides}, "run")
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith(f"error: {message}"), done.stderr
        assert len(done.stderr.splitlines()) == 1
        assert BAD_RECIPIENT not in done.stderr
