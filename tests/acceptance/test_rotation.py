"""Rotating API keys with `runner run` and `runner enqueue` as real processes."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from datetime import timedelta

from handlers.rotate_key import hash_secret
from tests.support import db
from tests.support.processes import run_cli, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def test_enqueue_rotates_the_key_and_metrics_count_it(conn, env, start_runner):
    key_id = db.new_key(
        conn, key_type="service", scopes=["read", "write"], rate_limit=50
    )
    old = db.api_key(conn, key_id)
    port = free_port()
    start_runner(RUNNER_METRICS_PORT=str(port))

    done = run_cli(env, "enqueue", "rotate_key", "--key-id", str(key_id))
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout.strip())
    wait_until(lambda: db.job_state(conn, job_id) == "succeeded", message="rotation")

    (new,) = db.successors(conn, key_id)
    for field in ("project_id", "key_type", "scopes", "rate_limit"):
        assert new[field] == old[field]
    assert new["expires_at"] is None
    assert new["key_hash"] != old["key_hash"] and len(new["key_hash"]) == 64

    rotated = db.api_key(conn, key_id)
    assert rotated["key_prefix"] == old["key_prefix"]
    assert rotated["key_hash"] == old["key_hash"]
    grace = rotated["expires_at"] - db.job(conn, job_id)["finished_at"]
    assert timedelta(hours=23, minutes=59) < grace <= timedelta(hours=24)

    result = db.job(conn, job_id)["result"]
    assert result["old_key_id"] == key_id
    assert result["new_key_id"] == new["id"]
    assert result["new_key_prefix"] == new["key_prefix"]
    assert result["grace_hours"] == 24

    metrics = scrape(port)
    assert 'runner_key_rotations_total{outcome="rotated"} 1.0' in metrics
    assert 'runner_jobs_total{outcome="succeeded",task="rotate_key"} 1.0' in metrics
    assert "runner_key_rotation_duration_seconds_count 1.0" in metrics


def test_wait_prints_the_secret_once_and_wipes_the_sealed_copy(conn, env, start_runner):
    key_id = db.new_key(conn)
    runner = start_runner()

    done = run_cli(env, "enqueue", "rotate_key", "--key-id", str(key_id), "--wait")
    assert done.returncode == 0, done.stderr
    secret = re.search(r"new secret \(shown once, store it now\): (\S+)", done.stdout)
    assert secret is not None, done.stdout
    (new,) = db.successors(conn, key_id)
    assert hash_secret(secret[1]) == new["key_hash"]
    assert secret[1].startswith(new["key_prefix"])

    job_id = int(done.stdout.splitlines()[0])
    stored = json.dumps(db.job(conn, job_id), default=str)
    assert "sealed_secret" not in stored
    # The plaintext is nowhere in the database or the runner's log.
    dump = conn.execute(
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM runner.jobs) t"
    ).fetchone()
    assert secret[1] not in str(dump)
    assert secret[1] not in runner.log()
    assert secret[1] not in json.dumps(db.api_key(conn, new["id"]), default=str)


def test_grace_period_can_be_set_per_job(conn, env, start_runner):
    key_id = db.new_key(conn)
    start_runner()
    done = run_cli(
        env,
        "enqueue",
        "rotate_key",
        "--key-id",
        str(key_id),
        "--grace-hours",
        "0",
        "--wait",
    )
    assert done.returncode == 0, done.stderr
    expired = conn.execute(
        "SELECT expires_at <= now() FROM control_plane.api_keys WHERE id = %s",
        (key_id,),
    ).fetchone()
    assert expired == (True,)


def test_grace_never_extends_an_earlier_expiry(conn, env, start_runner):
    key_id = db.new_key(conn, expires_in=3600)
    before = db.api_key(conn, key_id)["expires_at"]
    start_runner()
    done = run_cli(env, "enqueue", "rotate_key", "--key-id", str(key_id), "--wait")
    assert done.returncode == 0, done.stderr
    assert db.api_key(conn, key_id)["expires_at"] == before
    assert len(db.successors(conn, key_id)) == 1


def test_missing_and_expired_keys_fail_without_retry(conn, env, start_runner):
    expired = db.new_key(conn, expires_in=-60)
    start_runner()

    missing = run_cli(env, "enqueue", "rotate_key", "--key-id", "999999", "--wait")
    assert missing.returncode == 1
    assert "key 999999 does not exist" in missing.stderr

    gone = run_cli(env, "enqueue", "rotate_key", "--key-id", str(expired), "--wait")
    assert gone.returncode == 1
    assert f"key {expired} expired at" in gone.stderr
    for out in (missing, gone):
        job = db.job(conn, int(out.stdout.split()[0]))
        assert (job["state"], job["attempts"]) == ("failed", 1)
    assert db.successors(conn, expired) == []


def test_a_key_in_its_grace_period_is_already_rotated(conn, env, start_runner):
    key_id = db.new_key(conn)
    start_runner()
    first = run_cli(env, "enqueue", "rotate_key", "--key-id", str(key_id), "--wait")
    assert first.returncode == 0, first.stderr
    expiry = db.api_key(conn, key_id)["expires_at"]

    second = run_cli(env, "enqueue", "rotate_key", "--key-id", str(key_id), "--wait")
    assert second.returncode == 0, second.stderr
    assert '"outcome": "already_rotated"' in second.stdout
    assert "new secret" not in second.stdout
    (successor,) = db.successors(conn, key_id)
    assert f'"new_key_id": {successor["id"]}' in second.stdout
    assert db.api_key(conn, key_id)["expires_at"] == expiry


def test_concurrent_rotations_of_one_key_make_one_successor(conn, env, start_runner):
    keys = [db.new_key(conn) for _ in range(10)]
    # Two runners, two jobs per key, all inserted in one transaction.
    with conn.transaction():
        jobs = [db.insert_job(conn, "rotate_key", {"key_id": k}) for k in keys * 2]
    start_runner()
    start_runner()
    wait_until(
        lambda: all(db.job_state(conn, j) == "succeeded" for j in jobs),
        message="all rotations",
    )
    outcomes = sorted(db.job(conn, j)["result"]["outcome"] for j in jobs)
    assert outcomes == ["already_rotated"] * 10 + ["rotated"] * 10
    for key_id in keys:
        assert len(db.successors(conn, key_id)) == 1


def test_malformed_key_id_is_refused_before_enqueue(conn, env):
    done = run_cli(env, "enqueue", "rotate_key", "--key-id", "abc")
    assert done.returncode == 1
    assert done.stderr.startswith("error: ")
    assert "key_id" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (0,)


def test_without_wait_the_secret_is_opened_later_once(conn, env, start_runner):
    key_id = db.new_key(conn)
    done = run_cli(env, "enqueue", "rotate_key", "--key-id", str(key_id))
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout)
    assert f"runner secret {job_id}" in done.stderr

    early = run_cli(env, "secret", str(job_id))
    assert early.returncode == 1
    assert "is still queued" in early.stderr

    start_runner()
    wait_until(lambda: db.job_state(conn, job_id) == "succeeded", message="rotation")
    shown = run_cli(env, "secret", str(job_id))
    assert shown.returncode == 0, shown.stderr
    secret = shown.stdout.rsplit(" ", 1)[1].strip()
    (new,) = db.successors(conn, key_id)
    assert hash_secret(secret) == new["key_hash"]
    assert "sealed_secret" not in db.job(conn, job_id)["result"]

    again = run_cli(env, "secret", str(job_id))
    assert again.returncode == 1
    assert "no key for job" in again.stderr


def test_a_wait_that_times_out_keeps_the_secret_for_later(conn, env, start_runner):
    key_id = db.new_key(conn)
    done = run_cli(
        env,
        "enqueue",
        "rotate_key",
        "--key-id",
        str(key_id),
        "--wait",
        "--timeout",
        "0.5",
    )
    assert done.returncode == 1
    job_id = int(done.stdout)
    assert "still queued after 0.5 s; it will still run" in done.stderr
    assert f"runner secret {job_id}" in done.stderr

    start_runner()
    wait_until(lambda: db.job_state(conn, job_id) == "succeeded", message="rotation")
    shown = run_cli(env, "secret", str(job_id))
    assert shown.returncode == 0, shown.stderr
    (new,) = db.successors(conn, key_id)
    assert hash_secret(shown.stdout.rsplit(" ", 1)[1].strip()) == new["key_hash"]


def test_a_long_wait_that_times_out_names_its_whole_timeout(conn, env):
    key_id = db.new_key(conn)
    done = run_cli(
        env,
        "enqueue",
        "rotate_key",
        "--key-id",
        str(key_id),
        "--wait",
        "--timeout",
        "6",
    )
    assert done.returncode == 1
    assert "is a runner running?" in done.stderr
    assert "still queued after 6 s; it will still run" in done.stderr


def test_a_cancelled_rotation_keeps_its_key_for_a_retry(conn, env, start_runner):
    key_id = db.new_key(conn)
    done = run_cli(
        env, "enqueue", "rotate_key", "--key-id", str(key_id), "--delay", "600"
    )
    job_id = done.stdout.strip()
    assert run_cli(env, "jobs", "cancel", job_id).returncode == 0
    refused = run_cli(env, "secret", job_id)
    assert refused.stderr.strip() == f"error: job {job_id} cancelled and issued no key"
    assert run_cli(env, "jobs", "retry", job_id).returncode == 0
    # The retried job runs at once: a retry makes the job due now.
    start_runner()
    wait_until(lambda: db.job_state(conn, int(job_id)) == "succeeded", 60, "rotation")
    shown = run_cli(env, "secret", job_id)
    assert shown.returncode == 0, shown.stderr
    (new,) = db.successors(conn, key_id)
    assert hash_secret(shown.stdout.rsplit(" ", 1)[1].strip()) == new["key_hash"]
