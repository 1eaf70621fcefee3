"""Handlers the benchmark adds to `runner run` with `--import bench.handlers`."""

from __future__ import annotations

import os
import time

from runner.registry import handler

# The file where `bench_mark` appends "key start-time" lines, one per job.
MARKS_ENV = "BENCH_MARKS_FILE"
_marks_fd: int | None = None


@handler
def bench_mark(key: int) -> None:
    """Record when the handler started (host time, seconds), for pick-up latency."""
    started = time.time()
    global _marks_fd
    if _marks_fd is None:
        _marks_fd = os.open(
            os.environ[MARKS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
    os.write(_marks_fd, f"{key} {started!r}\n".encode())
