"""The webhooks that projects register: a URL and a signing secret each.

Registering checks the URL (see `handlers.destinations`) and stores the secret
sealed (see `handlers.webhook_secrets`); listing shows only the secret's
fingerprint. The delivery itself is `handlers.send_webhook`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import LiteralString

from handlers import destinations, webhook_secrets
from handlers.webhook_secrets import SecretBox
from runner import store
from runner.errors import InvalidArguments, RunnerError
from runner.queries import query


@dataclass(frozen=True)
class Webhook:
    """A registration as `list` shows it: never the secret."""

    id: int
    project_id: int
    url: str
    secret_fingerprint: str
    created_at: datetime


@dataclass(frozen=True)
class Target:
    """What a delivery needs: the URL and the opened secret."""

    id: int
    project_id: int
    url: str
    secret: str


class WebhookExists(RunnerError):
    """The project already has a webhook with that URL."""


def _query(name: str) -> LiteralString:
    return query(name, package="handlers", filename="webhooks.sql")


def add(
    conn: store.Connection,
    project_id: int,
    url: str,
    secret: str,
    box: SecretBox,
    allow: destinations.AllowList | None = None,
) -> Webhook:
    """Register a webhook in one transaction; WebhookExists when it already is."""
    if project_id < 1:
        raise InvalidArguments(
            f"project_id must be a positive integer, not {project_id}"
        )
    destinations.check(url, allow)
    webhook_secrets.check_secret(secret)
    fingerprint = webhook_secrets.fingerprint(secret)

    with store.translate_errors(), conn.transaction():
        row = conn.execute(_query("webhook_next_id")).fetchone()
        if row is None:
            raise RuntimeError("the database gave no webhook id")
        webhook_id = int(row[0])
        sealed = box.seal(secret, webhook_secrets.context(webhook_id, project_id, url))
        params = {
            "id": webhook_id,
            "project_id": project_id,
            "url": url,
            "sealed_secret": sealed,
            "secret_fingerprint": fingerprint,
        }
        row = conn.execute(_query("webhook_insert"), params).fetchone()
    if row is None:
        raise WebhookExists(f"project {project_id} already has a webhook for {url}")
    return Webhook(webhook_id, project_id, url, fingerprint, row[0])


def list_all(conn: store.Connection, project_id: int | None = None) -> list[Webhook]:
    """The registered webhooks, of one project or all, oldest first."""
    with store.translate_errors():
        rows = conn.execute(
            _query("webhook_list"), {"project_id": project_id}
        ).fetchall()
    return [Webhook(*row) for row in rows]


def remove(conn: store.Connection, webhook_id: int) -> tuple[int, str] | None:
    """Delete a webhook; its project and URL, or None when there was none."""
    with store.translate_errors():
        row = conn.execute(_query("webhook_delete"), {"id": webhook_id}).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def target(conn: store.Connection, webhook_id: int, box: SecretBox) -> Target | None:
    """The webhook with its secret opened; None when it has been removed."""
    row = conn.execute(_query("webhook_get"), {"id": webhook_id}).fetchone()
    if row is None:
        return None
    webhook_id, project_id, url, sealed = row
    secret = box.open(
        bytes(sealed), webhook_secrets.context(webhook_id, project_id, url)
    )
    return Target(webhook_id, project_id, url, secret)
