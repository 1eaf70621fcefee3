"""Handlers that only the fault tests run: set RUNNER_IMPORT to `FAULT_TASKS`."""

from __future__ import annotations

import os

from runner import handler

# RUNNER_IMPORT for runners that take both the common test handlers and these.
FAULT_TASKS = "tests.support.tasks tests.support.fault_tasks"


@handler
def crash(code: int = 1) -> None:
    """End the process at once, as the kernel's OOM killer or a fault in native code
    would: no cleanup runs and no outcome is recorded."""
    os._exit(code)
