"""Webhook registrations and deliveries on a real PostgreSQL."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from handlers import webhook_secrets, webhooks
from handlers.destinations import AddressRefused, AllowList, Destination
from handlers.send_webhook import _post
from handlers.webhook_secrets import SecretBox
from runner import store
from tests.support import db
from tests.support.receiver import receiving

LOCAL = AllowList.parse("127.0.0.1/32")
BOX = SecretBox(b"k" * 32)


def register(conn, project_id: int = 7, port: int = 9, secret: str | None = None):
    secret = secret or webhook_secrets.new_secret()
    url = f"http://127.0.0.1:{port}/hook"
    return webhooks.add(conn, project_id, url, secret, BOX, LOCAL), secret


def rotations(conn) -> list[tuple]:
    return conn.execute(
        "SELECT old_key_id, new_key_id, job_id, requested_by, grace_hours"
        " FROM control_plane.api_key_rotations ORDER BY id"
    ).fetchall()


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
