"""The `runner` command line."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from prometheus_client import REGISTRY

from runner import cli_webhooks, client, embedded, logs, metrics, store
from runner.collector import QueueCollector
from runner.config import Settings
from runner.delivery import (
    SEALED_FIELD,
    Inbox,
    create_key_file,
    open_secret,
    read_key_file,
)
from runner.errors import (
    ConfigurationError,
    InvalidArguments,
    RunnerError,
    UnknownTask,
    WaitTimedOut,
)
from runner.health import Health
from runner.http_server import HttpServer
from runner.jobs import JobState
from runner.jobs_cli import jobs
from runner.registry import Registry, discover
from runner.sealing import Recipient

logger = logging.getLogger("runner")

# Seconds `enqueue --wait` waits before it says that it is still waiting.
WAIT_NOTICE_AFTER = 5.0


@dataclass
class _Context:
    database_url: str | None
    data_dir: Path | None
    imports: tuple[str, ...]
    _url: str | None = field(default=None, init=False)

    @property
    def embedded_dir(self) -> Path | None:
        """The embedded server's data directory, when no database is configured."""
        if self.database_url:
            return None
        return self.data_dir or embedded.default_data_dir()

    def url(self) -> str:
        """The database to use; starts the embedded one when none is configured."""
        if self._url is None:
            self._url = embedded.resolve_database_url(self.database_url, self.data_dir)
        return self._url

    def registry(self) -> Registry:
        if self.imports and os.getcwd() not in sys.path:
            # Modules named with --import are found in the current folder too, as
            # `python -m` would.
            sys.path.insert(0, os.getcwd())
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
    "poll-interval", 10.0, "Seconds between looks for work without a notification."
)
@_seconds("job-timeout", 600.0, "Seconds a handler may run unless it sets its own.")
@_seconds("shutdown-grace", 25.0, "Seconds the current job may run on after SIGTERM.")
@_seconds("retry-base-delay", 2.0, "Seconds before the first retry; doubles each time.")
@_seconds("retry-max-delay", 3600.0, "Longest wait between retries, in seconds.")
@_seconds("heartbeat-interval", 15.0, "Seconds between the runner's liveness records.")
@_seconds(
    "stall-threshold",
    60.0,
    "Seconds of silence after which a runner's job is put back.",
)
@_seconds("rescue-interval", 30.0, "Seconds between sweeps for stalled jobs.")
@_seconds("prune-interval", 3600.0, "Seconds between sweeps that delete old jobs.")
@_seconds("retention", 7 * 86400.0, "Seconds succeeded jobs are kept.")
@_seconds(
    "failed-retention", 30 * 86400.0, "Seconds failed and cancelled jobs are kept."
)
@click.option(
    "--batch-size",
    envvar="RUNNER_BATCH_SIZE",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Most jobs claimed per round trip while jobs are fast; they still run one "
    "at a time. 1 claims a job only once the one before it has finished "
    "[env: RUNNER_BATCH_SIZE].",
)
@click.option(
    "--metrics-host",
    envvar="RUNNER_METRICS_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address of /metrics, /healthz and /readyz [env: RUNNER_METRICS_HOST].",
)
@click.option(
    "--metrics-port",
    envvar="RUNNER_METRICS_PORT",
    type=click.IntRange(0, 65535),
    default=9464,
    show_default=True,
    help="Port of /metrics, /healthz and /readyz; 0 turns them off "
    "[env: RUNNER_METRICS_PORT].",
)
@click.option(
    "--listen-database-url",
    envvar="RUNNER_LISTEN_DATABASE_URL",
    metavar="URL",
    help="A direct connection for LISTEN when DATABASE_URL goes through a pooler "
    "in transaction mode [env: RUNNER_LISTEN_DATABASE_URL].",
)
@click.option(
    "--api-token",
    envvar="RUNNER_API_TOKEN",
    metavar="TOKEN",
    help="Serve the HTTP API (/v1/) beside /metrics to requests that bear this "
    "token; prefer the environment, which other users cannot read "
    "[env: RUNNER_API_TOKEN; default: no API].",
)
@click.option(
    "--rotate-keys-older-than",
    envvar="RUNNER_ROTATE_KEYS_OLDER_THAN",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="HOURS",
    help="Enqueue a rotation of every API key older than this many hours; 0: "
    "never [env: RUNNER_ROTATE_KEYS_OLDER_THAN].",
)
@_seconds("rotate-keys-interval", 3600.0, "Seconds between looks for keys to rotate.")
@click.option(
    "--rotate-keys-recipient",
    envvar="RUNNER_ROTATE_KEYS_RECIPIENT",
    metavar="PUBLIC_KEY",
    help="Seal the new secret of every automatic rotation to this public key, "
    "printed by `runner recipient new FILE`; required with "
    "--rotate-keys-older-than. `none` seals them to nobody: the holders of the "
    "old keys lose access when the grace period ends "
    "[env: RUNNER_ROTATE_KEYS_RECIPIENT].",
)
@click.pass_obj
def run(
    obj: _Context,
    /,
    queues: tuple[str, ...],
    api_token: str | None,
    rotate_keys_recipient: str | None,
    **options: Any,
) -> None:
    """Run jobs until stopped by SIGTERM or SIGINT."""
    from runner.worker import Worker

    registry = obj.registry()
    # Empty values in the environment configure nothing.
    settings = Settings(
        database_url=obj.url(),
        queues=queues,
        api_token=api_token or None,
        rotate_keys_recipient=rotate_keys_recipient or None,
        **options,
    )
    _check_automatic_rotation(settings, registry)
    if obj.embedded_dir is not None:
        logger.info(
            "using the embedded PostgreSQL in %s",
            obj.embedded_dir,
            extra={"action": "embedded_database"},
        )
    worker = Worker(settings, registry)
    _serve_http(settings, worker.health, registry)
    worker.run()


def _check_automatic_rotation(settings: Settings, registry: Registry) -> None:
    """Refuse to start a rotation that every job of would fail (grace policy); warn
    when it seals the new secrets to nobody."""
    if settings.rotate_keys_older_than == 0:
        return
    from runner.scheduler import ROTATED_BY

    args: dict[str, Any] = {"key_id": 1, "requested_by": ROTATED_BY}
    recipient = settings.rotation_recipient
    if recipient is not None:
        args["recipient"] = recipient
    try:
        registry.get("rotate_key").check_arguments(args)
    except (InvalidArguments, UnknownTask) as exc:
        raise ConfigurationError(f"automatic key rotation cannot run: {exc}") from None
    if recipient is None:
        logger.warning(
            "automatic key rotation seals the new secrets to nobody "
            "(--rotate-keys-recipient none): the holders of rotated keys lose "
            "access when the old keys' grace period ends",
            extra={"action": "rotation_without_recipient"},
        )


def _serve_http(settings: Settings, health: Health, registry: Registry) -> None:
    """Serve /metrics, /healthz, /readyz and, with a token, the HTTP API from a
    daemon thread; port 0: none."""
    host, port = settings.metrics_host, settings.metrics_port
    if port == 0:
        if settings.api_token is not None:
            raise ConfigurationError(
                "the HTTP API needs the HTTP server, which --metrics-port 0 turns off"
            )
        return
    try:
        server = HttpServer(host, port)
    except OSError as exc:
        raise RunnerError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror}"
        ) from exc
    REGISTRY.register(QueueCollector(settings.database_url))
    server.add_route("/metrics", metrics.exposition)
    health.add_routes(server)
    served = "/metrics, /healthz and /readyz"
    if settings.api_token is not None:
        from runner.api import Api

        Api(settings.api_token, settings.database_url, registry).add_routes(server)
        served = "/metrics, /healthz, /readyz and the API (/v1/)"
        _warn_if_exposed(host)
    server.start()
    logger.info(
        "serving %s on http://%s:%s",
        served,
        host,
        port,
        extra={"action": "http_serving"},
    )


def _warn_if_exposed(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        logger.warning(
            "the HTTP API takes its token in clear over plain HTTP on %s: reach it "
            "from other machines only through a proxy that adds TLS",
            host,
            extra={"action": "api_exposed"},
        )


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
            raise click.UsageError(f"unexpected argument {item!r}")
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
            raise click.UsageError(f"--arg takes name=value, not {pair!r}")
        args[name] = _parse_value(value)
    return args


def _merged(*sources: dict[str, Any]) -> dict[str, Any]:
    """The arguments of --args, --arg and the task's options, each given once."""
    args: dict[str, Any] = {}
    for source in sources:
        for name, value in source.items():
            if name in args and args[name] != value:
                raise click.UsageError(f"the argument {name!r} is given twice")
            args[name] = value
    return args


def _json_args(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.UsageError(f"--args is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise click.UsageError("--args must be a JSON object")
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
    "--priority",
    type=click.IntRange(-(2**31), 2**31 - 1),
    default=0,
    show_default=True,
    help="Higher runs first.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 2**31 - 1),
    default=5,
    show_default=True,
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
    help="When the job may run, as 2026-12-24T18:00:00 (UTC) or with an offset "
    "(+01:00).",
)
@click.option(
    "--unique-key",
    metavar="KEY",
    help="Enqueue nothing while a queued or running job has this key; print that "
    "job's id instead.",
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
    unique_key: str | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Enqueue a job of TASK and print its id.

    Job arguments can also be given as options named after them, as in
    `runner enqueue rotate_key --key-id 123`.
    """
    obj: _Context = ctx.obj
    if timeout is not None and not wait:
        raise click.UsageError("--timeout goes with --wait")
    if run_at is not None and delay:
        raise click.UsageError("give --run-at or --delay, not both")
    if run_at is not None and run_at.tzinfo is None:
        run_at = run_at.replace(tzinfo=UTC)
    args = _merged(_json_args(args_json), _pairs(arg_pairs), _task_options(ctx.args))
    if task == "rotate_key":
        # The rotation's audit record names who asked for it.
        args.setdefault("requested_by", "cli")
    recipient = _recipient_for(task, args)
    registry = obj.registry()
    options: dict[str, Any] = dict(
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        delay=delay,
        run_at=run_at,
        registry=registry,
    )
    with store.connect(obj.url()) as conn:
        created = True
        if unique_key is None:
            job_id = client.enqueue(task, args, conn=conn, **options)
        else:
            job_id, created = client.enqueue_unique(
                task, args, unique_key, conn=conn, **options
            )
        if recipient is not None and created:
            Inbox().keep(job_id, recipient)
        click.echo(job_id)
        if not created:
            _say_existing(job_id, str(unique_key), recipient is not None)
            # The job that stands for ours seals its secret to someone else.
            recipient = None
        if wait:
            job = _wait(conn, job_id, timeout, recipient is not None)
            _print_outcome(conn, job, recipient)
        elif recipient is not None:
            click.echo(_secret_hint(job_id), err=True)


def _say_existing(job_id: int, unique_key: str, sealed: bool) -> None:
    click.echo(
        f"job {job_id} with unique key {unique_key!r} is already queued or running: "
        "nothing enqueued",
        err=True,
    )
    if sealed:
        click.echo(
            f"job {job_id}'s new secret is sealed to whoever enqueued it, not to you",
            err=True,
        )


def _recipient_for(task: str, args: dict[str, Any]) -> Recipient | None:
    """A one-time key pair to receive a rotated key's secret, unless one is given."""
    if task != "rotate_key" or "recipient" in args:
        return None
    recipient = Recipient()
    args["recipient"] = recipient.public
    return recipient


def _secret_hint(job_id: int) -> str:
    return f"run `runner secret {job_id}` once the job is done to see the new secret"


def _wait(
    conn: store.Connection, job_id: int, timeout: float | None, sealed: bool
) -> dict[str, Any]:
    """Wait for the job; say so on stderr when it takes a while (no runner?)."""
    first = WAIT_NOTICE_AFTER if timeout is None else min(timeout, WAIT_NOTICE_AFTER)
    try:
        return client.wait_for(conn, job_id, first)
    except WaitTimedOut:
        if timeout is not None and timeout <= WAIT_NOTICE_AFTER:
            raise _still_waiting(conn, job_id, timeout, sealed) from None
    state = store.get_job(conn, job_id)["state"]
    why = "is a runner running?" if state == JobState.QUEUED else f"it is {state}"
    click.echo(f"waiting for job {job_id}: {why}", err=True)
    rest = None if timeout is None else timeout - first
    try:
        return client.wait_for(conn, job_id, rest)
    except WaitTimedOut:
        raise _still_waiting(conn, job_id, timeout or 0, sealed) from None


def _still_waiting(
    conn: store.Connection, job_id: int, timeout: float, sealed: bool
) -> RunnerError:
    state = store.get_job(conn, job_id)["state"]
    hint = f"; {_secret_hint(job_id)}" if sealed else ""
    return WaitTimedOut(
        f"job {job_id} is still {state} after {timeout:g} s; it will still run{hint}"
    )


def _print_outcome(
    conn: store.Connection, job: dict[str, Any], recipient: Recipient | None
) -> None:
    if job["state"] != JobState.SUCCEEDED:
        # The key stays in the inbox: `runner jobs retry` may run the job again,
        # and `runner secret` then shows its secret.
        raise RunnerError(
            f"job {job['id']} {job['state']}"
            + (f": {job['last_error']}" if job["last_error"] else "")
        )
    secret = None
    if recipient is not None:
        secret = open_secret(conn, job, recipient)
        Inbox().discard(job["id"])
    click.echo(json.dumps(job["result"], indent=2))
    if secret is not None:
        click.echo(f"new secret (shown once, store it now): {secret}")


@cli.command()
@click.argument("job_id", type=int)
@click.option(
    "--recipient-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Open a secret sealed to the key pair of FILE (`runner recipient new`), "
    "such as an automatic rotation's; FILE is kept.",
)
@click.pass_obj
def secret(obj: _Context, job_id: int, recipient_file: Path | None) -> None:
    """Show, once, the new secret of a rotation: one enqueued here without --wait,
    or with --recipient-file one sealed to that key pair."""
    inbox: Inbox | None = None
    if recipient_file is None:
        inbox = Inbox()
        recipient = inbox.recipient(job_id)
    else:
        recipient = read_key_file(recipient_file)
    with store.connect(obj.url()) as conn:
        job = store.get_job(conn, job_id)
        if not JobState(job["state"]).is_final:
            raise RunnerError(f"job {job_id} is still {job['state']}: try again later")
        if job["state"] != JobState.SUCCEEDED:
            # The key stays in the inbox: `runner jobs retry` may run the job again.
            raise RunnerError(
                f"job {job_id} {job['state']} and issued no key"
                + (f": {job['last_error']}" if job["last_error"] else "")
            )
        if recipient_file is not None:
            _check_sealed_to(job, recipient, recipient_file)
        value = open_secret(conn, job, recipient)
    _discard(inbox, job_id)
    if value is None:
        raise RunnerError(_no_secret(job_id))
    click.echo(
        f"new secret of key {job['result'].get('new_key_id')} "
        f"(shown once, store it now): {value}"
    )


def _discard(inbox: Inbox | None, job_id: int) -> None:
    if inbox is not None:
        inbox.discard(job_id)


def _check_sealed_to(job: dict[str, Any], recipient: Recipient, key_file: Path) -> None:
    """Refuse a job whose secret is sealed to a key other than the file's."""
    result, args = job["result"], job["args"]
    if not isinstance(result, dict) or SEALED_FIELD not in result:
        raise RunnerError(_no_secret(job["id"]))
    if not isinstance(args, dict) or args.get("recipient") != recipient.public:
        raise RunnerError(
            f"job {job['id']}'s secret is sealed to another key than {key_file}'s"
        )


def _no_secret(job_id: int) -> str:
    return (
        f"job {job_id} holds no secret: it was shown already, it was sealed to "
        "nobody, or the key had been rotated before and this job issued no new one"
    )


@cli.group("recipient")
def recipient_group() -> None:
    """Key pairs that receive the new secrets of automatic key rotations."""


@recipient_group.command("new")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def new_recipient(file: Path) -> None:
    """Make a key pair: write its private half to FILE, readable by you only
    (never replacing a file), and print its public half."""
    recipient = create_key_file(file)
    click.echo(recipient.public)
    click.echo(
        f"private key written to {file} (mode 0600); the public key goes to "
        "RUNNER_ROTATE_KEYS_RECIPIENT, and `runner secret JOB_ID --recipient-file "
        f"{file}` opens the secrets sealed to it",
        err=True,
    )


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


cli.add_command(cli_webhooks.webhooks)
cli.add_command(jobs)


def _fail(message: str, status: int = 1) -> NoReturn:
    if logs.json_lines():
        # Log collectors that read JSON lines would mangle a bare line.
        logger.error("%s", message, extra={"action": "command_failed"})
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(status)


def main() -> None:
    """Entry point of the `runner` script: expected failures print one line."""
    try:
        status = cli.main(standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        status = 0
    except click.UsageError as exc:
        _fail(exc.format_message(), status=2)
    except click.ClickException as exc:
        _fail(exc.format_message())
    except click.Abort:
        _fail("aborted")
    except RunnerError as exc:
        _fail(str(exc))
    sys.exit(status if isinstance(status, int) else 0)
