"""A host clock set wrong, for one process, with libfaketime (Debian package faketime).

The `faketime` command forks and waits for its child, so a signal sent to it never
reaches the program it started. Instead, these settings are the environment that
`faketime` gives its child: passed to a process directly, they move that process's
wall clock while signals still reach it.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

# The variables through which `faketime` configures libfaketime in its child.
PRELOAD_VARIABLES = ("LD_PRELOAD", "FAKETIME")


def faketime_env(offset: str) -> dict[str, str]:
    """Environment that moves a process's wall clock by `offset` (e.g. "-7m")."""
    program = shutil.which("faketime")
    if program is None:
        pytest.skip("faketime is not installed (Debian package faketime)")
    shown = subprocess.run(
        [program, "-f", offset, "env", "-0"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    given = dict(item.split("=", 1) for item in shown.split("\0") if "=" in item)
    env = {name: given[name] for name in PRELOAD_VARIABLES}
    # Only the wall clock is wrong on a misconfigured host; monotonic clocks keep
    # going. With a faked monotonic clock, libfaketime 0.9.10 also makes Python's
    # timed waits (threading.Event.wait, which APScheduler uses) hang for ever.
    # Caveat: with this setting libfaketime 0.9.10 hands Python 3.11's time.sleep an
    # invalid deadline (OSError EINVAL), so a process that sleeps, such as
    # `runner enqueue --wait`, cannot run with a skewed clock.
    env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    return env
