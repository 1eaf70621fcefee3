"""`runner webhooks`: register, list and remove the webhooks of projects."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from runner import store
from runner.errors import RunnerError

if TYPE_CHECKING:
    from handlers.webhooks import Webhook
    from runner.cli import _Context


@click.group()
def webhooks() -> None:
    """Manage the webhooks that announce key rotations.

    Secrets are stored encrypted under RUNNER_WEBHOOK_KEY; URLs must resolve to
    public addresses unless RUNNER_WEBHOOK_ALLOW names them.
    """


@webhooks.command()
@click.argument("url")
@click.option("--project-id", type=click.IntRange(min=1), required=True)
@click.option(
    "--secret-stdin",
    is_flag=True,
    help="Read the signing secret from standard input instead of making one.",
)
@click.pass_obj
def add(obj: _Context, url: str, project_id: int, secret_stdin: bool) -> None:
    """Register URL for the project's events; prints a new secret once."""
    from handlers import webhook_secrets
    from handlers import webhooks as registry

    box = webhook_secrets.SecretBox.from_env()
    secret = (
        sys.stdin.readline().strip() if secret_stdin else webhook_secrets.new_secret()
    )
    with store.connect(obj.url()) as conn:
        webhook = registry.add(conn, project_id, url, secret, box)
    click.echo(_describe(webhook))
    if not secret_stdin:
        click.echo(f"signing secret (shown once, store it now): {secret}")


@webhooks.command("list")
@click.option("--project-id", type=click.IntRange(min=1), help="Only this project's.")
@click.pass_obj
def list_webhooks(obj: _Context, project_id: int | None) -> None:
    """List the webhooks, with a fingerprint of each secret (never the secret)."""
    from handlers import webhooks as registry

    with store.connect(obj.url()) as conn:
        found = registry.list_all(conn, project_id)
    if not found:
        click.echo("no webhooks registered")
    for webhook in found:
        click.echo(f"{_describe(webhook)}  created {webhook.created_at:%Y-%m-%d %H:%M}")


@webhooks.command()
@click.argument("webhook_id", type=int)
@click.pass_obj
def remove(obj: _Context, webhook_id: int) -> None:
    """Remove a webhook; deliveries already queued for it are dropped."""
    from handlers import webhooks as registry

    with store.connect(obj.url()) as conn:
        removed = registry.remove(conn, webhook_id)
    if removed is None:
        raise RunnerError(f"no webhook with id {webhook_id}")
    project_id, url = removed
    click.echo(f"removed webhook {webhook_id}  project {project_id}  {url}")


@webhooks.command("new-key")
def new_key() -> None:
    """Print a fresh value for RUNNER_WEBHOOK_KEY."""
    from handlers import webhook_secrets

    click.echo(webhook_secrets.new_key())


def _describe(webhook: Webhook) -> str:
    return (
        f"webhook {webhook.id}  project {webhook.project_id}  {webhook.url}  "
        f"secret {webhook.secret_fingerprint}"
    )
