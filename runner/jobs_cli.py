"""`runner jobs`: inspect and steer jobs from the command line.

Tables for a terminal, or JSON with `--json`. Ages are counted on the database's
clock, like every time the runner acts on. The data access is runner.admin.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import click

from runner import admin
from runner.jobs import JobState

# The first line of an error is cut to this many characters in a table.
ERROR_WIDTH = 60
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SPAN_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class _Database(Protocol):
    """The CLI's context object (runner.cli), as far as these commands need it."""

    def url(self) -> str: ...


def _since(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> admin.Since | None:
    """A span back from now (30s, 10m, 2h, 1d, 1w) or an ISO time (UTC unless it has
    an offset)."""
    if value is None:
        return None
    text = value.strip()
    span = _SPAN.match(text)
    try:
        if span:
            seconds = float(span[1]) * _SPAN_UNITS[span[2]]
            return admin.Since(ago=timedelta(seconds=seconds))
        at = datetime.fromisoformat(text)
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        at.astimezone(UTC)  # a time that only exists outside years 1-9999 in UTC
    except OverflowError:
        raise click.BadParameter(f"{text!r} is out of range") from None
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a span such as 10m, 2h or 1d nor an ISO time "
            "such as 2026-12-24T18:00:00"
        ) from None
    return admin.Since(at=at)


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def jobs() -> None:
    """Inspect and steer jobs: list, show, retry, cancel, stats."""


@jobs.command("list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in JobState]),
    help="Only jobs in this state (repeatable).",
)
@click.option("--task", help="Only jobs of this task.")
@click.option("--queue", help="Only jobs of this queue.")
@click.option(
    "--since",
    callback=_since,
    metavar="WHEN",
    help="Only jobs that finished since then, and unfinished ones that changed since "
    "then: 10m, 2h, 1d or an ISO time.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    help="At most this many jobs.",
)
@_json_option
@click.pass_obj
def list_jobs(
    obj: _Database,
    states: tuple[str, ...],
    task: str | None,
    queue: str | None,
    since: admin.Since | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    which = admin.JobFilter(
        states=tuple(JobState(s) for s in states),
        task=task,
        queue=queue,
        since=since or admin.Since(),
        limit=limit,
    )
    with admin.connect(obj.url()) as conn:
        rows = admin.list_jobs(conn, which)
        now = admin.database_now(conn)
    if as_json:
        _echo_json(rows)
    elif not rows:
        click.echo("no jobs match")
    else:
        _echo_table(_LIST_HEADER, [_list_row(row, now) for row in rows], numeric={0})


_LIST_HEADER = (
    "id",
    "task",
    "queue",
    "state",
    "attempts",
    "created",
    "updated",
    "last error",
)


def _list_row(row: dict[str, Any], now: datetime) -> tuple[str, ...]:
    return (
        str(row["id"]),
        row["task"],
        row["queue"],
        row["state"],
        f"{row['attempts']}/{row['max_attempts']}",
        _ago(now, row["created_at"]),
        _ago(now, row["updated_at"]),
        _cut(row["last_error"]),
    )


@jobs.command()
@click.argument("job_id", type=int)
@_json_option
@click.pass_obj
def show(obj: _Database, job_id: int, as_json: bool) -> None:
    """Show every field of a job, and the error of each attempt.

    Secrets in its arguments and result are withheld.
    """
    with admin.connect(obj.url()) as conn:
        job = admin.job_detail(conn, job_id)
    if as_json:
        job.pop("now")
        _echo_json(job)
        return
    _echo_fields(_detail_fields(job))
    _echo_history(job["errors"])


def _detail_fields(job: dict[str, Any]) -> list[tuple[str, str]]:
    now = job["now"]
    fields = [
        ("job", str(job["id"])),
        ("task", job["task"]),
        ("queue", job["queue"]),
        ("priority", str(job["priority"])),
        ("state", job["state"]),
        ("attempts", f"{job['attempts']} of {job['max_attempts']}"),
        ("created", _when(now, job["created_at"])),
        ("run at", _when(now, job["run_at"])),
        ("updated", _when(now, job["updated_at"])),
        ("finished", _when(now, job["finished_at"])),
        ("claimed by", _runner(job)),
        ("claimed at", _when(now, job["claimed_at"])),
        ("cancel requested", _when(now, job["cancel_requested_at"])),
        ("last error", job["last_error"] or "-"),
        ("args", _pretty(job["args"])),
        ("result", _pretty(job["result"])),
    ]
    if job["withheld"]:
        fields.append(("withheld", ", ".join(job["withheld"]) + " (secrets)"))
    return fields


def _runner(job: dict[str, Any]) -> str:
    if job["claimed_by"] is None:
        return "-"
    if job["runner_hostname"] is None:
        return f"{job['claimed_by']} (no longer registered)"
    seen = _ago(job["now"], job["runner_last_seen_at"])
    return (
        f"{job['claimed_by']} (pid {job['runner_pid']} on {job['runner_hostname']}, "
        f"last seen {seen})"
    )


def _echo_history(errors: list[dict[str, Any]]) -> None:
    if not errors:
        click.echo("\nno errors")
        return
    click.echo("\nerror history, oldest first:")
    for entry in errors:
        at = _utc(datetime.fromisoformat(entry["at"]))
        if entry["runner"] is None:
            # An operator's note, such as a retry by hand.
            click.echo(f"  {at}  {entry['error']}")
            continue
        click.echo(f"  attempt {entry['attempt']}  {at}  runner {entry['runner']}")
        for line in str(entry["error"]).splitlines():
            click.echo(f"    {line}")


@jobs.command()
@click.argument("job_id", type=int)
@click.pass_obj
def retry(obj: _Database, job_id: int) -> None:
    """Requeue a failed or cancelled job, with a fresh set of attempts.

    Its error history is kept.
    """
    with admin.connect(obj.url()) as conn:
        attempts = admin.retry(conn, job_id)
    click.echo(f"job {job_id} queued again, with {attempts} attempts")


@jobs.command()
@click.argument("job_id", type=int)
@click.pass_obj
def cancel(obj: _Database, job_id: int) -> None:
    """Cancel a queued job; ask the runner of a running job to stop it."""
    with admin.connect(obj.url()) as conn:
        done = admin.cancel(conn, job_id)
    if done.state == JobState.CANCELLED:
        click.echo(f"job {job_id} cancelled")
        return
    click.echo(
        f"job {job_id} is running: runner {done.runner} stops it at its next "
        "heartbeat, and it ends cancelled"
    )


@jobs.command()
@click.option(
    "--since",
    callback=_since,
    metavar="WHEN",
    default="1h",
    show_default=True,
    help="Count the jobs finished since then: 10m, 2h, 1d or an ISO time.",
)
@_json_option
@click.pass_obj
def stats(obj: _Database, since: admin.Since, as_json: bool) -> None:
    """Count jobs by state and task; the wait of the oldest runnable one.

    Queued and running jobs are all counted; finished ones since --since.
    """
    with admin.connect(obj.url()) as conn:
        counts = admin.stats(conn, since)
    if as_json:
        _echo_json(
            {
                "since": counts.since,
                "now": counts.now,
                "by_state": counts.by_state,
                "by_task": counts.by_task,
                "runnable": counts.runnable,
                "oldest_runnable_age_seconds": counts.oldest_runnable_age,
            }
        )
        return
    _echo_stats(counts)


def _echo_stats(counts: admin.Stats) -> None:
    states = [s.value for s in JobState]
    click.echo(f"queued and running now; finished since {_utc(counts.since)}")
    rows = [
        (task, *(str(by_state[s]) for s in states))
        for task, by_state in sorted(counts.by_task.items())
    ]
    rows.append(("(all)", *(str(counts.by_state[s]) for s in states)))
    _echo_table(("task", *states), rows, numeric=set(range(1, len(states) + 1)))
    if counts.oldest_runnable_age is None:
        click.echo("no runnable job is waiting")
    else:
        click.echo(
            f"{counts.runnable} runnable, the oldest waiting "
            f"{counts.oldest_runnable_age:.1f} s"
        )


# Output


def _echo_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Iterable[int] = ()
) -> None:
    """Aligned columns: numbers to the right, the last column left ragged."""
    right = set(numeric)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        click.echo("  ".join(cells).rstrip())


def _echo_fields(fields: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        first, *rest = value.splitlines() or [""]
        click.echo(f"{label:<{width}}  {first}".rstrip())
        for line in rest:
            click.echo(f"{'':<{width}}  {line}".rstrip())


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot show a {type(value).__name__} as JSON")


def _pretty(value: Any) -> str:
    return "-" if value is None else json.dumps(value, indent=2, ensure_ascii=False)


def _cut(error: str | None) -> str:
    """The first line of an error, cut to ERROR_WIDTH characters."""
    if not error:
        return ""
    line = error.splitlines()[0]
    return line if len(line) <= ERROR_WIDTH else line[: ERROR_WIDTH - 3] + "..."


def _utc(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _when(now: datetime, at: datetime | None) -> str:
    return "-" if at is None else f"{_utc(at)} ({_ago(now, at)})"


def _ago(now: datetime, at: datetime) -> str:
    """How long before `now` the moment `at` was, briefly: 42s ago, 5m ago, in 2h."""
    seconds = (now - at).total_seconds()
    span = _span(abs(seconds))
    return f"{span} ago" if seconds >= 0 else f"in {span}"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
