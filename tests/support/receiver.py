"""A webhook receiver for the tests: a real HTTP server on 127.0.0.1, in a thread.

It records every request and answers with the statuses it is told, in order, then
200. The answer "hang" never answers (until the receiver is closed), so that the
sender's timeout fires.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.processes import wait_until

HANG = "hang"


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._answers: list[int | str] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/runner"

    def answer(self, *answers: int | str) -> None:
        """Answer the next requests with these statuses (or HANG), then 200."""
        with self._lock:
            self._answers.extend(answers)

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        wait_until(
            lambda: len(self.requests) >= count,
            timeout,
            f"{count} webhook requests",
        )
        return list(self.requests)

    def _next_answer(self, received: Received) -> int | str:
        with self._lock:
            self.requests.append(received)
            return self._answers.pop(0) if self._answers else 200

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = receiver._next_answer(Received(self.path, headers, body))
                if answer == HANG:
                    receiver._released.wait(60)
                    self.close_connection = True
                    return
                self.send_response(int(answer))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver().start()
    try:
        yield receiver
    finally:
        receiver.close()


def verify(secret: str, header: str, body: bytes, tolerance: float = 300) -> bool:
    """Check a Runner-Signature header as the README tells receivers to."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    message = f"{timestamp}.".encode() + body
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - timestamp) <= tolerance
    return fresh and hmac.compare_digest(expected, fields["v1"])
