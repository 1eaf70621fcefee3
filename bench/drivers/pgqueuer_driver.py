"""The driver of PgQueuer: asyncpg, `pgqueuer.run` with its default batch of 10."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
import pgqueuer
from common import Marks, command, paced
from pgqueuer.db import AsyncpgDriver, SyncPsycopgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries, SyncQueries

marks = Marks()


def make_factory(url: str) -> Callable[[], AbstractAsyncContextManager[Any]]:
    @asynccontextmanager
    async def factory() -> AsyncIterator[pgqueuer.PgQueuer]:
        connection = await asyncpg.connect(url)
        pgq = pgqueuer.PgQueuer(AsyncpgDriver(connection))

        @pgq.entrypoint("noop")
        async def noop(job: Job) -> None:
            pass

        @pgq.entrypoint("mark")
        async def mark(job: Job) -> None:
            marks.record(int(job.payload or b"0"), time.time())

        try:
            yield pgq
        finally:
            await connection.close()

    return factory


async def with_queries(url: str, args: list[str], name: str) -> None:
    connection = await asyncpg.connect(url)
    queries = Queries(AsyncpgDriver(connection))
    try:
        if name == "setup":
            await queries.install()
        elif name == "fill":
            count = int(args[0])
            await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
        elif name == "probe":
            await queries.enqueue("noop", None)
        else:
            sys.exit(f"unknown command {name}")
    finally:
        await connection.close()


def main() -> None:
    name, url, args = command()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pgqueuer").setLevel(logging.WARNING)
    if name == "worker":
        asyncio.run(pgqueuer.run(make_factory(url)))
    elif name == "latency":
        # The synchronous producer API: one commit per enqueue, like the others.
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            queries = SyncQueries(SyncPsycopgDriver(conn))
            paced(
                int(args[0]),
                float(args[1]) / 1000,
                lambda key: queries.enqueue("mark", str(key).encode()),
                args[2],
            )
    else:
        asyncio.run(with_queries(url, args, name))


if __name__ == "__main__":
    main()
