"""Processes under measurement: start and stop them, read their CPU time and memory."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[1]


class Timeout(Exception):
    """A condition the benchmark waited for did not come in time."""


def wait_until(
    condition: Callable[[], T | None], timeout: float, what: str, pause: float = 0.02
) -> T:
    """Poll `condition` until it returns something truthy; Timeout after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(pause)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name, in parentheses, may hold spaces: count fields after it.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            # The kernel's "kB" are KiB.
            return int(line.split()[1]) * 1024 / 1e6
    raise ValueError(f"no VmRSS for process {pid}")


class Process:
    """A worker process whose output goes to a log file."""

    def __init__(
        self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO
    ) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` s."""
        try:
            if self.alive():
                self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(10)
        finally:
            self._log.close()


def python_env(**extra: str) -> dict[str, str]:
    """This environment, plus the repository on the path, for child processes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), env.get("PYTHONPATH")])
    )
    env.update(extra)
    return env
