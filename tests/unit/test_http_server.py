"""The runner's HTTP server and its route table, on a real socket of 127.0.0.1."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest

from runner.http_server import HttpServer, Request, Response


@pytest.fixture
def server() -> Iterator[HttpServer]:
    srv = HttpServer("127.0.0.1", 0)
    srv.start()
    yield srv
    srv.close()


def call(
    server: HttpServer, method: str, path: str, body: bytes | None = None
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path, body=body)
    return conn.getresponse()


def test_a_route_added_later_is_served_with_its_query_and_body(server):
    seen: list[Request] = []

    def echo(request: Request) -> Response:
        seen.append(request)
        return Response.json(201, {"got": request.body.decode()})

    server.add_route("/api/echo", echo, methods=["POST"])
    response = call(server, "POST", "/api/echo?x=1&x=2", b"hello")

    assert response.status == 201
    assert response.getheader("Content-Type") == "application/json"
    assert response.read() == b'{\n  "got": "hello"\n}\n'
    (request,) = seen
    assert request.method == "POST"
    assert request.path == "/api/echo"
    assert request.query == {"x": ["1", "2"]}
    assert request.headers["content-length"] == "5"


def test_unknown_paths_and_methods_are_refused(server):
    server.add_route("/thing", lambda request: Response.text(200, "thing\n"))

    assert call(server, "GET", "/nothing").status == 404
    refused = call(server, "DELETE", "/thing")
    assert refused.status == 405
    assert refused.getheader("Allow") == "GET, HEAD"


def test_head_answers_like_get_without_a_body(server):
    server.add_route("/thing", lambda request: Response.text(200, "thing\n"))

    response = call(server, "HEAD", "/thing")
    assert response.status == 200
    assert response.getheader("Content-Length") == "6"
    assert response.read() == b""


def test_a_failing_route_answers_500_and_the_server_carries_on(server, caplog):
    def broken(request: Request) -> Response:
        raise RuntimeError("bug in a route")

    server.add_route("/broken", broken)
    server.add_route("/fine", lambda request: Response.text(200, "fine\n"))

    assert call(server, "GET", "/broken").status == 500
    assert "bug in a route" in caplog.text
    assert call(server, "GET", "/fine").read() == b"fine\n"


def test_a_port_in_use_fails_at_construction(server):
    with pytest.raises(OSError):
        HttpServer("127.0.0.1", server.port)
