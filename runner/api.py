"""The HTTP API of `runner run`: rotate API keys on demand and follow the jobs.

    POST /v1/keys/{key_id}/rotate   enqueue a rotation of the key; 202 with the new
                                    job, or 200 with the one already queued
    GET  /v1/jobs/{job_id}          a job's state and result

It is served beside /metrics only when a bearer token is configured; without one
these paths are unknown (404). Every request must carry the token
(`Authorization: Bearer <token>`), compared in constant time; the token never
reaches a log line or an answer. Errors are JSON objects, `{"error": "..."}`:
401 without the right token, 404 for an unknown key or job, 409 for a key that
cannot be rotated as asked, 422 for a bad body, 503 while the database is out of
reach or too slow.

A rotation asked for here is the `rotate_key` job that `runner enqueue` makes,
with the unique key `rotate_key:<key id>`: while one is queued or running, asking
again returns it instead of a second one, unless the two ask for a different grace
period or recipient (409). A job's answer never holds a secret in clear: the new
secret appears only sealed to the `recipient` the caller sent, which only the
holder of its private half can open.

Database access goes through runner.pool: bounded in connections and in time.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import math
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from typing import Any, TypeVar

from runner import metrics, payloads, store
from runner.admin import is_sealed, withhold_secrets
from runner.delivery import SEALED_FIELD
from runner.errors import (
    ConfigurationError,
    DatabaseError,
    InvalidArguments,
    JobNotFound,
    UnknownTask,
)
from runner.http_server import HttpServer, Request, Response
from runner.pool import Pool
from runner.registry import Handler, Registry

logger = logging.getLogger(__name__)

T = TypeVar("T")

ROTATE_ROUTE = "/v1/keys/{key_id}/rotate"
JOB_ROUTE = "/v1/jobs/{job_id}"
ROTATE_TASK = "rotate_key"
# Who asked, in the rotation's audit trail, when the body does not say.
DEFAULT_REQUESTED_BY = "api"
ROTATION_FIELDS = frozenset({"grace_hours", "recipient", "requested_by"})
# Largest ids PostgreSQL stores: keys are `integer`, jobs `bigint`.
MAX_KEY_ID = 2**31 - 1
MAX_JOB_ID = 2**63 - 1
# Seconds a client is told to wait before asking again when the database is away.
RETRY_AFTER = 5


class Refusal(Exception):
    """An answer other than success: a status, and a message for the caller."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers
        self.extra = extra

    def response(self) -> Response:
        body = {"error": str(self), **self.extra}
        return Response.json(self.status, body, self.headers)


class Api:
    """The API's routes, for the token `token`, on the database at `url`."""

    def __init__(self, token: str, url: str, registry: Registry) -> None:
        # Only the digest is kept: comparing digests of equal length leaks nothing
        # about the token's length either.
        self._token_digest = _digest(token.encode("ascii"))
        self._pool = Pool(url)
        self._rotate_key = _rotation_handler(registry)
        self._default_grace = _default_grace(self._rotate_key)
        self._failing = False

    def add_routes(self, server: HttpServer) -> None:
        server.add_route(ROTATE_ROUTE, self._endpoint(self._rotate), ["POST"])
        server.add_route(JOB_ROUTE, self._endpoint(self._job))

    def close(self) -> None:
        self._pool.close()

    # Around every route: authentication, errors as JSON, metrics

    def _endpoint(
        self, route: Callable[[Request], Response]
    ) -> Callable[[Request], Response]:
        def serve(request: Request) -> Response:
            response = self._answer(route, request)
            metrics.API_REQUESTS.labels(request.route, str(response.status)).inc()
            return response

        return serve

    def _answer(
        self, route: Callable[[Request], Response], request: Request
    ) -> Response:
        try:
            self._authenticate(request)
            return route(request)
        except Refusal as refusal:
            return refusal.response()
        except DatabaseError as exc:
            return self._database_failed(exc)
        except Exception:
            logger.exception(
                "the API route %s failed", request.route, extra={"action": "api_failed"}
            )
            return Response.json(
                HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"}
            )

    def _authenticate(self, request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise self._unauthorized(request, "a bearer token is required", "")
        # http.server decodes headers as Latin-1: this gives back the bytes sent.
        digest = _digest(given.encode("latin-1"))
        if not hmac.compare_digest(digest, self._token_digest):
            raise self._unauthorized(
                request, "the bearer token is wrong", ', error="invalid_token"'
            )

    def _unauthorized(self, request: Request, why: str, error: str) -> Refusal:
        logger.info(
            "refused an API request from %s: %s",
            request.client,
            why,
            extra={"action": "api_unauthorized"},
        )
        challenge = f'Bearer realm="runner"{error}'
        return Refusal(HTTPStatus.UNAUTHORIZED, why, {"WWW-Authenticate": challenge})

    def _run(self, work: Callable[[store.Connection], T]) -> T:
        """Run `work` on the pool; note when the database answers again."""
        try:
            value = self._pool.run(work)
        except DatabaseError:
            raise
        except Exception:
            # The database answered; the work refused (an unknown key, say).
            self._database_answered()
            raise
        self._database_answered()
        return value

    def _database_failed(self, exc: DatabaseError) -> Response:
        # One warning per outage, not one per request.
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        logger.log(
            level,
            "the API cannot reach the database: %s",
            exc,
            extra={"action": "api_database_unavailable"},
        )
        # The cause stays in the log: it names hosts and ports.
        return Response.json(
            HTTPStatus.SERVICE_UNAVAILABLE,
            {"error": "the database is unavailable; try again later"},
            {"Retry-After": str(RETRY_AFTER)},
        )

    def _database_answered(self) -> None:
        if self._failing:
            self._failing = False
            logger.info(
                "the API reaches the database again",
                extra={"action": "api_database_recovered"},
            )

    # POST /v1/keys/{key_id}/rotate

    def _rotate(self, request: Request) -> Response:
        key_id = _id_param(request, "key_id", MAX_KEY_ID, "no key with id")
        args = rotation_args(key_id, request.body, self._rotate_key)
        inserted, state = self._run(
            lambda conn: _enqueue_rotation(conn, args, self._default_grace)
        )
        self._report_rotation(key_id, inserted, request)
        status = HTTPStatus.ACCEPTED if inserted.created else HTTPStatus.OK
        url = JOB_ROUTE.replace("{job_id}", str(inserted.id))
        body = {
            "job_id": inserted.id,
            "state": state,
            "created": inserted.created,
            "url": url,
        }
        return Response.json(status, body, {"Location": url})

    def _report_rotation(
        self, key_id: int, inserted: store.Inserted, request: Request
    ) -> None:
        if inserted.created:
            metrics.KEY_ROTATIONS_ENQUEUED.labels("api").inc()
        logger.info(
            "%s rotation of key %s for %s: job %s",
            "enqueued the" if inserted.created else "found a queued",
            key_id,
            request.client,
            inserted.id,
            extra={"action": "api_rotation_requested", "job_id": inserted.id},
        )

    # GET /v1/jobs/{job_id}

    def _job(self, request: Request) -> Response:
        job_id = _id_param(request, "job_id", MAX_JOB_ID, "no job with id")
        try:
            job = self._run(lambda conn: store.get_job(conn, job_id))
        except JobNotFound:
            raise Refusal(HTTPStatus.NOT_FOUND, f"no job with id {job_id}") from None
        return Response.json(HTTPStatus.OK, job_view(job))


def _rotation_handler(registry: Registry) -> Handler:
    try:
        return registry.get(ROTATE_TASK)
    except UnknownTask:
        raise ConfigurationError(
            f"the HTTP API needs the {ROTATE_TASK} handler, which is not registered"
        ) from None


def _default_grace(handler: Handler) -> float:
    """The grace period, in hours, of a rotation that does not say."""
    return float(inspect.signature(handler.func).parameters["grace_hours"].default)


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def _id_param(request: Request, name: str, largest: int, missing: str) -> int:
    """A positive integer path parameter; 404 for anything else, which names none."""
    text = request.params[name]
    if not (text.isascii() and text.isdigit() and 0 < int(text) <= largest):
        raise Refusal(HTTPStatus.NOT_FOUND, f"{missing} {text!r}")
    return int(text)


def rotation_args(key_id: int, body: bytes, handler: Handler) -> dict[str, Any]:
    """The `rotate_key` arguments a request's body asks for; 422 when it is bad.

    An empty body asks for the defaults.
    """
    fields = _json_object(body)
    unknown = sorted(set(fields) - ROTATION_FIELDS)
    if unknown:
        raise _unprocessable(f"unknown field {unknown[0]!r}")
    args: dict[str, Any] = {
        "key_id": key_id,
        "grace_hours": _hours(fields.get("grace_hours", _default_grace(handler))),
        "requested_by": _text(fields, "requested_by", DEFAULT_REQUESTED_BY),
    }
    if fields.get("recipient") is not None:
        args["recipient"] = _text(fields, "recipient", "")
    why = payloads.problem(args)
    if why is not None:
        raise _unprocessable(why)
    try:
        handler.check_arguments(args)
    except InvalidArguments as exc:
        raise _unprocessable(str(exc)) from None
    return args


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        raise _unprocessable("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise _unprocessable("the body must be a JSON object")
    return value


def _hours(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _unprocessable("grace_hours must be a number of hours")
    try:
        hours = float(value)
    except OverflowError:
        hours = math.inf
    if not math.isfinite(hours):
        raise _unprocessable("grace_hours must be a finite number of hours")
    return hours


def _text(fields: dict[str, Any], name: str, default: str) -> str:
    value = fields.get(name, default)
    if not isinstance(value, str):
        raise _unprocessable(f"{name} must be a string")
    return value


def _unprocessable(message: str) -> Refusal:
    return Refusal(HTTPStatus.UNPROCESSABLE_ENTITY, message)


def _enqueue_rotation(
    conn: store.Connection, args: dict[str, Any], default_grace: float
) -> tuple[store.Inserted, str]:
    """Enqueue the rotation unless one is queued or running: the job, and its state.

    Runs in one of the pool's transactions.
    """
    key_id = args["key_id"]
    expiry = store.api_key_expiry(conn, key_id)
    if expiry is None:
        raise Refusal(HTTPStatus.NOT_FOUND, f"no key with id {key_id}")
    expired, expires_at = expiry
    if expired and expires_at is not None:
        raise Refusal(
            HTTPStatus.CONFLICT,
            f"key {key_id} expired at {expires_at.isoformat()} and cannot be rotated",
        )
    inserted = store.insert_unique_job(
        conn, ROTATE_TASK, args, store.rotation_key(key_id)
    )
    if inserted.created:
        return inserted, "queued"
    job = store.get_job(conn, inserted.id)
    _check_same_request(job, args, default_grace)
    return inserted, str(job["state"])


def _check_same_request(
    job: dict[str, Any], args: dict[str, Any], default_grace: float
) -> None:
    """409 unless the queued rotation is the one asked for: a caller must never get
    a job with a longer grace than it asked for, or a secret sealed to another."""
    queued = job["args"]
    grace = queued.get("grace_hours", default_grace)
    if grace != args["grace_hours"] or queued.get("recipient") != args.get("recipient"):
        raise Refusal(
            HTTPStatus.CONFLICT,
            f"key {args['key_id']} has a rotation {job['state']} already, job "
            f"{job['id']}, with another grace period or recipient",
            job_id=job["id"],
        )


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """What GET /v1/jobs/{job_id} shows of a job: secrets withheld, but for the
    sealed secret of a result, which only its recipient can open."""
    result = job["result"]
    sealed = None
    if isinstance(result, dict) and is_sealed(result.get(SEALED_FIELD)):
        result = dict(result)
        sealed = result.pop(SEALED_FIELD)
    args, withheld_args = withhold_secrets(job["args"], "args")
    result, withheld_result = withhold_secrets(result, "result")
    if sealed is not None:
        result[SEALED_FIELD] = sealed
    view = {
        name: _json_value(job[name])
        for name in (
            "id",
            "task",
            "queue",
            "state",
            "attempts",
            "max_attempts",
            "unique_key",
            "created_at",
            "run_at",
            "updated_at",
            "finished_at",
            "last_error",
        )
    }
    return {
        **view,
        "args": args,
        "result": result,
        "withheld": withheld_args + withheld_result,
    }


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
