"""The real `runner` command, run as subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RUNNER = str(Path(sys.executable).with_name("runner"))

# Short intervals so the tests see retries, rescues and shutdowns quickly.
FAST_SETTINGS = {
    "RUNNER_POLL_INTERVAL": "1",
    "RUNNER_RETRY_BASE_DELAY": "0.05",
    "RUNNER_RETRY_MAX_DELAY": "0.2",
    "RUNNER_HEARTBEAT_INTERVAL": "0.5",
    "RUNNER_STALL_THRESHOLD": "3",
    "RUNNER_RESCUE_INTERVAL": "0.5",
    "RUNNER_SHUTDOWN_GRACE": "5",
    "RUNNER_METRICS_PORT": "0",
}


def wait_until(
    condition: Callable[[], Any], timeout: float = 30, message: str = "condition"
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(0.05)


def runner_env(database_url: str, **overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FAST_SETTINGS)
    env["DATABASE_URL"] = database_url
    env["RUNNER_IMPORT"] = "tests.support.tasks"
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), env.get("PYTHONPATH")])
    )
    env.update(overrides)
    return env


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RUNNER, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        cwd=REPO,
    )


class RunnerProcess:
    """A `runner run` process whose log goes to a file the test can read."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [RUNNER, "run", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        self._log_start = log_path.stat().st_size
        self._signalled = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> RunnerProcess:
        wait_until(
            lambda: "listening for jobs" in self.log() or self.proc.poll() is not None,
            timeout,
            "the runner to listen",
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"runner exited early:\n{self.log()}")
        return self

    def signal(self, signum: int) -> None:
        self._signalled = True
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30) -> int:
        """Wait for the runner to exit, sending SIGTERM unless a signal was sent."""
        if self.proc.poll() is None and not self._signalled:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM a process if it still runs, then SIGKILL it after `timeout` s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
