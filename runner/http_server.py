"""The HTTP server of `runner run`: a table of routes served from a daemon thread.

It serves `/metrics`, `/healthz` and `/readyz`, and the HTTP API when it is on
(runner.api); other modules add their own routes with `HttpServer.add_route`. A
route's path may hold parameters (`/v1/jobs/{job_id}`). Built on the standard
library's `http.server`, one thread per request, so a slow route never holds up
another.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

# Seconds a client may take to send its request before the server hangs up.
REQUEST_TIMEOUT = 10.0
# Request bodies larger than this many bytes are refused (413).
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, list[str]]
    # Out of reprs: they may carry credentials (Authorization).
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(default=b"", repr=False)
    params: Mapping[str, str] = field(default_factory=dict)
    """The values of the route's path parameters, by name, percent-decoded."""
    route: str = ""
    """The path of the route that matched, parameters unfilled: a bounded label."""
    client: str = ""
    """The client's address."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode())

    @classmethod
    def json(
        cls, status: int, value: Any, headers: Mapping[str, str] | None = None
    ) -> Response:
        body = json.dumps(value, indent=2, sort_keys=True) + "\n"
        return cls(status, body.encode(), "application/json", headers or {})


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    path: str
    handler: Handler
    methods: frozenset[str]
    """HEAD is allowed wherever GET is."""

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/"))

    def match(self, path: str) -> dict[str, str] | None:
        """The path parameters when `path` is one of this route's, else None."""
        given = path.split("/")
        if len(given) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for pattern, value in zip(self.segments, given, strict=True):
            name = _parameter(pattern)
            if name is None:
                if pattern != value:
                    return None
            elif value:
                params[name] = unquote(value)
            else:
                return None
        return params


def _parameter(segment: str) -> str | None:
    """The name of the parameter that a path segment such as `{job_id}` is."""
    if len(segment) > 2 and segment[0] == "{" and segment[-1] == "}":
        return segment[1:-1]
    return None


class HttpServer:
    """Serves a table of routes on `host:port`; port 0 picks a free port.

    The socket is bound at construction, so a port in use raises OSError there;
    `start` then serves from a daemon thread, which never keeps the process alive.
    """

    def __init__(self, host: str, port: int) -> None:
        self._server = _Server(host, port)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def add_route(
        self, path: str, handler: Handler, methods: Collection[str] = ("GET",)
    ) -> None:
        """Serve `path` (whatever the query string) with `handler`.

        A segment `{name}` of `path` is a parameter: it matches any one non-empty
        segment, whose value the handler finds in `Request.params`. A path without
        parameters wins over one with them; otherwise the first route added wins.
        """
        route = Route(path, handler, frozenset(methods))
        if any(_parameter(segment) for segment in route.segments):
            self._server.templates.append(route)
        else:
            self._server.routes[path] = route

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="runner http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int) -> None:
        self.routes: dict[str, Route] = {}
        self.templates: list[Route] = []
        # IPv4 or IPv6, whichever the host names.
        info = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        self.address_family = info[0][0]
        super().__init__((host, port), _RequestHandler)

    def match(self, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route that serves `path`, and its path parameters."""
        route = self.routes.get(path)
        if route is not None:
            return route, {}
        for template in self.templates:
            params = template.match(path)
            if params is not None:
                return template, params
        return None

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Mostly a client that hung up; the default prints a traceback to stderr.
        logger.debug(
            "an HTTP request from %s failed",
            client_address,
            exc_info=True,
            extra={"action": "http_request_failed"},
        )

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the host's name up in DNS, which can
        # take seconds; the name is used for nothing here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        route, params = self.server.match(url.path) or (None, {})
        length = self._body_length()
        refusal = self._refusal(route, length)
        if refusal is not None or route is None or length is None:
            self._send(refusal or Response(HTTPStatus.NOT_FOUND))
            return
        request = Request(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
            params=params,
            route=route.path,
            client=self.address_string(),
        )
        self._send(self._respond(route, request))

    def _refusal(self, route: Route | None, length: int | None) -> Response | None:
        """The error response for a request no route should see, if it is one."""
        if route is None:
            return Response.text(HTTPStatus.NOT_FOUND, "not found\n")
        if not self._allowed(route):
            return self._method_not_allowed(route)
        if length is None:
            return Response.text(HTTPStatus.BAD_REQUEST, "bad Content-Length\n")
        if length > MAX_BODY:
            return Response.text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too large\n")
        return None

    def _body_length(self) -> int | None:
        text = self.headers.get("Content-Length") or "0"
        return int(text) if text.isdigit() else None

    def _allowed(self, route: Route) -> bool:
        method = "GET" if self.command == "HEAD" else self.command
        return method in route.methods

    def _method_not_allowed(self, route: Route) -> Response:
        allow = set(route.methods) | ({"HEAD"} if "GET" in route.methods else set())
        return Response(
            HTTPStatus.METHOD_NOT_ALLOWED,
            b"method not allowed\n",
            headers={"Allow": ", ".join(sorted(allow))},
        )

    def _respond(self, route: Route, request: Request) -> Response:
        try:
            return route.handler(request)
        except Exception:
            logger.exception(
                "the route %s failed", request.path, extra={"action": "http_failed"}
            )
            return Response.text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes and probes arrive every few seconds: not worth a line at INFO.
        logger.debug(
            "%s: " + format,
            self.address_string(),
            *args,
            extra={"action": "http_request"},
        )
