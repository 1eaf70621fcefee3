"""The listener: waits for job notifications on a dedicated autocommit connection."""

from __future__ import annotations

import logging
import select
from typing import Final

import psycopg

from runner import store
from runner.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

CHANNEL: Final = "runner_jobs"


class Listener:
    """LISTENs on the job channel and wakes the worker when a job becomes runnable.

    The wait also returns when bytes arrive on `wakeup_fd` (signals are delivered
    there), so a stop request never waits for the poll interval.
    """

    def __init__(self, url: str, wakeup_fd: int) -> None:
        self._url = url
        self._wakeup_fd = wakeup_fd
        self._conn: store.Connection | None = None

    def connect(self) -> None:
        conn = store.connect(self._url, autocommit=True)
        with store.translate_errors():
            conn.execute("LISTEN runner_jobs")
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True when a notification arrived."""
        conn = self._conn
        if conn is None:
            raise DatabaseUnavailable("the listening connection is closed")
        if self._drain(conn):
            return True
        try:
            ready, _, _ = select.select(
                [conn.pgconn.socket, self._wakeup_fd], [], [], max(0.0, timeout)
            )
        except InterruptedError:
            return False
        if conn.pgconn.socket in ready:
            return self._drain(conn)
        return False

    def _drain(self, conn: store.Connection) -> bool:
        """Consume what the server sent; True if it held a notification."""
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"the listening connection was lost: {exc}"
            ) from exc
        got = False
        while pgconn.notifies() is not None:
            got = True
        return got
