from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.postgres import Databases, server, with_dbname
from tests.support.processes import RunnerProcess, runner_env


@pytest.fixture(scope="session")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    data_dir = tmp_path_factory.mktemp("pgdata")
    with server(data_dir, os.environ.get("DATABASE_URL")) as admin_url:
        dbs = Databases(admin_url)
        yield dbs
        dbs.close()


@pytest.fixture
def database_url(databases: Databases) -> Iterator[str]:
    """A fresh database with the schema, for this test alone."""
    name = databases.create()
    yield with_dbname(databases.admin_url, name)
    databases.drop(name)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for `runner` subprocesses on this test's database."""
    # XDG_DATA_HOME holds the secrets inbox: each test gets its own.
    return runner_env(database_url, XDG_DATA_HOME=str(tmp_path / "data"))


@pytest.fixture
def start_runner(
    env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., RunnerProcess]]:
    """Start `runner run` processes; each is killed at the end of the test."""
    started: list[RunnerProcess] = []

    def start(*args: str, ready: bool = True, **overrides: str) -> RunnerProcess:
        proc_env = {**env, **overrides}
        log = tmp_path / f"runner-{len(started)}.log"
        proc = RunnerProcess(proc_env, log, *args)
        started.append(proc)
        return proc.wait_ready() if ready else proc

    yield start
    for proc in started:
        proc.kill()
