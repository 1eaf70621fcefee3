"""Log output of the CLI: one line per event, plain text or JSON lines.

Only the CLI calls `configure`; the library itself never sets up logging. A JSON
line always has an `action`: the one its log call gave, or `unstructured` for a
record that came without one (from another library, or a Python warning).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

# Structured fields that log calls pass through `extra`.
FIELDS = ("action", "job_id", "task", "attempt", "worker_id")
# The action of a JSON line whose record named none.
UNSTRUCTURED = "unstructured"

# The job whose attempt runs in this thread, if any (see `job_context`).
_current_job: ContextVar[dict[str, Any] | None] = ContextVar(
    "runner_current_job", default=None
)
# Whether `configure` chose JSON lines; read by `json_lines`.
_json_lines = False


@contextmanager
def job_context(job_id: int, task: str, attempt: int) -> Iterator[None]:
    """Give every record logged within (a handler's own included) the job's fields.

    Fields a log call passes itself take precedence. Threads that the block starts
    do not inherit the job.
    """
    token = _current_job.set({"job_id": job_id, "task": task, "attempt": attempt})
    try:
        yield
    finally:
        _current_job.reset(token)


class JobFields(logging.Filter):
    """Adds the fields of the job running in the logging thread to its records."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_current_job.get() or {}).items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "action": UNSTRUCTURED,
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s")


def configure(fmt: str = "text", level: str = "INFO") -> None:
    """Send the runner's logs to stderr, as `text` or `json` lines."""
    global _json_lines
    _json_lines = fmt == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if _json_lines else TextFormatter())
    handler.addFilter(JobFields())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # APScheduler reports every run of every sweep at INFO.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # httpx logs every webhook request's URL at INFO, and some URLs carry tokens.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # Warnings and crashes would otherwise reach stderr as bare, multi-line text.
    logging.captureWarnings(True)
    if _json_lines:
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread


def json_lines() -> bool:
    """Whether the CLI was asked for JSON lines, so that its errors are JSON too."""
    return _json_lines


def _log_uncaught(
    kind: type[BaseException],
    exc: BaseException,
    tb: TracebackType | None,
) -> None:
    logger.critical(
        "uncaught %s: %s",
        kind.__name__,
        exc,
        exc_info=(kind, exc, tb),
        extra={"action": "uncaught_exception"},
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or args.exc_type is SystemExit:
        return
    _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)
