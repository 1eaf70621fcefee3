"""The `runner` command line."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from runner import client, embedded, logs, metrics, store
from runner.config import Settings
from runner.errors import InvalidArguments, RunnerError
from runner.jobs import JobState
from runner.registry import Registry, discover
from runner.sealing import Recipient

logger = logging.getLogger("runner")


@dataclass
class _Context:
    database_url: str | None
    data_dir: Path | None
    imports: tuple[str, ...]
    _url: str | None = field(default=None, init=False)

    def url(self) -> str:
        """The database to use; starts the embedded one when none is configured."""
        if self._url is None:
            self._url = embedded.resolve_database_url(self.database_url, self.data_dir)
        return self._url

    def registry(self) -> Registry:
        return discover(self.imports)


@click.group()
@click.option(
    "--database-url",
    envvar="DATABASE_URL",
    metavar="URL",
    help="PostgreSQL URL [env: DATABASE_URL; default: the embedded server].",
)
@click.option(
    "--data-dir",
    envvar="RUNNER_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory of the embedded server [env: RUNNER_DATA_DIR].",
)
@click.option(
    "--import",
    "imports",
    envvar="RUNNER_IMPORT",
    multiple=True,
    metavar="MODULE",
    help="Also load the handlers defined in MODULE (repeatable) "
    "[env: RUNNER_IMPORT, space-separated].",
)
@click.option(
    "--log-format",
    envvar="RUNNER_LOG_FORMAT",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as plain text or JSON [env: RUNNER_LOG_FORMAT].",
)
@click.option(
    "--log-level",
    envvar="RUNNER_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="[env: RUNNER_LOG_LEVEL]",
)
@click.version_option(package_name="runner")
@click.pass_context
def cli(
    ctx: click.Context,
    database_url: str | None,
    data_dir: Path | None,
    imports: tuple[str, ...],
    log_format: str,
    log_level: str,
) -> None:
    """A job runner on PostgreSQL."""
    logs.configure(log_format, log_level)
    ctx.obj = _Context(database_url, data_dir, imports)


@cli.command()
@click.pass_obj
def migrate(obj: _Context) -> None:
    """Create or update the database schema; safe to run again."""
    url = obj.url()
    with store.connect(url) as conn:
        version = store.migrate(conn)
    click.echo(f"schema version {version} is in place on {store.describe(url)}")


def _seconds(
    name: str, default: float, help: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    envvar = "RUNNER_" + name.upper().replace("-", "_")
    return click.option(
        f"--{name}",
        envvar=envvar,
        type=click.FloatRange(min=0),
        default=default,
        show_default=True,
        help=f"{help} [env: {envvar}]",
    )


@cli.command()
@click.option(
    "--queue",
    "queues",
    multiple=True,
    envvar="RUNNER_QUEUES",
    help="Take jobs only from this queue (repeatable; default: all) "
    "[env: RUNNER_QUEUES].",
)
@_seconds(
    "poll-interval", 5.0, "Seconds between looks for work without a notification."
)
@_seconds("job-timeout", 600.0, "Seconds a handler may run unless it sets its own.")
@_seconds("shutdown-grace", 25.0, "Seconds the current job may run on after SIGTERM.")
@_seconds("retry-base-delay", 2.0, "Seconds before the first retry; doubles each time.")
@_seconds("retry-max-delay", 3600.0, "Longest wait between retries, in seconds.")
@_seconds("heartbeat-interval", 10.0, "Seconds between the runner's liveness records.")
@_seconds(
    "stall-threshold",
    60.0,
    "Seconds of silence after which a runner's job is put back.",
)
@_seconds("rescue-interval", 30.0, "Seconds between sweeps for stalled jobs.")
@_seconds("prune-interval", 3600.0, "Seconds between sweeps that delete old jobs.")
@_seconds("retention", 7 * 86400.0, "Seconds finished jobs are kept.")
@click.option(
    "--metrics-host",
    envvar="RUNNER_METRICS_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address of the metrics endpoint [env: RUNNER_METRICS_HOST].",
)
@click.option(
    "--metrics-port",
    envvar="RUNNER_METRICS_PORT",
    type=click.IntRange(0, 65535),
    default=9464,
    show_default=True,
    help="Port of the metrics endpoint; 0 turns it off [env: RUNNER_METRICS_PORT].",
)
@click.option(
    "--listen-database-url",
    envvar="RUNNER_LISTEN_DATABASE_URL",
    metavar="URL",
    help="A direct connection for LISTEN when DATABASE_URL goes through a pooler "
    "in transaction mode [env: RUNNER_LISTEN_DATABASE_URL].",
)
@click.pass_obj
def run(obj: _Context, /, queues: tuple[str, ...], **options: Any) -> None:
    """Run jobs until stopped by SIGTERM or SIGINT."""
    from runner.worker import Worker

    registry = obj.registry()
    settings = Settings(database_url=obj.url(), queues=queues, **options)
    try:
        metrics.serve(settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        raise RunnerError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
            f"{exc.strerror}"
        ) from exc
    Worker(settings, registry).run()


def _parse_value(text: str) -> Any:
    """A JSON value where the text is one (42, true, [1]), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _task_options(extra: list[str]) -> dict[str, Any]:
    """Turn `--key-id 123 --flag` into {"key_id": 123, "flag": True}."""
    args: dict[str, Any] = {}
    items = list(extra)
    while items:
        item = items.pop(0)
        if not item.startswith("--") or len(item) == 2:
            raise InvalidArguments(f"unexpected argument {item!r}")
        name, sep, value = item[2:].partition("=")
        if not sep:
            if items and not items[0].startswith("--"):
                value = items.pop(0)
            else:
                value = "true"
        args[name.replace("-", "_")] = _parse_value(value)
    return args


def _pairs(values: tuple[str, ...]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in values:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InvalidArguments(f"--arg takes name=value, not {pair!r}")
        args[name] = _parse_value(value)
    return args


def _json_args(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArguments(f"--args is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArguments("--args must be a JSON object")
    return value


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
@click.argument("task")
@click.option(
    "--arg",
    "arg_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A job argument (repeatable); VALUE is read as JSON when it is JSON.",
)
@click.option(
    "--args", "args_json", metavar="JSON", help="All job arguments as a JSON object."
)
@click.option("--queue", default="default", show_default=True)
@click.option(
    "--priority", type=int, default=0, show_default=True, help="Higher runs first."
)
@click.option(
    "--max-attempts", type=click.IntRange(min=1), default=5, show_default=True
)
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Seconds to wait before the job may run.",
)
@click.option(
    "--run-at",
    type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]),
    help="When the job may run (ISO 8601; UTC unless an offset is given).",
)
@click.option("--wait", is_flag=True, help="Wait for the outcome and print it.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="With --wait: give up after this many seconds.",
)
@click.pass_context
def enqueue(
    ctx: click.Context,
    task: str,
    arg_pairs: tuple[str, ...],
    args_json: str | None,
    queue: str,
    priority: int,
    max_attempts: int,
    delay: float,
    run_at: datetime | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Enqueue a job of TASK and print its id.

    Job arguments can also be given as options named after them, as in
    `runner enqueue rotate_key --key-id 123`.
    """
    obj: _Context = ctx.obj
    args = {**_json_args(args_json), **_pairs(arg_pairs), **_task_options(ctx.args)}
    if run_at is not None and run_at.tzinfo is None:
        run_at = run_at.replace(tzinfo=datetime.now().astimezone().tzinfo).astimezone()
    registry = obj.registry()
    recipient = _recipient_for(task, args, wait)
    url = obj.url()
    with store.connect(url) as conn:
        job_id = client.enqueue(
            task,
            args,
            conn=conn,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            delay=delay,
            run_at=run_at,
            registry=registry,
        )
        click.echo(job_id)
        if wait:
            _print_outcome(conn, client.wait_for(conn, job_id, timeout), recipient)


def _recipient_for(task: str, args: dict[str, Any], wait: bool) -> Recipient | None:
    """A one-time key pair to receive a rotated key's secret, when waiting for one."""
    if task != "rotate_key" or not wait or "recipient" in args:
        return None
    recipient = Recipient()
    args["recipient"] = recipient.public
    return recipient


def _print_outcome(
    conn: store.Connection, job: dict[str, Any], recipient: Recipient | None
) -> None:
    result = job["result"]
    if job["state"] != JobState.SUCCEEDED:
        _fail(f"job {job['id']} {job['state']}: {job['last_error']}")
    if recipient is not None and isinstance(result, dict) and "sealed_secret" in result:
        secret = recipient.open(result.pop("sealed_secret"))
        # Shown once: the sealed copy is wiped as soon as it was read.
        store.forget_result_field(conn, job["id"], "sealed_secret")
        click.echo(json.dumps(result, indent=2))
        click.echo(f"new secret (shown once, store it now): {secret}")
        return
    click.echo(json.dumps(result, indent=2))


@cli.command("handlers")
@click.pass_obj
def list_handlers(obj: _Context) -> None:
    """List the registered handlers."""
    rows = [
        (
            h.name,
            "transactional" if h.transactional else "plain",
            h.func.__module__,
            h.description,
        )
        for h in obj.registry()
    ]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
    for name, kind, module, description in rows:
        click.echo(
            f"{name:<{widths[0]}}  {kind:<{widths[1]}}  {module:<{widths[2]}}  "
            f"{description}".rstrip()
        )


@cli.command("database-url")
@click.pass_obj
def database_url(obj: _Context) -> None:
    """Print the URL of the database in use, for psql and other clients."""
    click.echo(obj.url())


@cli.command("demo-keys")
@click.option("--count", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--project-id", type=int, default=1, show_default=True)
@click.pass_obj
def demo_keys(obj: _Context, count: int, project_id: int) -> None:
    """Create a few API keys to try rotation on; prints their ids."""
    from handlers.rotate_key import create_key

    with store.connect(obj.url()) as conn, store.translate_errors(), conn.transaction():
        for n in range(count):
            scopes = ["read", "write"] if n % 2 else ["read"]
            key_id, prefix, _ = create_key(conn, project_id, scopes=scopes)
            click.echo(
                f"key {key_id}  project {project_id}  prefix {prefix}  "
                f"scopes {','.join(scopes)}"
            )


@cli.command()
@click.option(
    "--listen-database-url",
    envvar="RUNNER_LISTEN_DATABASE_URL",
    metavar="URL",
    help="The runners' direct connection for LISTEN, if they use one.",
)
@click.pass_obj
def doctor(obj: _Context, listen_database_url: str | None) -> None:
    """Check the deployment: one line per finding; exit 1 when one fails."""
    from runner.doctor import Level, examine

    failed = False
    for finding in examine(obj.url(), listen_database_url):
        click.echo(str(finding))
        failed = failed or finding.level is Level.FAIL
    if failed:
        sys.exit(1)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def main() -> None:
    """Entry point of the `runner` script: expected failures print one line."""
    try:
        cli(standalone_mode=True)
    except RunnerError as exc:
        _fail(str(exc))
