"""The runner's HTTP server and its route table, on a real socket of 127.0.0.1."""

from __future__ import annotations

import http.client
import json
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


def test_path_parameters_are_matched_and_decoded(server):
    seen: list[Request] = []

    def job(request: Request) -> Response:
        seen.append(request)
        return Response.json(200, dict(request.params))

    server.add_route("/v1/jobs/{job_id}", job)
    server.add_route("/v1/keys/{key_id}/rotate", job, methods=["POST"])

    assert json.loads(call(server, "GET", "/v1/jobs/12?x=1").read()) == {"job_id": "12"}
    assert json.loads(call(server, "POST", "/v1/keys/a%20b/rotate").read()) == {
        "key_id": "a b"
    }
    assert [r.route for r in seen] == ["/v1/jobs/{job_id}", "/v1/keys/{key_id}/rotate"]
    assert seen[0].client == "127.0.0.1"
    for path in ("/v1/jobs/", "/v1/jobs", "/v1/jobs/12/more", "/v1/keys//rotate"):
        assert call(server, "GET", path).status == 404, path
    refused = call(server, "GET", "/v1/keys/3/rotate")
    assert refused.status == 405
    assert refused.getheader("Allow") == "POST"


def test_a_path_without_parameters_wins_over_one_with_them(server):
    server.add_route("/v1/jobs/{job_id}", lambda request: Response.text(200, "one\n"))
    server.add_route("/v1/jobs/stats", lambda request: Response.text(200, "stats\n"))

    assert call(server, "GET", "/v1/jobs/stats").read() == b"stats\n"
    assert call(server, "GET", "/v1/jobs/7").read() == b"one\n"


def test_a_request_keeps_its_headers_and_body_out_of_its_repr():
    request = Request("POST", "/x", {}, {"authorization": "Bearer hunter2"}, b"hunter3")
    assert "hunter" not in repr(request)
