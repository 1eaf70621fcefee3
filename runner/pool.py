"""Database access for the HTTP server's request threads: bounded and time-boxed.

A request thread hands `Pool.run` a unit of work, a function of a connection that
runs in one transaction, and gets its value or an error within `budget` seconds,
whatever the database does:

- at most `size` units run at once, each on a connection of its own that is kept
  for the next one; a request that finds no free slot within the budget is turned
  away, so a slow database never piles up connections;
- a unit runs on a daemon thread, which the request waits for only until the
  budget runs out; its slot is freed when the unit ends, not when the request
  gives up, so units stuck in a database that stopped answering still count;
- connections open with a short timeout, and each unit's transaction sets a
  `statement_timeout`, so a unit in a database that answers slowly ends on its own.

Both refusals raise `DatabaseUnavailable`: try again later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from psycopg.pq import TransactionStatus

from runner import queries, store
from runner.errors import DatabaseUnavailable

T = TypeVar("T")

# Seconds; libpq rounds connection timeouts below 2 s up to 2 s.
CONNECT_TIMEOUT = 2.0
STATEMENT_TIMEOUT = 3.0
# Seconds a request waits for a slot and its unit, all told.
BUDGET = 5.0
SIZE = 4


class Pool:
    """At most `size` connections to `url`, for units of work run with a deadline."""

    def __init__(
        self,
        url: str,
        *,
        size: int = SIZE,
        budget: float = BUDGET,
        connect_timeout: float = CONNECT_TIMEOUT,
        statement_timeout: float = STATEMENT_TIMEOUT,
        application_name: str = "runner api",
    ) -> None:
        self._url = url
        self._budget = budget
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self._application_name = application_name
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[store.Connection] = []
        self._lock = threading.Lock()

    def run(self, work: Callable[[store.Connection], T]) -> T:
        """Run `work` in a transaction of its own and return its value.

        Raises DatabaseUnavailable when no slot frees up, or the unit does not end,
        within the budget; the unit then goes on (or waits) on its own thread.
        """
        deadline = time.monotonic() + self._budget
        if not self._slots.acquire(timeout=self._budget):
            raise DatabaseUnavailable(
                f"every database connection stayed busy for {self._budget:g} s"
            )
        unit = _Unit(work)
        # From here the unit's thread owns the slot and releases it when done.
        threading.Thread(
            target=self._run_unit, args=(unit,), name="runner api query", daemon=True
        ).start()
        if not unit.done.wait(max(0.0, deadline - time.monotonic())):
            raise DatabaseUnavailable(
                f"the database did not answer within {self._budget:g} s"
            )
        return unit.outcome()

    def close(self) -> None:
        """Close the idle connections; units still running close theirs."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # On a unit's thread

    def _run_unit(self, unit: _Unit[T]) -> None:
        try:
            unit.value.append(self._attempt(unit.work))
        except BaseException as exc:
            unit.error = exc
        finally:
            self._slots.release()
            unit.done.set()

    def _attempt(self, work: Callable[[store.Connection], T]) -> T:
        conn, reused = self._take()
        try:
            return self._in_transaction(conn, work)
        except DatabaseUnavailable:
            if not reused:
                raise
        # The kept connection went stale (a server restart, an idle timeout): one
        # more try on a new one, rather than an error for a database that is up.
        conn, _ = self._take(fresh=True)
        return self._in_transaction(conn, work)

    def _in_transaction(
        self, conn: store.Connection, work: Callable[[store.Connection], T]
    ) -> T:
        milliseconds = str(round(self._statement_timeout * 1000))
        try:
            with store.translate_errors(), conn.transaction():
                conn.execute(
                    queries.query("statement_timeout_set_local"),
                    {"milliseconds": milliseconds},
                )
                return work(conn)
        finally:
            self._give_back(conn)

    def _take(self, fresh: bool = False) -> tuple[store.Connection, bool]:
        """A connection, and whether it was kept from an earlier unit."""
        if not fresh:
            with self._lock:
                if self._idle:
                    return self._idle.pop(), True
        # No prepared statements: the database may be behind a pooler in
        # transaction mode, which loses them.
        conn = store.connect(
            self._url,
            timeout=self._connect_timeout,
            application_name=self._application_name,
            prepare=False,
        )
        return conn, False

    def _give_back(self, conn: store.Connection) -> None:
        """Keep the connection for the next unit, unless it is broken."""
        if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
            conn.close()
            return
        with self._lock:
            self._idle.append(conn)


class _Unit(Generic[T]):
    """One unit of work, its outcome, and the event that says it has one."""

    def __init__(self, work: Callable[[store.Connection], T]) -> None:
        self.work = work
        self.value: list[T] = []
        """The work's value, once it has one (a list: the value may be None)."""
        self.error: BaseException | None = None
        self.done = threading.Event()

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value[0]
