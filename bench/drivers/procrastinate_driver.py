"""The driver of procrastinate: its psycopg connector and worker, concurrency 1."""

from __future__ import annotations

import logging
import sys
import time

import procrastinate
from common import Marks, command, paced

marks = Marks()


def make_app(url: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    def noop() -> None:
        pass

    @app.task(name="mark")
    def mark(key: int) -> None:
        marks.record(key, time.time())

    return app


def main() -> None:
    name, url, args = command()
    logging.basicConfig(level=logging.WARNING)
    # It warns that the app is made in a script's main module: harmless here, as
    # every task is named explicitly.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    app = make_app(url)
    if name == "worker":
        # The default concurrency, 1: one job at a time, as the runner.
        app.run_worker(concurrency=1, wait=True)
        return
    with app.open():
        if name == "setup":
            app.schema_manager.apply_schema()
        elif name == "fill":
            app.tasks["noop"].batch_defer(*({} for _ in range(int(args[0]))))
        elif name == "probe":
            app.tasks["noop"].defer()
        elif name == "latency":
            task = app.tasks["mark"]
            paced(
                int(args[0]),
                float(args[1]) / 1000,
                lambda key: task.defer(key=key),
                args[2],
            )
        else:
            sys.exit(f"unknown command {name}")


if __name__ == "__main__":
    main()
