"""Webhook registrations and rotation events in the database's own transactions."""

from __future__ import annotations

import ipaddress

import httpx
import psycopg
import pytest

from handlers import webhook_secrets, webhooks
from handlers.destinations import AddressRefused, AllowList, Destination
from handlers.rotate_key import rotate_key
from handlers.webhook_delivery import _post
from handlers.webhook_secrets import SecretBox
from runner import InvalidArguments, JobContext, store
from tests.support import db
from tests.support.receiver import receiving

LOCAL = AllowList.parse("127.0.0.1/32")
BOX = SecretBox(b"k" * 32)


def register(conn, project_id: int = 7, port: int = 9, secret: str | None = None):
    secret = secret or webhook_secrets.new_secret()
    url = f"http://127.0.0.1:{port}/hook"
    return webhooks.add(conn, project_id, url, secret, BOX, LOCAL), secret


def run_rotation(conn, key_id: int, **args: object) -> dict:
    ctx = JobContext(job_id=42, task="rotate_key", attempt=1, max_attempts=1, conn=conn)
    return rotate_key.run(ctx, {"key_id": key_id, **args})


def webhook_jobs(conn) -> list[dict]:
    rows = conn.execute(
        "SELECT id FROM runner.jobs WHERE task = 'send_webhook' ORDER BY id"
    ).fetchall()
    return [db.job(conn, row[0]) for row in rows]


def rotations(conn) -> list[tuple]:
    return conn.execute(
        "SELECT old_key_id, new_key_id, job_id, requested_by, grace_hours"
        " FROM control_plane.api_key_rotations ORDER BY id"
    ).fetchall()


def test_a_rolled_back_rotation_enqueues_nothing_and_records_nothing(
    conn, database_url
):
    register(conn)
    key_id = db.new_key(conn, project_id=7)
    with psycopg.connect(database_url) as other:
        result = run_rotation(other, key_id)
        # Inside the transaction, the delivery and the record are there...
        assert len(result["webhook_jobs"]) == 1
        assert other.execute("SELECT count(*) FROM runner.jobs").fetchone() == (1,)
        other.rollback()
    # ...and with it rolled back, neither is.
    assert webhook_jobs(conn) == []
    assert rotations(conn) == []
    assert db.successors(conn, key_id) == []


def test_a_committed_rotation_announces_to_each_webhook_of_its_project(
    conn, database_url
):
    first, _ = register(conn, port=9)
    second, _ = register(conn, port=10)
    register(conn, project_id=8)
    key_id = db.new_key(conn, project_id=7)
    old = db.api_key(conn, key_id)
    with psycopg.connect(database_url) as other:
        result = run_rotation(other, key_id, requested_by="alice")
        other.commit()

    jobs = webhook_jobs(conn)
    assert [j["id"] for j in jobs] == result["webhook_jobs"]
    assert [j["args"]["webhook_id"] for j in jobs] == [first.id, second.id]
    assert all(j["max_attempts"] == 10 for j in jobs)
    events = [j["args"]["event"] for j in jobs]
    assert events[0] == events[1]
    event = events[0]
    assert event["type"] == "api_key.rotated"
    assert event["project_id"] == 7
    assert event["data"] == {
        "old_key_id": key_id,
        "old_key_prefix": old["key_prefix"],
        "new_key_id": result["new_key_id"],
        "new_key_prefix": result["new_key_prefix"],
        "old_key_expires_at": result["old_key_expires_at"],
    }
    assert rotations(conn) == [(key_id, result["new_key_id"], 42, "alice", 24.0)]


def test_a_second_rotation_of_a_key_announces_nothing(conn, database_url):
    register(conn)
    key_id = db.new_key(conn, project_id=7)
    for _ in range(2):
        with psycopg.connect(database_url) as other:
            result = run_rotation(other, key_id)
            other.commit()
    assert result["outcome"] == "already_rotated"
    assert len(webhook_jobs(conn)) == 1
    assert len(rotations(conn)) == 1


def test_grace_zero_revokes_the_old_key_at_once(conn, database_url):
    key_id = db.new_key(conn)
    with psycopg.connect(database_url) as other:
        result = run_rotation(other, key_id, grace_hours=0)
        other.commit()
    expired = conn.execute(
        "SELECT expires_at <= now() FROM control_plane.api_keys WHERE id = %s",
        (key_id,),
    ).fetchone()
    assert expired == (True,)
    assert result["grace_hours"] == 0
    assert rotations(conn)[0][3:] == ("api", 0.0)


def test_a_grace_longer_than_the_maximum_is_refused(conn, database_url, monkeypatch):
    key_id = db.new_key(conn)
    with (
        psycopg.connect(database_url) as other,
        pytest.raises(InvalidArguments, match="longer than the maximum of 720 hours"),
    ):
        run_rotation(other, key_id, grace_hours=721)
    monkeypatch.setenv("RUNNER_ROTATION_MAX_GRACE_HOURS", "2")
    with (
        psycopg.connect(database_url) as other,
        pytest.raises(InvalidArguments, match="maximum of 2 hours"),
    ):
        run_rotation(other, key_id, grace_hours=3)
    with psycopg.connect(database_url) as other:
        assert run_rotation(other, key_id, grace_hours=2)["outcome"] == "rotated"


def test_the_secret_is_stored_sealed_and_never_listed(conn):
    webhook, secret = register(conn)
    stored = conn.execute(
        "SELECT sealed_secret, secret_fingerprint FROM control_plane.webhooks"
    ).fetchone()
    assert secret.encode() not in bytes(stored[0])
    assert stored[1] == webhook_secrets.fingerprint(secret)
    (listed,) = webhooks.list_all(conn, 7)
    assert secret not in repr(listed)
    assert listed.secret_fingerprint == stored[1]
    target = webhooks.target(conn, webhook.id, BOX)
    assert target is not None and target.secret == secret


def test_registration_refuses_duplicates_and_inside_addresses(conn):
    register(conn)
    with pytest.raises(webhooks.WebhookExists):
        register(conn)
    with pytest.raises(AddressRefused):
        webhooks.add(
            conn,
            7,
            "http://127.0.0.1:9/",
            webhook_secrets.new_secret(),
            BOX,
            AllowList(),
        )
    assert len(webhooks.list_all(conn)) == 1


def test_removing_a_webhook(conn):
    webhook, _ = register(conn)
    assert webhooks.remove(conn, webhook.id) == (7, webhook.url)
    assert webhooks.remove(conn, webhook.id) is None
    assert webhooks.target(conn, webhook.id, BOX) is None


def test_a_version_1_database_is_brought_forward(conn):
    key_id = db.new_key(conn)
    conn.execute("DROP TABLE control_plane.webhooks, control_plane.api_key_rotations")
    conn.execute("UPDATE runner.schema_version SET version = 1")
    assert store.migrate(conn) == 2
    assert webhooks.list_all(conn) == []
    assert rotations(conn) == []
    assert db.api_key(conn, key_id)["id"] == key_id


def test_delivery_connects_to_the_checked_addresses_in_turn():
    # A name that resolves nowhere: only the addresses given are used. The first
    # refuses the connection (nothing listens on 127.0.0.2); the second answers.
    with receiving() as receiver:
        port = httpx.URL(receiver.url).port
        destination = Destination(
            httpx.URL(f"http://webhook.test:{port}/hooks/runner"),
            (ipaddress.ip_address("127.0.0.2"), ipaddress.ip_address("127.0.0.1")),
        )
        status = _post(destination, {}, b"{}", 5.0, webhook_id=1)
        (request,) = receiver.wait_for(1)
    assert status == 200
    assert request.headers["host"] == f"webhook.test:{port}"
