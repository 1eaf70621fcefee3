"""The maintenance scheduler: periodic work beside the job loop, driven by APScheduler.

- heartbeat: records that this runner is alive while a long handler runs (when the
  job loop claims often enough, its claims record it instead), and learns which of
  its jobs someone asked to cancel;
- rescuer: puts back jobs whose runner went silent, counting the lost attempt;
- pruner: deletes finished jobs past their retention (one for succeeded jobs, one
  for failed and cancelled ones), in bounded batches;
- rotator, when configured: enqueues a rotation of the API keys older than the
  configured age that are not expired and not rotated yet, a bounded batch per pass,
  each sealing its new secret to the operator's public key.

Every runner schedules the sweeps, but a sweep starts only after claiming its slot
in `runner.sweeps`, which no runner can claim twice within one interval: a sweep
runs once per interval in total, however many runners share the database.
Triggers are plain intervals in UTC, so daylight-saving changes of the host's time
zone never shift, skip or repeat a run. A sweep that finds nothing logs nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from runner import metrics, store
from runner.config import Settings
from runner.errors import DatabaseError
from runner.jobs import JobState

logger = logging.getLogger(__name__)

# A sweep pass still unfinished this long after it started (seconds, at least) is
# taken to be dead even though its runner still heartbeats.
SWEEP_MIN_LEASE = 60.0
PRUNE_BATCH = 1000
# Cap on batches per final state per pruning pass, so one pass ends and the rest
# waits for the next.
PRUNE_MAX_BATCHES = 100
# Keys whose rotation one pass of the rotator enqueues at most: a backlog of old
# keys (when the rotation is first turned on) is worked off over several passes,
# rather than flooding the queue and the webhooks at once.
ROTATE_BATCH = 500
# The `requested_by` of the rotations it enqueues, in the rotations' audit trail.
ROTATED_BY = "schedule"


def every(seconds: float) -> IntervalTrigger:
    """The trigger of every periodic task: a fixed interval, counted in UTC."""
    return IntervalTrigger(seconds=seconds, timezone=UTC)


class _Connections(threading.local):
    """One lazily opened connection per scheduler thread."""

    conn: store.Connection | None = None


class MaintenanceScheduler:
    def __init__(
        self,
        settings: Settings,
        worker: store.WorkerStore,
        task_label: Callable[[str], str],
        on_cancel_requested: Callable[[list[int]], None] | None = None,
    ) -> None:
        self._settings = settings
        self._worker = worker
        self._task_label = task_label
        # Called from the heartbeat thread with the held jobs asked to cancel.
        self._on_cancel_requested = on_cancel_requested
        self._local = _Connections()
        # Tasks whose last run could not reach the database.
        self._failing: set[str] = set()
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
        self._add(self.heartbeat, "heartbeat", s.heartbeat_interval, "heartbeat")
        self._add(
            self._sweep("rescuer", s.rescue_interval, self.rescue, atomic=True),
            "rescuer",
            s.rescue_interval,
        )
        self._add(
            self._sweep("pruner", s.prune_interval, self.prune),
            "pruner",
            s.prune_interval,
        )
        if s.rotate_keys_older_than > 0:
            self._add(
                self._sweep(
                    "rotator", s.rotate_keys_interval, self.rotate_keys, atomic=True
                ),
                "rotator",
                s.rotate_keys_interval,
            )
        self._scheduler.start()

    def shutdown(self) -> None:
        self._scheduler.shutdown(wait=True)
        self._drop_connection()

    def _add(
        self,
        func: Callable[[], None],
        name: str,
        seconds: float,
        executor: str = "default",
    ) -> None:
        self._scheduler.add_job(
            self._guarded(func, name),
            every(seconds),
            id=name,
            name=name,
            executor=executor,
            misfire_grace_time=max(1, int(seconds)),
        )

    def _sweep(
        self,
        name: str,
        interval: float,
        work: Callable[[store.Connection], None],
        *,
        atomic: bool = False,
    ) -> Callable[[], None]:
        """Run `work` if this runner wins the sweep's slot for this interval.

        An atomic sweep claims its slot, works and finishes in one transaction: one
        commit per pass, which matters for a sweep that runs every few seconds on an
        idle database.
        """

        slot = store.SweepSlot(
            name=name,
            worker_id=self._worker.worker_id,
            # A little under the interval, so a runner whose trigger fires a moment
            # early is not turned away for a whole interval.
            spacing=interval * 0.9,
            stall_threshold=self._settings.stall_threshold,
            lease=max(SWEEP_MIN_LEASE, 2 * interval),
        )

        def run_pass(conn: store.Connection) -> None:
            if not store.claim_sweep_slot(conn, slot):
                return
            succeeded = False
            try:
                work(conn)
                succeeded = True
            finally:
                store.record_sweep_finished(conn, name, succeeded=succeeded)
            metrics.SWEEP_LAST_SUCCESS.labels(name).set(time.time())

        def run() -> None:
            conn = self._connection()
            if not atomic:
                run_pass(conn)
                return
            with store.translate_errors(), conn.transaction():
                run_pass(conn)

        return run

    def _guarded(self, func: Callable[[], None], name: str) -> Callable[[], None]:
        """Run `func`, logging a database outage once, not at every interval."""

        def run() -> None:
            try:
                func()
            except DatabaseError as exc:
                level = logging.DEBUG if name in self._failing else logging.WARNING
                self._failing.add(name)
                logger.log(
                    level,
                    "%s could not reach the database: %s",
                    name,
                    exc,
                    extra={"action": f"{name}_failed"},
                )
                self._drop_connection()
                return
            except Exception:
                logger.exception(
                    "%s crashed", name, extra={"action": f"{name}_crashed"}
                )
                self._drop_connection()
                return
            if name in self._failing:
                self._failing.discard(name)
                logger.info(
                    "%s reached the database again",
                    name,
                    extra={"action": f"{name}_recovered"},
                )

        return run

    def _connection(self) -> store.Connection:
        conn = self._local.conn
        if conn is None or conn.closed:
            # Sweeps and heartbeats are rare: preparing them gains nothing, and
            # would break behind a pooler in transaction mode.
            conn = store.connect(
                self._settings.database_url,
                application_name="runner scheduler",
                prepare=False,
            )
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn, self._local.conn = self._local.conn, None
        if conn is not None:
            conn.close()

    def heartbeat(self) -> None:
        # Skipped while the job loop's claims record that the runner is alive: no
        # job of this runner then runs long enough to need cancelling.
        # (Due a little before a whole interval: the thread's own beats come one
        # interval apart, give or take a few milliseconds.)
        if not self._worker.heartbeat_due(self._settings.heartbeat_interval * 0.75):
            return
        cancel = self._worker.heartbeat(self._connection())
        if cancel and self._on_cancel_requested is not None:
            self._on_cancel_requested(cancel)

    def rescue(self, conn: store.Connection) -> None:
        for job in store.rescue_stalled(conn, self._settings.stall_threshold):
            report_moved(job, self._task_label(job.task), "its runner went silent")

    def prune(self, conn: store.Connection) -> None:
        s = self._settings
        total = sum(
            self._prune_state(conn, state, retention)
            for state, retention in (
                (JobState.SUCCEEDED, s.retention),
                (JobState.FAILED, s.failed_retention),
                (JobState.CANCELLED, s.failed_retention),
            )
        )
        if total:
            logger.info(
                "pruned %s finished jobs", total, extra={"action": "jobs_pruned"}
            )

    def _prune_state(
        self, conn: store.Connection, state: JobState, retention: float
    ) -> int:
        total = 0
        for _ in range(PRUNE_MAX_BATCHES):
            # One short transaction per batch: row locks are held only briefly.
            deleted = store.prune_batch(conn, retention, PRUNE_BATCH, state=state)
            total += deleted
            if deleted < PRUNE_BATCH:
                break
        return total

    def rotate_keys(self, conn: store.Connection) -> None:
        s = self._settings
        age = s.rotate_keys_older_than * 3600.0
        enqueued = store.enqueue_due_rotations(
            conn, age, ROTATE_BATCH, ROTATED_BY, s.rotation_recipient
        )
        if not enqueued:
            return
        metrics.KEY_ROTATIONS_ENQUEUED.labels("schedule").inc(len(enqueued))
        logger.info(
            "enqueued the rotation of %s keys older than %g hours",
            len(enqueued),
            s.rotate_keys_older_than,
            extra={"action": "key_rotations_scheduled"},
        )


def report_moved(
    job: store.MovedJob, task_label: str, cause: str, action: str = "job_rescued"
) -> None:
    """Count and log a job put back (or failed) because its attempt was cut off."""
    metrics.RESCUED.labels(task_label).inc()
    if job.state == "failed":
        metrics.JOBS.labels(task_label, "failed").inc()
    logger.warning(
        "job %s (%s) lost attempt %s: %s; now %s",
        job.id,
        job.task,
        job.attempts,
        cause,
        job.state,
        extra={
            "action": action,
            "job_id": job.id,
            "task": job.task,
            "attempt": job.attempts,
        },
    )
