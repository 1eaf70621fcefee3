"""The listener: waits for job notifications on a dedicated autocommit connection."""

from __future__ import annotations

import logging
import select
import time
import uuid
from typing import Final

import psycopg
from psycopg import pq, sql

from runner import store
from runner.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

CHANNEL: Final = "runner_jobs"
# How long the start-up check waits for the runner's own notification, in seconds.
CHECK_TIMEOUT: Final = 2.0


class Listener:
    """LISTENs on the job channel and wakes the worker when a job becomes runnable.

    The wait also returns when bytes arrive on `wakeup_fd` (signals are delivered
    there), so a stop request never waits for the poll interval.
    """

    def __init__(self, url: str, wakeup_fd: int) -> None:
        self._url = url
        self._wakeup_fd = wakeup_fd
        self._conn: store.Connection | None = None
        # A channel of this process alone for the start-up check; PostgreSQL limits
        # channel names to 63 bytes.
        self._check_channel = f"runner_check_{uuid.uuid4().hex}"

    def connect(self) -> None:
        conn = store.connect(self._url, application_name="runner listener")
        with store.translate_errors():
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            conn.execute(
                sql.SQL("LISTEN {}").format(sql.Identifier(self._check_channel))
            )
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def notifications_arrive(self, sender: store.Connection) -> bool:
        """Whether a NOTIFY sent on `sender` reaches this listener.

        It does not behind a pooler in transaction mode (PgBouncer's
        `pool_mode = transaction`), where LISTEN holds no server connection.
        """
        if self._conn is None:
            raise DatabaseUnavailable("the listening connection is closed")
        with store.translate_errors():
            sender.execute("SELECT pg_notify(%s, '')", (self._check_channel,))
        deadline = time.monotonic() + CHECK_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            if self._check_channel in self._receive(left):
                return True
        return False

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True when a job notification arrived."""
        return CHANNEL in self._receive(timeout)

    def _receive(self, timeout: float) -> set[str]:
        """The channels notified within `timeout` s; empty on timeout or a wake-up.

        Closed, the listener only waits: the worker polls instead.
        """
        conn = self._conn
        if conn is None:
            select.select([self._wakeup_fd], [], [], max(0.0, timeout))
            return set()
        channels = self._drain(conn)
        if channels:
            return channels
        try:
            ready, _, _ = select.select(
                [conn.pgconn.socket, self._wakeup_fd], [], [], max(0.0, timeout)
            )
        except InterruptedError:
            return set()
        if conn.pgconn.socket in ready:
            return self._drain(conn)
        return set()

    def _drain(self, conn: store.Connection) -> set[str]:
        """Consume what the server sent; return the channels it notified."""
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"the listening connection was lost: {exc}"
            ) from exc
        channels = set()
        while (notify := pgconn.notifies()) is not None:
            channels.add(notify.relname.decode())
        if pgconn.status != pq.ConnStatus.OK:
            raise DatabaseUnavailable("the listening connection was lost")
        return channels
