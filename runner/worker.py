"""The worker: the loop of `runner run` that claims jobs and runs them one at a time.

Handlers run in the main thread. Signals reach it in two ways: a Python handler sets
flags (and interrupts an overdue handler), and `signal.set_wakeup_fd` writes to a
pipe that the listener watches, so an idle wait ends at once. A job someone asked to
cancel is interrupted the same way as an overdue one: the heartbeat thread, which
learns of the request, sends SIGUSR1 to the main thread.
"""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from runner import logs, metrics, payloads, store
from runner.config import Settings
from runner.errors import (
    DatabaseError,
    DatabaseUnavailable,
    PermanentError,
    UnknownTask,
)
from runner.health import Health
from runner.jobs import ClaimedJob, JobState
from runner.listener import Listener
from runner.registry import Handler, JobContext, Registry
from runner.scheduler import MaintenanceScheduler, report_moved

logger = logging.getLogger(__name__)

# Reconnection waits double from the first to the last, in seconds.
RECONNECT_FIRST_DELAY = 0.5
RECONNECT_MAX_DELAY = 30.0
# Polling interval, in seconds, while notifications do not arrive.
DEGRADED_POLL_INTERVAL = 0.5
# Host and database clocks further apart than this, in seconds, are reported.
CLOCK_SKEW_WARNING = 5.0
# Error texts stored on a job are cut to this many characters.
MAX_ERROR_LENGTH = 4000
# A claim takes as many jobs as recent jobs suggest will run in about this many
# seconds in all, up to the batch size setting: many fast jobs share a round trip,
# while a slow job is never claimed far ahead of its turn.
BATCH_BUDGET = 0.02
# Jobs claimed ahead are handed back when their batch has been held this long
# (seconds): a job ran much longer than those before it, and other runners may be
# idle.
BATCH_HOLD_LIMIT = 0.5
# Successes waiting to be recorded with the next claim are recorded first when the
# next job is expected to take longer than this (seconds), or is of a task not seen
# yet.
RECORD_BEFORE_SLOW = 0.005
# Weight of the newest job in the running averages of job durations.
PACE_WEIGHT = 0.2
# The error recorded on a job whose handler was stopped on request.
CANCELLED_ERROR = "cancelled on request while running"


class _DeadlinePassed(KeyboardInterrupt):
    """Raised in the handler's frame when its time is up.

    A KeyboardInterrupt, so that psycopg cancels a query in progress and a handler's
    `except Exception` does not swallow it.
    """


class _ClaimLost(Exception):
    """The job was taken from this runner before its outcome was recorded."""


@dataclass(frozen=True, slots=True)
class _Success:
    """A plain handler's success, to be recorded with the next claim."""

    job: ClaimedJob
    ctx: JobContext
    result: Any


class Worker:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.id = uuid.uuid4()
        self.store = store.WorkerStore(self.id)
        self._stopping = False
        self._in_handler = False
        self._deadline_reason = ""
        # The job whose handler runs now, and the one whose cancellation was asked.
        self._handler_job_id: int | None = None
        self._cancel_job_id: int | None = None
        self._conn: store.Connection | None = None
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        self._listener = Listener(
            settings.listen_database_url or settings.database_url, self._wakeup_r
        )
        self._maintenance = MaintenanceScheduler(
            settings, self.store, self._task_label, self._request_cancel
        )
        # Polling stands in for notifications that do not arrive (see _connect).
        self._degraded = False
        # Jobs claimed and not started yet, in the order to run them.
        self._ahead: deque[ClaimedJob] = deque()
        # Successes of plain handlers not recorded yet: the next claim records them.
        self._unrecorded: list[_Success] = []
        # Running averages of seconds per job: of each task, and of all.
        self._pace: dict[str, float] = {}
        self._recent_pace: float | None = None
        self.health = Health()

    def stop(self) -> None:
        """Ask the loop to stop after the current job."""
        self._stopping = True
        self.health.stopping()
        os.write(self._wakeup_w, b"\0")

    # The loop

    def run(self) -> None:
        """Run jobs until SIGTERM or SIGINT; reconnect whenever the database is lost."""
        self._install_signal_handlers()
        logger.info(
            "runner %s starting on %s with %s handlers",
            self.id,
            store.describe(self.settings.database_url),
            len(self.registry),
            extra={"action": "worker_starting", "worker_id": str(self.id)},
        )
        started = lost = False
        delay = RECONNECT_FIRST_DELAY
        try:
            while not self._stopping:
                try:
                    conn = self._connect()
                    if lost:
                        metrics.RECONNECTS.inc()
                        lost = False
                    if not started:
                        self._maintenance.start()
                        started = True
                    delay = RECONNECT_FIRST_DELAY
                    self._serve(conn)
                except Exception as exc:
                    self._disconnect()
                    if self._stopping:
                        break
                    self._report_loop_error(exc, delay)
                    metrics.CONNECTION_FAILURES.inc()
                    lost = True
                    self.health.turned(delay, "reconnecting")
                    self._sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_DELAY)
        finally:
            if started:
                self._maintenance.shutdown()
            self._shutdown()
            # Exiting now: a late signal must not kill the process while Python
            # finalises, after it has reset the handlers to their defaults.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _report_loop_error(self, exc: Exception, delay: float) -> None:
        if isinstance(exc, DatabaseUnavailable):
            logger.warning(
                "database unavailable (%s); reconnecting in %.1f s",
                exc,
                delay,
                extra={"action": "database_unavailable"},
            )
        elif isinstance(exc, DatabaseError):
            logger.error(
                "database error in the job loop (%s); reconnecting in %.1f s",
                exc,
                delay,
                extra={"action": "database_error"},
            )
        else:
            logger.exception(
                "the job loop crashed; restarting it in %.1f s",
                delay,
                extra={"action": "worker_loop_crashed"},
            )

    def _connect(self) -> store.Connection:
        """Open the listening and the job connections; return the latter."""
        self._listener.connect()
        self._conn = self._open_worker_connection()
        self.store.heartbeat(self._conn)
        self._requeue_lost(self._conn)
        self._check_notifications(self._conn)
        # Degraded, the listener has closed its connection.
        metrics.LISTENER_CONNECTED.set(0 if self._degraded else 1)
        self.health.connected(polling=self._degraded)
        self._check_clock(self._conn)
        logger.info(
            "runner %s listening for jobs",
            self.id,
            extra={"action": "worker_listening", "worker_id": str(self.id)},
        )
        return self._conn

    def _open_worker_connection(self) -> store.Connection:
        prepare = not self._pooled()
        self.store.prepare = prepare
        conn = store.connect(
            self.settings.database_url,
            application_name="runner worker",
            prepare=prepare,
        )
        if prepare:
            store.use_generic_plans(conn)
        return conn

    def _pooled(self) -> bool:
        """Whether the worker's connection goes through a transaction pooler."""
        s = self.settings
        separate_listener = bool(s.listen_database_url) and (
            s.listen_database_url != s.database_url
        )
        return self._degraded or separate_listener

    def _requeue_lost(self, conn: store.Connection) -> None:
        """Put back the jobs still held by this identity: a lost connection cut them.

        The successes of before the loss are recorded first, and the jobs claimed
        ahead, which never started, are handed back with their attempts not counted.
        """
        self._record_successes(conn)
        self._hand_back(conn, "the runner lost its database connection", self._ahead)
        error = "the runner lost its database connection during execution"
        for job in self.store.requeue_lost(conn, error):
            report_moved(
                job,
                self._task_label(job.task),
                "the connection was lost",
                action="job_requeued",
            )

    def _check_notifications(self, conn: store.Connection) -> None:
        """Fall back to polling when the runner's own NOTIFY does not reach it."""
        arrive = self._listener.notifications_arrive(conn)
        was_degraded, self._degraded = self._degraded, not arrive
        metrics.NOTIFICATIONS_DEGRADED.set(0 if arrive else 1)
        if arrive:
            if was_degraded:
                logger.info("notifications arrive again", extra={"action": "notify_ok"})
            return
        # Behind the pooler, LISTEN would leave a subscription on a pooled server
        # connection, whose notifications could reach an unrelated client.
        self._listener.close()
        if was_degraded:
            return
        logger.warning(
            "notifications sent to %s do not reach the listener: a connection pooler "
            "in transaction mode (PgBouncer pool_mode=transaction) drops them. "
            "Polling every %g s instead; set RUNNER_LISTEN_DATABASE_URL to a direct "
            "connection to restore them",
            store.describe(self.settings.database_url),
            self._poll_interval(),
            extra={"action": "notify_degraded"},
        )
        # Reopen the worker connection without prepared statements.
        conn.close()
        self._conn = self._open_worker_connection()

    def _check_clock(self, conn: store.Connection) -> None:
        """Warn when this host's clock disagrees with the database's.

        Every time the runner acts on is the database's, so the runner works
        regardless; but log times and host-side tools would mislead.
        """
        skew = store.clock_skew(conn)
        if abs(skew) > CLOCK_SKEW_WARNING:
            logger.warning(
                "this host's clock is %.1f s %s the database's; the runner uses the "
                "database's time for every claim, heartbeat and schedule",
                abs(skew),
                "behind" if skew > 0 else "ahead of",
                extra={"action": "clock_skew"},
            )

    def _poll_interval(self) -> float:
        if self._degraded:
            return min(self.settings.poll_interval, DEGRADED_POLL_INTERVAL)
        return self.settings.poll_interval

    def _task_label(self, task: str) -> str:
        """The task as a metric label: arbitrary names collapse into one."""
        return task if task in self.registry else metrics.UNKNOWN_TASK

    def _serve(self, conn: store.Connection) -> None:
        """Claim and run jobs; wait for a notification when there are none."""
        while not self._stopping:
            self.health.turned(self._poll_interval(), "waiting for jobs")
            if not self._ahead:
                claim = self._exchange(conn, self._batch_size())
                if not claim.jobs:
                    self._listener.wait(self._idle_timeout(claim.due_in))
                    self._drain_wakeups()
                    continue
                self._ahead.extend(claim.jobs)
            job = self._ahead.popleft()
            if self._unrecorded and self._expect_slow(job.task):
                self._record_successes(conn)
            self._run_job(conn, job)
            if self._ahead and time.monotonic() - job.claimed_at > BATCH_HOLD_LIMIT:
                self._record_successes(conn)
                self._hand_back(conn, "held too long by a busy runner", self._ahead)

    def _exchange(self, conn: store.Connection, limit: int) -> store.Claim:
        """Record the pending successes and claim up to `limit` jobs."""
        pending, self._unrecorded = self._unrecorded, []
        beat = self.store.heartbeat_due(self.settings.heartbeat_interval / 2)
        try:
            claim = self.store.exchange(
                conn,
                self.settings.queues,
                limit=limit,
                done=[(s.job.id, s.result) for s in pending],
                beat=beat,
            )
        except BaseException:
            # Kept to be recorded once the runner has reconnected.
            self._unrecorded = pending + self._unrecorded
            raise
        for success in pending:
            self._report_success(success, success.job.id in claim.recorded)
        return claim

    def _record_successes(self, conn: store.Connection) -> None:
        if self._unrecorded:
            self._exchange(conn, 0)

    def _hand_back(
        self, conn: store.Connection, reason: str, jobs: deque[ClaimedJob]
    ) -> None:
        """Put back the jobs claimed ahead, their attempts not counted."""
        if not jobs:
            return
        ids = [job.id for job in jobs]
        self.store.release(conn, f"claimed but not started: {reason}", ids)
        jobs.clear()

    def _batch_size(self) -> int:
        """How many jobs to claim: as many as fit the budget at the recent pace."""
        limit = self.settings.batch_size
        if limit == 1 or self._recent_pace is None:
            return 1
        return max(1, min(limit, int(BATCH_BUDGET / max(self._recent_pace, 1e-6))))

    def _expect_slow(self, task: str) -> bool:
        pace = self._pace.get(task)
        return pace is None or pace > RECORD_BEFORE_SLOW

    def _learn_pace(self, task: str, seconds: float) -> None:
        old = self._pace.get(task)
        self._pace[task] = seconds if old is None else _blend(old, seconds)
        recent = self._recent_pace
        self._recent_pace = seconds if recent is None else _blend(recent, seconds)

    def _idle_timeout(self, due_in: float | None) -> float:
        """How long to wait idle: the poll interval, or less when a job falls due."""
        if due_in is None:
            return self._poll_interval()
        return min(self._poll_interval(), max(due_in, 0.001))

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once for a signal."""
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            select.select([self._wakeup_r], [], [], left)
            self._drain_wakeups()

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wakeup_r, 512):
                pass
        except BlockingIOError:
            pass

    def _disconnect(self) -> None:
        self._listener.close()
        metrics.LISTENER_CONNECTED.set(0)
        self.health.disconnected()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _shutdown(self) -> None:
        try:
            conn = self._conn or store.connect(self.settings.database_url, timeout=5)
            self._record_successes(conn)
            error = "the runner stopped before it finished"
            self._ahead.clear()
            for job in self.store.release(conn, error):
                logger.warning(
                    "job %s (%s) put back in the queue, attempt not counted",
                    job.id,
                    job.task,
                    extra={
                        "action": "job_released",
                        "job_id": job.id,
                        "task": job.task,
                        "attempt": job.attempts + 1,
                    },
                )
            self.store.unregister(conn)
            conn.close()
        except DatabaseError as exc:
            logger.warning(
                "could not unregister from the database: %s",
                exc,
                extra={"action": "worker_unregister_failed"},
            )
        self._listener.close()
        self._conn = None
        logger.info("runner %s stopped", self.id, extra={"action": "worker_stopped"})

    # One job

    def _run_job(self, conn: store.Connection, job: ClaimedJob) -> None:
        task_metrics = metrics.for_task(self._task_label(job.task))
        task_metrics.pickup.observe(job.waited + time.monotonic() - job.claimed_at)
        logger.info(
            "job %s (%s) started, attempt %s of %s",
            job.id,
            job.task,
            job.attempt,
            job.max_attempts,
            extra=_job_extra("job_started", job),
        )
        started = time.perf_counter()
        outcome = self._attempt(conn, job)
        elapsed = time.perf_counter() - started
        self._learn_pace(job.task, elapsed)
        task_metrics.duration.observe(elapsed)
        if outcome is not None:
            task_metrics.count(outcome)

    def _attempt(self, conn: store.Connection, job: ClaimedJob) -> str | None:
        """Run the handler and record how it ended; return the outcome's name, or
        None for a success that the next claim records."""
        ctx = JobContext(job.id, job.task, job.attempt, job.max_attempts, None)
        try:
            handler = self.registry.get(job.task)
            if handler.transactional:
                self._run_in_transaction(conn, handler, ctx, job)
            else:
                result = self._run_handler(handler, ctx, job)
                stored = payloads.storable_result(result)
                self._unrecorded.append(_Success(job, ctx, stored))
                return None
        except _ClaimLost:
            return self._claim_lost(job)
        except DatabaseUnavailable:
            raise
        except _DeadlinePassed:
            return self._after_deadline(conn, job)
        except (UnknownTask, PermanentError) as exc:
            return self._fail(conn, job, str(exc))
        except BaseException as exc:
            # Handlers that raise SystemExit or KeyboardInterrupt fail their attempt
            # like any other: only the runner's own signals stop the runner.
            return self._retry_or_fail(conn, job, _describe_error(exc))
        self._succeeded(ctx, job)
        return "succeeded"

    def _report_success(self, success: _Success, recorded: bool) -> None:
        """Count and log a plain handler's success once the claim recorded it."""
        job = success.job
        outcome = "succeeded" if recorded else self._claim_lost(job)
        metrics.for_task(self._task_label(job.task)).count(outcome)
        if recorded:
            self._succeeded(success.ctx, job)

    def _succeeded(self, ctx: JobContext, job: ClaimedJob) -> None:
        ctx.committed()
        logger.info(
            "job %s (%s) succeeded",
            job.id,
            job.task,
            extra=_job_extra("job_succeeded", job),
        )

    def _run_in_transaction(
        self, conn: store.Connection, handler: Handler, ctx: JobContext, job: ClaimedJob
    ) -> Any:
        with store.translate_errors(), conn.transaction():
            ctx.conn = conn
            result = self._run_handler(handler, ctx, job)
            if not self.store.succeed(conn, job.id, payloads.storable_result(result)):
                raise _ClaimLost
        return result

    def _run_handler(self, handler: Handler, ctx: JobContext, job: ClaimedJob) -> Any:
        timeout = handler.timeout or self.settings.job_timeout
        # The handler's own log lines name the job too.
        with logs.job_context(job.id, job.task, job.attempt):
            with self._deadline(timeout, job.id):
                return handler.run(ctx, job.args)

    def _after_deadline(self, conn: store.Connection, job: ClaimedJob) -> str:
        if self._deadline_reason == "cancel":
            return self._cancelled(conn, job)
        if self._deadline_reason == "shutdown":
            # Every job held goes back, this one and those claimed ahead; the
            # successes before it are recorded first.
            self._record_successes(conn)
            self._ahead.clear()
            self.store.release(conn, "interrupted: the runner was stopping")
            logger.warning(
                "job %s (%s) interrupted by shutdown; put back in the queue",
                job.id,
                job.task,
                extra=_job_extra("job_released", job),
            )
            return "released"
        error = f"timed out after {self._job_timeout(job):g} s"
        return self._retry_or_fail(conn, job, error)

    def _job_timeout(self, job: ClaimedJob) -> float:
        handler = self.registry.get(job.task)
        return handler.timeout or self.settings.job_timeout

    def _retry_or_fail(
        self, conn: store.Connection, job: ClaimedJob, error: str
    ) -> str:
        if job.is_last_attempt:
            return self._fail(conn, job, error)
        delay = self._backoff(job.attempt)
        state = self.store.retry(conn, job.id, error[:MAX_ERROR_LENGTH], delay)
        if state is None:
            return self._claim_lost(job)
        if state == JobState.CANCELLED:
            logger.info(
                "job %s (%s) failed attempt %s and is not retried: its cancellation "
                "was requested: %s",
                job.id,
                job.task,
                job.attempt,
                _first_line(error),
                extra=_job_extra("job_cancelled", job),
            )
            return "cancelled"
        logger.info(
            "job %s (%s) failed attempt %s of %s, retrying in %.1f s: %s",
            job.id,
            job.task,
            job.attempt,
            job.max_attempts,
            delay,
            _first_line(error),
            extra=_job_extra("job_retried", job),
        )
        return "retried"

    def _fail(self, conn: store.Connection, job: ClaimedJob, error: str) -> str:
        if not self.store.fail(conn, job.id, error[:MAX_ERROR_LENGTH]):
            return self._claim_lost(job)
        logger.error(
            "job %s (%s) failed: %s",
            job.id,
            job.task,
            _first_line(error),
            extra=_job_extra("job_failed", job),
        )
        return "failed"

    def _cancelled(self, conn: store.Connection, job: ClaimedJob) -> str:
        if not self.store.cancel_running(conn, job.id, CANCELLED_ERROR):
            return self._claim_lost(job)
        logger.info(
            "job %s (%s) cancelled on request during attempt %s",
            job.id,
            job.task,
            job.attempt,
            extra=_job_extra("job_cancelled", job),
        )
        return "cancelled"

    def _claim_lost(self, job: ClaimedJob) -> str:
        logger.warning(
            "job %s (%s) was taken from this runner (its heartbeat went stale); this "
            "attempt's outcome was not recorded",
            job.id,
            job.task,
            extra=_job_extra("job_claim_lost", job),
        )
        return "lost"

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: half fixed, half random."""
        s = self.settings
        delay: float = min(s.retry_max_delay, s.retry_base_delay * 2.0 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    # Deadlines and signals

    @contextmanager
    def _deadline(self, seconds: float, job_id: int) -> Iterator[None]:
        """Interrupt the block with _DeadlinePassed after `seconds`, on shutdown, or
        when the job's cancellation is requested."""
        self._deadline_reason = "timeout"
        self._in_handler = True
        if self._stopping:
            seconds = min(seconds, self.settings.shutdown_grace)
            self._deadline_reason = "shutdown"
        self.health.turned(seconds, "running a job")
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
        try:
            # Set inside the try: a cancellation raised from here on is cleaned up.
            self._handler_job_id = job_id
            yield
        finally:
            self._in_handler = False
            self._handler_job_id = self._cancel_job_id = None
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGUSR1, self._on_cancel_signal)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stopping and self._in_handler:
            logger.warning(
                "%s again: interrupting the current job now",
                name,
                extra={"action": "worker_hurried"},
            )
            self._deadline_reason = "shutdown"
            raise _DeadlinePassed
        self._stopping = True
        self.health.stopping()
        if not self._in_handler:
            logger.info(
                "%s received: stopping", name, extra={"action": "worker_stopping"}
            )
            return
        remaining: float = signal.getitimer(signal.ITIMER_REAL)[0]
        grace = self.settings.shutdown_grace
        if remaining == 0 or grace < remaining:
            self._deadline_reason = "shutdown"
            signal.setitimer(signal.ITIMER_REAL, max(grace, 0.001))
        logger.info(
            "%s received: stopping after the current job (at most %g s)",
            name,
            min(grace, remaining or grace),
            extra={"action": "worker_stopping"},
        )

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._in_handler:
            raise _DeadlinePassed

    def _request_cancel(self, job_ids: list[int]) -> None:
        """Stop the handler if its job is one of `job_ids`; runs in the heartbeat
        thread, at every beat while the request stands."""
        job_id = self._handler_job_id
        if job_id is None or job_id not in job_ids:
            return
        if self._cancel_job_id != job_id:
            logger.info(
                "job %s: cancellation requested, stopping its handler",
                job_id,
                extra={"action": "job_cancel_requested", "job_id": job_id},
            )
        self._cancel_job_id = job_id
        # Only a signal sent to the main thread interrupts a blocking call there;
        # Python runs the signal handler in that thread.
        main = threading.main_thread().ident
        if main is not None:
            signal.pthread_kill(main, signal.SIGUSR1)

    def _on_cancel_signal(self, signum: int, frame: FrameType | None) -> None:
        # A request that arrives late, for a job already done, is ignored.
        job_id = self._cancel_job_id
        if self._in_handler and job_id is not None and job_id == self._handler_job_id:
            self._deadline_reason = "cancel"
            raise _DeadlinePassed


def _job_extra(action: str, job: ClaimedJob) -> dict[str, Any]:
    return {
        "action": action,
        "job_id": job.id,
        "task": job.task,
        "attempt": job.attempt,
    }


def _blend(average: float, value: float) -> float:
    return average + PACE_WEIGHT * (value - average)


def _describe_error(exc: BaseException) -> str:
    """The error as stored on the job: type, message and where it was raised."""
    where = traceback.extract_tb(exc.__traceback__)
    frame = where[-1] if where else None
    at = f" (at {frame.filename}:{frame.lineno})" if frame else ""
    message = str(exc) or "no message"
    return f"{type(exc).__name__}: {message}{at}"


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text
