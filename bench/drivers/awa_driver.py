"""The driver of awa (awa-pg): its async client and runtime, 4 workers on one queue,
as its quick start shows."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from dataclasses import dataclass

import awa
from common import Marks, command, paced

marks = Marks()
WORKERS = 4


@dataclass
class Noop:
    pass


@dataclass
class Mark:
    key: int


async def worker(url: str) -> None:
    client = awa.AsyncClient(url)

    @client.task(Noop, kind="noop")
    async def noop(job: awa.Job) -> None:
        pass

    @client.task(Mark, kind="mark")
    async def mark(job: awa.Job) -> None:
        marks.record(job.args.key, time.time())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await client.start([("default", WORKERS)])
    await stop.wait()
    await client.shutdown()
    await client.close()


async def produce(url: str, name: str, args: list[str]) -> None:
    client = awa.AsyncClient(url)
    try:
        if name == "setup":
            await client.migrate()
        elif name == "fill":
            await client.insert_many_copy([Noop() for _ in range(int(args[0]))])
        elif name == "probe":
            await client.insert(Noop())
        else:
            sys.exit(f"unknown command {name}")
    finally:
        await client.close()


def main() -> None:
    name, url, args = command()
    logging.basicConfig(level=logging.WARNING)
    if name == "worker":
        asyncio.run(worker(url))
    elif name == "latency":
        client = awa.Client(url)
        paced(
            int(args[0]),
            float(args[1]) / 1000,
            lambda key: client.insert(Mark(key=key)),
            args[2],
        )
    else:
        asyncio.run(produce(url, name, args))


if __name__ == "__main__":
    main()
