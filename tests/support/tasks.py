"""Handlers the tests run: `runner run --import tests.support.tasks`."""

from __future__ import annotations

import os
import time
from typing import Any

from runner import JobContext, PermanentError, handler


@handler
def sleep(seconds: float) -> dict[str, Any]:
    """Sleep, then report the pid that ran the job."""
    time.sleep(seconds)
    return {"pid": os.getpid()}


@handler
def fail(message: str = "boom") -> None:
    """Always raise."""
    raise RuntimeError(message)


@handler
def fail_permanently(message: str = "cannot ever work") -> None:
    raise PermanentError(message)


@handler(context=True)
def flaky(ctx: JobContext, succeed_on: int) -> dict[str, Any]:
    """Fail until the given attempt."""
    if ctx.attempt < succeed_on:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return {"attempt": ctx.attempt}


@handler(transactional=True)
def record(ctx: JobContext, label: str, sleep: float = 0) -> dict[str, Any]:
    """Insert a row into test_effects (made by the suite) in the job's transaction."""
    assert ctx.conn is not None
    ctx.conn.execute(
        "INSERT INTO test_effects (job_id, label) VALUES (%s, %s)", (ctx.job_id, label)
    )
    time.sleep(sleep)
    return {"label": label}


@handler(transactional=True, timeout=1)
def query_forever(ctx: JobContext) -> None:
    """Run a query that never ends; the one-second timeout must cancel it."""
    assert ctx.conn is not None
    ctx.conn.execute("SELECT pg_sleep(3600)")


@handler(timeout=1)
def hang() -> None:
    """Never return on its own."""
    while True:
        time.sleep(0.1)


@handler
def echo(**args: Any) -> dict[str, Any]:
    return args


@handler
def exit_now(how: str = "sys.exit") -> None:
    """Raise what ends a Python program: the runner must treat it as a failure."""
    if how == "keyboard":
        raise KeyboardInterrupt
    raise SystemExit(0)


@handler
def odd_result(kind: str) -> Any:
    """Return a value that jsonb cannot store."""
    values: dict[str, Any] = {
        "nan": float("nan"),
        "nul": "a\x00b",
        "surrogate": "\ud800",
        "set": {1, 2},
        "huge": "y" * (2 << 20),
    }
    return values[kind]


@handler(context=True)
def note(ctx: JobContext, path: str, sleep: float = 0) -> None:
    """Append the job's id to a file: a side effect outside the database."""
    time.sleep(sleep)
    with open(path, "a", encoding="utf-8") as out:
        out.write(f"{ctx.job_id}\n")


@handler
def fail_until(path: str) -> dict[str, Any]:
    """Fail until the file at `path` exists."""
    if not os.path.exists(path):
        raise RuntimeError(f"{path} does not exist yet")
    return {"found": path}
