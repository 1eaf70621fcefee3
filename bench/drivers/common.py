"""What every system's driver shares; standard library only, as each driver runs in
the virtual environment of the system it drives.

A driver is a script with these commands, each taking the database URL first:

    setup URL                       install the system's schema
    fill URL N                      enqueue N no-op jobs at once (not timed)
    probe URL                       enqueue one no-op job
    latency URL N INTERVAL_MS OUT   enqueue N marked jobs one at a time, writing
                                    "key commit-time" lines to OUT
    worker URL                      run one worker process until SIGTERM

The worker's `mark` task appends "key start-time" lines to the file named by
BENCH_MARKS_FILE. Times are host seconds from time.time().
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

MARKS_ENV = "BENCH_MARKS_FILE"


class Marks:
    """Appends one line per marked job; opened on first use, in the worker only."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def record(self, key: int, at: float) -> None:
        if self._fd is None:
            self._fd = os.open(
                os.environ[MARKS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
            )
        os.write(self._fd, f"{key} {at!r}\n".encode())


def paced(count: int, interval: float, enqueue: Callable[[int], Any], out: str) -> None:
    """Call `enqueue(key)` every `interval` s; record the time each one returned."""
    lines = []
    start = time.monotonic()
    for key in range(count):
        delay = start + key * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        enqueue(key)
        lines.append(f"{key} {time.time()!r}\n")
    with open(out, "w") as f:
        f.writelines(lines)


def command() -> tuple[str, str, list[str]]:
    """The command, the URL and the remaining arguments from sys.argv."""
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} COMMAND URL [ARGS...]")
    return sys.argv[1], sys.argv[2], sys.argv[3:]
