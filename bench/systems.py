"""The systems under measurement: the runner and its peers, each driven by a script in
bench/drivers/ run with the Python of its own virtual environment.

The peers are installed on first use into bench/.venvs/<name>, with pip, at the
versions below; a peer that cannot be installed is recorded with the reason.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString

import psycopg

from bench.procs import REPO, Process, python_env

BENCH = REPO / "bench"
DRIVERS = BENCH / "drivers"
VENVS = BENCH / ".venvs"


@dataclass
class System:
    """A job queue, its driver, and the SQL that reads its progress."""

    name: str
    python: Path
    driver: str
    # The jobs not yet finished.
    remaining_sql: LiteralString
    # The number of succeeded jobs and the first and last finish, in epoch seconds.
    finished_sql: LiteralString
    settings: str
    version: str = ""
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def run(self, command: str, url: str, *args: str, timeout: float = 300) -> None:
        """Run one driver command to completion; raise with its output on failure."""
        result = subprocess.run(
            [str(self.python), str(DRIVERS / self.driver), command, url, *args],
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip().splitlines()[-15:]
            raise RuntimeError(
                f"{self.name} {command} failed ({result.returncode}):\n"
                + "\n".join(output)
            )

    def start_worker(self, url: str, log_path: Path, **env: str) -> Process:
        argv = [str(self.python), str(DRIVERS / self.driver), "worker", url]
        return Process(argv, python_env(**env), log_path)

    def remaining(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(self.remaining_sql).fetchone()
        return int(row[0]) if row else 0

    def finished(self, conn: psycopg.Connection[Any]) -> tuple[int, float, float]:
        row = conn.execute(self.finished_sql).fetchone()
        if row is None or row[1] is None:
            return 0, float("nan"), float("nan")
        return int(row[0]), float(row[1]), float(row[2])


def ours() -> System:
    from importlib.metadata import version

    return System(
        name="runner",
        python=Path(sys.executable),
        driver="runner_driver.py",
        remaining_sql="SELECT count(*) FROM runner.jobs WHERE finished_at IS NULL",
        finished_sql=(
            "SELECT count(*), extract(epoch FROM min(finished_at)),"
            " extract(epoch FROM max(finished_at))"
            " FROM runner.jobs WHERE state = 'succeeded'"
        ),
        settings="runner run, one job at a time, metrics off, log level warning",
        version=version("runner"),
    )


@dataclass(frozen=True)
class PeerSpec:
    name: str
    requirement: str
    module: str
    driver: str
    remaining_sql: LiteralString
    finished_sql: LiteralString
    settings: str


PEERS = [
    PeerSpec(
        name="procrastinate",
        requirement="procrastinate==3.10.0",
        module="procrastinate",
        driver="procrastinate_driver.py",
        remaining_sql=(
            "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
        ),
        finished_sql=(
            "SELECT count(*), extract(epoch FROM min(at)), extract(epoch FROM max(at))"
            " FROM procrastinate_events WHERE type = 'succeeded'"
        ),
        settings="App.run_worker, concurrency 1 (its default), psycopg connector",
    ),
    PeerSpec(
        name="pgqueuer",
        requirement="pgqueuer[asyncpg,psycopg]==1.6.0",
        module="pgqueuer",
        driver="pgqueuer_driver.py",
        # Finished jobs leave the table for its log.
        remaining_sql="SELECT count(*) FROM pgqueuer",
        finished_sql=(
            "SELECT count(*), extract(epoch FROM min(created)),"
            " extract(epoch FROM max(created))"
            " FROM pgqueuer_log WHERE status = 'successful'"
        ),
        settings="pgqueuer.run, batch size 10 (its default), async handlers, asyncpg",
    ),
    PeerSpec(
        name="awa",
        requirement="awa-pg==0.6.9",
        module="awa",
        driver="awa_driver.py",
        remaining_sql=(
            "SELECT count(*) FROM awa.jobs"
            " WHERE state NOT IN ('completed', 'failed', 'cancelled')"
        ),
        finished_sql=(
            "SELECT count(*), extract(epoch FROM min(finalized_at)),"
            " extract(epoch FROM max(finalized_at))"
            " FROM awa.jobs WHERE state = 'completed'"
        ),
        settings="AsyncClient.start, 4 workers on one queue (its quick start), "
        "async handlers",
    ),
]


def peer(spec: PeerSpec, log_dir: Path) -> System:
    """The peer, installed into its own virtual environment if it is not yet."""
    home = VENVS / spec.name
    python = home / "bin" / "python"
    system = System(
        name=spec.name,
        python=python,
        driver=spec.driver,
        remaining_sql=spec.remaining_sql,
        finished_sql=spec.finished_sql,
        settings=spec.settings,
    )
    try:
        _install(spec, home, log_dir / f"pip-{spec.name}.log")
        system.version = _installed_version(python, spec.requirement)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        system.error = f"cannot install {spec.requirement}: {exc}"
    return system


def _install(spec: PeerSpec, home: Path, log_path: Path) -> None:
    python = home / "bin" / "python"
    if python.exists() and _has(python, spec.requirement):
        return
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
    with log_path.open("w") as log:
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", spec.requirement],
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=900,
        )
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"pip exited {result.returncode}: " + " / ".join(tail))


def _dist_name(requirement: str) -> str:
    return requirement.split("[")[0].split("=")[0]


def _has(python: Path, requirement: str) -> bool:
    """Whether the environment holds the pinned version of the requirement."""
    wanted = requirement.split("==")[-1]
    return _installed_version(python, requirement) == wanted


def _installed_version(python: Path, requirement: str) -> str:
    result = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, importlib.metadata as m; print(m.version(sys.argv[1]))",
            _dist_name(requirement),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout.strip() if result.returncode == 0 else ""
