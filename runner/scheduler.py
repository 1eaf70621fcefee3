"""The maintenance scheduler: periodic work beside the job loop, driven by APScheduler.

- heartbeat: records that this runner is alive, also while a long handler runs;
- rescuer: puts back jobs whose runner went silent, counting the lost attempt;
- pruner: deletes finished jobs past the retention, in bounded batches.

The sweeps run under a transaction-scoped advisory lock, so however many runners
share a database, one of them sweeps at a time. Every trigger is an interval in UTC,
whatever the host's time zone. A sweep that finds nothing logs nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from runner import store
from runner.config import Settings
from runner.errors import DatabaseError

logger = logging.getLogger(__name__)

PRUNE_BATCH = 1000
# Cap on batches per pruning pass, so one pass ends and the rest waits for the next.
PRUNE_MAX_BATCHES = 100


class _Connections(threading.local):
    """One lazily opened connection per scheduler thread."""

    conn: store.Connection | None = None


class MaintenanceScheduler:
    def __init__(self, settings: Settings, worker: store.WorkerStore) -> None:
        self._settings = settings
        self._worker = worker
        self._local = _Connections()
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            # The heartbeat has a thread of its own: a long sweep must never delay it.
            executors={
                "default": ThreadPoolExecutor(1),
                "heartbeat": ThreadPoolExecutor(1),
            },
            job_defaults={"coalesce": True, "max_instances": 1},
        )

    def start(self) -> None:
        s = self._settings
        self._every(s.heartbeat_interval, self.heartbeat, "heartbeat", "heartbeat")
        self._every(s.rescue_interval, self.rescue, "rescuer", "default")
        self._every(s.prune_interval, self.prune, "pruner", "default")
        self._scheduler.start()

    def shutdown(self) -> None:
        self._scheduler.shutdown(wait=True)

    def _every(
        self, seconds: float, func: Callable[[], None], name: str, executor: str
    ) -> None:
        self._scheduler.add_job(
            self._guarded(func, name),
            "interval",
            seconds=seconds,
            id=name,
            name=name,
            executor=executor,
            misfire_grace_time=max(1, int(seconds)),
        )

    def _guarded(self, func: Callable[[], None], name: str) -> Callable[[], None]:
        def run() -> None:
            try:
                func()
            except DatabaseError as exc:
                logger.warning(
                    "%s could not reach the database: %s",
                    name,
                    exc,
                    extra={"action": f"{name}_failed"},
                )
                self._drop_connection()
            except Exception:
                logger.exception(
                    "%s crashed", name, extra={"action": f"{name}_crashed"}
                )
                self._drop_connection()

        return run

    def _connection(self) -> store.Connection:
        conn = self._local.conn
        if conn is None or conn.closed:
            conn = store.connect(self._settings.database_url, autocommit=True)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn, self._local.conn = self._local.conn, None
        if conn is not None:
            conn.close()

    def heartbeat(self) -> None:
        self._worker.heartbeat(self._connection())

    def rescue(self) -> None:
        conn = self._connection()
        with store.translate_errors(), conn.transaction():
            if not store.try_sweep_lock(conn, "rescuer"):
                return
            rescued = store.rescue_stalled(conn, self._settings.stall_threshold)
        for job_id, task, state, attempts in rescued:
            logger.warning(
                "job %s (%s) lost its runner during attempt %s; now %s",
                job_id,
                task,
                attempts,
                state,
                extra={
                    "action": "job_rescued",
                    "job_id": job_id,
                    "task": task,
                    "attempt": attempts,
                },
            )

    def prune(self) -> None:
        conn = self._connection()
        total = 0
        for _ in range(PRUNE_MAX_BATCHES):
            # One transaction per batch keeps row locks short for the runners.
            with store.translate_errors(), conn.transaction():
                if not store.try_sweep_lock(conn, "pruner"):
                    break
                deleted = store.prune_batch(conn, self._settings.retention, PRUNE_BATCH)
            total += deleted
            if deleted < PRUNE_BATCH:
                break
        if total:
            logger.info(
                "pruned %s finished jobs", total, extra={"action": "jobs_pruned"}
            )
