"""The driver of the runner itself: `runner run` is the worker."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg
from common import command, paced

import runner
from runner import store
from runner.registry import discover

REPO = Path(__file__).resolve().parents[2]
# bench.handlers is found from the repository's root, as `runner --import` finds it.
sys.path.insert(0, str(REPO))


def setup(url: str) -> None:
    with store.connect(url) as conn:
        store.migrate(conn)


def fill(url: str, count: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO runner.jobs (task) SELECT 'noop' FROM generate_series(1, %s)",
            (count,),
        )


def latency(url: str, count: int, interval_ms: float, out: str) -> None:
    mark = discover(("bench.handlers",)).get("bench_mark")
    with store.connect(url, autocommit=True) as conn:
        paced(
            count,
            interval_ms / 1000,
            lambda key: runner.enqueue(mark, {"key": key}, conn=conn),
            out,
        )


def worker(url: str) -> None:
    runner_bin = str(Path(sys.executable).with_name("runner"))
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "RUNNER_METRICS_PORT": "0",
        "RUNNER_LOG_LEVEL": os.environ.get("RUNNER_LOG_LEVEL", "warning"),
    }
    os.chdir(REPO)
    os.execve(runner_bin, [runner_bin, "--import", "bench.handlers", "run"], env)


def main() -> None:
    name, url, args = command()
    if name == "setup":
        setup(url)
    elif name == "fill":
        fill(url, int(args[0]))
    elif name == "probe":
        runner.enqueue("noop", {}, database_url=url)
    elif name == "latency":
        latency(url, int(args[0]), float(args[1]), args[2])
    elif name == "worker":
        worker(url)
    else:
        sys.exit(f"unknown command {name}")


if __name__ == "__main__":
    main()
