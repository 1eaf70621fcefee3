"""Health of a runner process, as `/healthz` (alive) and `/readyz` (ready) report it.

The job loop tells its `Health` what it is doing and by when it will turn again:
before an idle wait (within the poll interval), before a handler runs (its
deadline), and before a wait to reconnect (the backoff). The process is alive while
that promise, plus `LIVENESS_GRACE`, has not run out; a handler stuck past its
deadline, or a loop stuck in a call that never returns, makes it not alive, which
is what a platform's liveness probe should restart.

It is ready while the job loop takes jobs (it is not shutting down), holds its
database connection, and the listener listens, or while the runner knowingly polls
because notifications do not arrive (behind a pooler in transaction mode). The
loop notices a lost database when it next uses a connection: at once while it
waits for jobs, and only after the current job while a handler runs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from runner.http_server import HttpServer, Request, Response

# Seconds the loop may overrun its promise: the claim or outcome query, or a
# reconnection (two connection attempts of up to 10 s each, and checks), happens
# between two promises.
LIVENESS_GRACE = 30.0


@dataclass(frozen=True)
class _Turn:
    doing: str
    due: float
    """time.monotonic() by which the loop said it would turn again."""


class Health:
    """What the job loop last said about itself; read by the HTTP server's threads."""

    def __init__(self, grace: float = LIVENESS_GRACE) -> None:
        self._grace = grace
        self._turn = _Turn("starting", time.monotonic())
        self._database = False
        self._listener = "down"
        self._stopping = False
        self._lock = threading.Lock()

    # Reports from the job loop

    def turned(self, within: float, doing: str) -> None:
        """The loop turned, and will turn again within `within` seconds."""
        self._turn = _Turn(doing, time.monotonic() + within)

    def connected(self, *, polling: bool) -> None:
        """The loop holds its connections; `polling`: without notifications."""
        with self._lock:
            self._database = True
            self._listener = "polling" if polling else "up"

    def disconnected(self) -> None:
        with self._lock:
            self._database = False
            self._listener = "down"

    def stopping(self) -> None:
        """The runner takes no more jobs: it is shutting down.

        Called from a signal handler, so it takes no lock (one assignment is atomic).
        """
        self._stopping = True

    # What the endpoints say

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        turn = self._turn
        late = time.monotonic() - turn.due
        alive = late <= self._grace
        report = {
            "status": "alive" if alive else "stuck",
            "doing": turn.doing,
            # Positive: past the time the loop said it would turn again.
            "late_seconds": round(max(late, 0.0), 3),
        }
        return alive, report

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            checks = {
                "database": "up" if self._database else "down",
                "listener": self._listener,
                "claiming": "down" if self._stopping else "up",
            }
        down = sorted(name for name, state in checks.items() if state == "down")
        report: dict[str, Any] = {
            "status": "not ready" if down else "ready",
            "checks": checks,
        }
        if down:
            report["down"] = down
        return not down, report

    def add_routes(self, server: HttpServer) -> None:
        server.add_route("/healthz", self._healthz)
        server.add_route("/readyz", self._readyz)

    def _healthz(self, request: Request) -> Response:
        return _report(*self.liveness())

    def _readyz(self, request: Request) -> Response:
        return _report(*self.readiness())


def _report(ok: bool, report: dict[str, Any]) -> Response:
    status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
    return Response.json(status, report)
