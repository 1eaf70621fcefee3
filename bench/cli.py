"""`python -m bench`: run every measurement, print the table, write JSON and a plot."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TypeVar

from bench import ours, workloads
from bench.figures import percentile
from bench.procs import REPO
from bench.report import Results, write
from bench.server import Server, server
from bench.systems import PEERS, System, peer
from bench.systems import ours as our_system
from bench.workloads import Workspace

T = TypeVar("T")
RESULTS = REPO / "bench" / "results"
# Idle figures are reported per this many seconds, the owner's window.
IDLE_WINDOW = 20.0


@dataclass(frozen=True)
class Config:
    mode: str
    reps: int
    drain_jobs: int
    processes: tuple[int, ...]
    rotate_jobs: int
    latency_jobs: int
    latency_interval_ms: float
    idle_seconds: float
    cli_jobs: int
    api_jobs: int
    batch_jobs: int
    backlog_sizes: tuple[int, ...]
    backlog_queued: int
    backlog_claims: int
    floor_rows: int
    floor_seconds: float
    notify_rows: int
    peers: bool


FULL = Config(
    mode="full",
    reps=3,
    drain_jobs=10_000,
    processes=(1, 2, 4),
    rotate_jobs=10_000,
    latency_jobs=300,
    latency_interval_ms=20,
    idle_seconds=IDLE_WINDOW,
    cli_jobs=50,
    api_jobs=2_000,
    batch_jobs=10_000,
    backlog_sizes=(10_000, 100_000, 1_000_000),
    backlog_queued=5_000,
    backlog_claims=1_000,
    floor_rows=200_000,
    floor_seconds=3,
    notify_rows=100_000,
    peers=True,
)
QUICK = Config(
    mode="quick",
    reps=1,
    drain_jobs=1_000,
    processes=(1, 2),
    rotate_jobs=300,
    latency_jobs=50,
    latency_interval_ms=20,
    idle_seconds=5,
    cli_jobs=5,
    api_jobs=300,
    batch_jobs=1_000,
    backlog_sizes=(10_000, 100_000),
    backlog_queued=1_000,
    backlog_claims=200,
    floor_rows=20_000,
    floor_seconds=1,
    notify_rows=10_000,
    peers=False,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the runner (and its peers) on a PostgreSQL of its own, "
        "or on DATABASE_URL when set.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, one repetition, no peers: a smoke test in under a minute",
    )
    peers = parser.add_mutually_exclusive_group()
    peers.add_argument("--no-peers", action="store_true", help="skip the peers")
    peers.add_argument(
        "--peers", action="store_true", help="measure the peers in --quick mode too"
    )
    parser.add_argument("--reps", type=int, help="repetitions of every measurement")
    parser.add_argument(
        "--durable",
        action="store_true",
        help="keep fsync and synchronous_commit on in the server it starts",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="folder for the results"
    )
    return parser.parse_args(argv)


class Bench:
    def __init__(self, config: Config, srv: Server, scratch: Path) -> None:
        self.config = config
        self.srv = srv
        self.scratch = scratch
        self.ws = Workspace(srv, scratch)
        self.results = Results()
        self.runner = our_system()
        self.systems: list[System] = [self.runner]

    # Bookkeeping

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def attempt(
        self, label: str, work: Callable[[], T], system: System | None = None
    ) -> T | None:
        """Run one measurement; on failure record why and go on."""
        try:
            return work()
        except Exception as exc:
            message = f"{label}: {type(exc).__name__}: {exc}"
            self.say(f"  failed: {message}")
            self.results.errors.append(message)
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()
            if system is not None and system is not self.runner:
                system.error = message
            return None

    def live_systems(self) -> list[System]:
        return [s for s in self.systems if s.error is None]

    # The whole run

    def run(self) -> Results:
        c = self.config
        self.describe()
        if c.peers:
            self.install_peers()
        backlog_urls = self.attempt("backlog build", self.build_backlogs) or {}
        keys_template = self.attempt(
            "key template",
            lambda: ours.rotation_template(self.runner, self.ws, c.rotate_jobs),
        )
        for rep in range(c.reps):
            self.say(f"repetition {rep + 1} of {c.reps}")
            self.drains(keys_template)
            self.latencies()
            self.idles()
            self.enqueues()
            self.backlog(backlog_urls)
            self.floor()
            self.notify()
        self.record_systems()
        return self.results

    def describe(self) -> None:
        c, r = self.config, self.results
        r.meta = {
            "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "mode": c.mode,
            "command": " ".join(
                [Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]
            ),
            "config": c.__dict__,
            "git": _git_state(),
            "server": self.srv.description,
            "server_settings": self.srv.settings(
                ["fsync", "synchronous_commit", "shared_buffers", "autovacuum"]
            ),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_average_at_start": os.getloadavg(),
            },
        }
        r.notes += [
            f"{self.srv.description}; every client connects over TCP to 127.0.0.1.",
            "runner run is started with RUNNER_METRICS_PORT=0 and "
            "RUNNER_LOG_LEVEL=warning, so logging does not dominate.",
            "Drain rate: (jobs - 1) / (last finish - first finish), from each "
            "system's own timestamps (the runner clears claimed_at on success).",
            "Batch enqueue: one runner.enqueue_many call, connection included.",
            "Floor: pgbench (C client) and a psycopg loop, both one connection.",
            f"Each figure: median of {c.reps} run(s), with min and max.",
        ]

    def install_peers(self) -> None:
        for spec in PEERS:
            self.say(f"installing {spec.requirement} into bench/.venvs/{spec.name}")
            system = peer(spec, self.scratch)
            if system.error:
                self.say(f"  {system.error}")
            self.systems.append(system)

    def record_systems(self) -> None:
        for system in self.systems:
            self.results.systems[system.name] = {
                "version": system.version,
                "settings": system.settings,
                "error": system.error,
            }

    # Drain, latency, idle: every system, interleaved

    def drains(self, keys_template: str | None) -> None:
        c, r = self.config, self.results
        for system in self.live_systems():
            result = self.attempt(
                f"{system.name} drain",
                partial(workloads.drain, system, self.ws, c.drain_jobs),
                system,
            )
            if result:
                self.say(f"  {system.name} drain: {result.rate:,.0f} jobs/s")
                r.figure(
                    "peers" if system is not self.runner else "drain",
                    f"{system.name}.drain",
                    f"{system.name}: no-op, {c.drain_jobs:,} jobs, 1 process",
                    "jobs/s",
                ).add(result.rate)
                r.figure(
                    "peers" if system is not self.runner else "memory",
                    f"{system.name}.rss",
                    f"{system.name}: RSS after the drain",
                    "MB",
                ).add(result.rss_mb)
        for processes in c.processes[1:]:
            self.drain_runner("noop", processes)
        if keys_template:
            self.drain_runner("rotate_key", 1, keys_template)

    def drain_runner(
        self, task: str, processes: int, template: str | None = None
    ) -> None:
        c = self.config
        jobs = c.rotate_jobs if task == "rotate_key" else c.drain_jobs
        fill = ours.fill_rotations if task == "rotate_key" else None
        result = self.attempt(
            f"runner drain {task} x{processes}",
            lambda: workloads.drain(
                self.runner, self.ws, jobs, processes, fill=fill, template=template
            ),
        )
        if result:
            self.say(f"  runner {task} x{processes}: {result.rate:,.0f} jobs/s")
            plural = "process" if processes == 1 else "processes"
            self.results.figure(
                "drain",
                f"drain.{task}.p{processes}",
                f"runner: {task}, {jobs:,} jobs, {processes} {plural}",
                "jobs/s",
            ).add(result.rate)

    def latencies(self) -> None:
        c, r = self.config, self.results
        for system in self.live_systems():
            values = self.attempt(
                f"{system.name} latency",
                partial(
                    workloads.latency,
                    system,
                    self.ws,
                    c.latency_jobs,
                    c.latency_interval_ms,
                ),
                system,
            )
            if not values:
                continue
            section = "latency" if system is self.runner else "peers"
            stats = {
                "p50": percentile(values, 0.50),
                "p95": percentile(values, 0.95),
                "p99": percentile(values, 0.99),
                "max": max(values),
            }
            self.say(
                f"  {system.name} latency: p50 {stats['p50']:.2f} ms, "
                f"p99 {stats['p99']:.2f} ms"
            )
            for stat, value in stats.items():
                r.figure(
                    section,
                    f"{system.name}.latency.{stat}",
                    f"{system.name}: pick-up {stat}, {c.latency_jobs} jobs "
                    f"{c.latency_interval_ms:g} ms apart",
                    "ms",
                ).add(value)

    def idles(self) -> None:
        c, r = self.config, self.results
        for system in self.live_systems():
            result = self.attempt(
                f"{system.name} idle",
                partial(workloads.idle, system, self.ws, c.idle_seconds),
                system,
            )
            if not result:
                continue
            scale = IDLE_WINDOW / result.seconds
            section = "idle" if system is self.runner else "peers"
            self.say(
                f"  {system.name} idle: {result.transactions} transactions, "
                f"{result.cpu_seconds:.3f} CPU s in {result.seconds:.1f} s"
            )
            r.figure(
                section,
                f"{system.name}.idle.xacts",
                f"{system.name}: idle transactions per 20 s",
                "xacts",
            ).add(result.transactions * scale)
            r.figure(
                section,
                f"{system.name}.idle.cpu",
                f"{system.name}: idle CPU per 20 s",
                "s",
            ).add(result.cpu_seconds * scale)

    # The runner alone

    def enqueues(self) -> None:
        c = self.config
        cases: list[tuple[str, str, int, Callable[[System, Workspace, int], float]]] = [
            (
                "cli",
                "CLI `runner enqueue noop`, a process per job",
                c.cli_jobs,
                ours.enqueue_cli,
            ),
            (
                "api",
                "Python runner.enqueue, one connection",
                c.api_jobs,
                ours.enqueue_api,
            ),
            (
                "batch",
                "batch: runner.enqueue_many, one call",
                c.batch_jobs,
                ours.enqueue_batch,
            ),
        ]
        for key, name, count, measure in cases:
            value = self.attempt(
                f"enqueue {key}",
                partial(measure, self.runner, self.ws, count),
            )
            if value:
                self.say(f"  enqueue {key}: {value:,.0f} jobs/s")
                self.results.figure(
                    "enqueue", f"enqueue.{key}", f"{name}, {count:,} jobs", "jobs/s"
                ).add(value)

    def build_backlogs(self) -> dict[int, str]:
        c = self.config
        urls = {}
        for size in c.backlog_sizes:
            self.say(f"building a backlog of {size:,} finished jobs")
            urls[size] = ours.build_backlog(
                self.runner, self.ws, size, c.backlog_queued
            )
        return urls

    def backlog(self, urls: dict[int, str]) -> None:
        c = self.config
        for size, url in urls.items():
            found = self.attempt(
                f"claim at {size}",
                partial(ours.claim_times, url, c.backlog_claims),
            )
            if found:
                seconds, index = found
                self.say(f"  claim at {size:,}: {seconds * 1e6:.0f} us ({index})")
                self.results.figure(
                    "backlog",
                    f"claim.{size}",
                    f"claim with {size:,} finished + {c.backlog_queued:,} queued rows",
                    "us",
                    note=f"plan scans {index}",
                ).add(seconds * 1e6)

    def floor(self) -> None:
        url = self.floor_database()
        if url is None:
            return
        for client in ("pgbench", "psycopg"):
            for batch in (False, True):
                self.floor_case(url, client, batch)

    def floor_database(self) -> str | None:
        name = self.ws.named_template("floor")
        if name is None:
            name = self.attempt(
                "floor database", lambda: self.srv.create_database("floor")
            )
            if name is None:
                return None
            self.ws.add_template("floor", name)
        return self.srv.url(name)

    def floor_case(self, url: str, client: str, batch: bool) -> None:
        c = self.config

        def measure() -> float:
            ours.floor_reset(url, c.floor_rows)
            if client == "pgbench":
                return ours.floor_pgbench(
                    self.srv, url, batch, c.floor_seconds, self.scratch
                )
            return ours.floor_psycopg(url, batch, c.floor_seconds)

        kind = "many" if batch else "one"
        value = self.attempt(f"floor {client} {kind}", measure)
        if value:
            self.say(f"  floor {client} {kind}: {value:,.0f} jobs/s")
            how = (
                "claim 100 per transaction, complete them in one statement"
                if batch
                else "claim one, complete it: two transactions per job"
            )
            self.results.figure(
                "floor", f"floor.{client}.{kind}", f"{client}: {how}", "jobs/s"
            ).add(value)

    def notify(self) -> None:
        c, r = self.config, self.results
        name = self.ws.named_template("notify")
        if name is None:
            name = self.srv.create_database(
                "runner_notify", self.ws.template(self.runner)
            )
            ours.notify_setup(self.srv.url(name))
            self.ws.add_template("notify", name)
            r.notes.append(
                "Notify overhead: runner.jobs carries the triggers "
                + ", ".join(ours.trigger_names(self.srv.url(name)))
                + "; the copy (CREATE TABLE ... LIKE runner.jobs INCLUDING ALL) none."
            )
        url = self.srv.url(name)
        found = self.attempt(
            "notify",
            lambda: (
                ours.notify_insert(url, "runner", "jobs", c.notify_rows),
                ours.notify_insert(
                    url, "public", "jobs_without_triggers", c.notify_rows
                ),
            ),
        )
        if found:
            with_triggers, without = found
            self.say(f"  notify: {with_triggers:.3f} s vs {without:.3f} s")
            rows = f"{c.notify_rows:,} rows"
            r.figure("notify", "notify.with", f"into runner.jobs, {rows}", "s").add(
                with_triggers
            )
            r.figure(
                "notify", "notify.without", f"into a copy without triggers, {rows}", "s"
            ).add(without)
            r.figure("notify", "notify.ratio", "with / without triggers", "x").add(
                with_triggers / without
            )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that the workers and the server are stopped.
    signal.signal(signal.SIGTERM, _interrupted)
    config = QUICK if args.quick else FULL
    if args.no_peers or args.peers:
        config = Config(**{**config.__dict__, "peers": args.peers})
    if args.reps:
        config = Config(**{**config.__dict__, "reps": args.reps})
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="runner-bench-"))
    try:
        with server(durable=args.durable) as srv:
            results = Bench(config, srv, scratch).run()
        results.meta["seconds"] = round(time.monotonic() - started, 1)
        results.meta["load_average_at_end"] = os.getloadavg()
        stem = (
            "bench-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + f"-{config.mode}"
        )
        json_path, png_path, text = write(results, args.output, stem)
        for suffix in (".json", ".png", ".txt"):
            shutil.copyfile(
                args.output / f"{stem}{suffix}", args.output / f"latest{suffix}"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(text)
    print()
    print(
        f"wrote {_relative(json_path)} and {_relative(png_path)}"
        f" (also latest.json, latest.png) in {results.meta['seconds']:.0f} s"
    )


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _git_state() -> dict[str, object]:
    """The commit measured, and whether the product's files differ from it."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=REPO, timeout=30
        )
        return result.stdout.rstrip()

    changed = git("status", "--porcelain", "--", "runner", "handlers", "pyproject.toml")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted": changed.splitlines()}


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
