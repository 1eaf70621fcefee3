"""`send_webhook`: POST one event to one webhook, signed, until it is accepted.

An event is made once, with its id, in the transaction of the change it announces
(`announce`); every delivery job carries the event itself, so each retry sends the
same body with the same `Idempotency-Key`. Only the signature's timestamp changes.

Each attempt checks the URL's address again and connects to the address it
checked. A 2xx answer delivers the event. 408, 429, 5xx, a timeout or a broken
connection fail the attempt, which the runner retries with its backoff until the
job's attempts run out; any other answer (redirects included: they are not
followed) fails the job at once. Error texts name the webhook by id and host only:
never its secret, the signature, or the URL's path, which some receivers use as a
token.
"""

from __future__ import annotations

import hashlib
import hmac
import http
import json
import logging
import math
import os
import ssl
import time
import uuid
from datetime import datetime
from functools import cache
from typing import Any

import httpx

from handlers import destinations, webhooks
from handlers.destinations import AddressRefused, Destination
from handlers.webhook_secrets import SecretBox
from runner import metrics
from runner.client import enqueue
from runner.errors import ConfigurationError, InvalidArguments, JobError, PermanentError
from runner.registry import JobContext, handler
from runner.store import Connection

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "RUNNER_WEBHOOK_TIMEOUT"
# Seconds to connect, to send, and to wait for each piece of the answer.
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 30.0
# Seconds a whole attempt may take: bounds a receiver that trickles its answer.
ATTEMPT_TIMEOUT = 4 * MAX_TIMEOUT
# With the default backoff (2 s doubling), ten attempts span about 17 minutes.
MAX_ATTEMPTS = 10
SIGNATURE_HEADER = "Runner-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "Runner-Event"
USER_AGENT = "runner-webhooks/1"
# Answers that say "try again later"; every other 4xx is final.
_RETRY_STATUSES = frozenset({408, 429})


class DeliveryFailed(JobError):
    """The receiver could not take the event now; the attempt is retried."""


class DeliveryRejected(PermanentError):
    """The receiver refused the event; retrying would not change its answer."""


def new_event(
    event_type: str, project_id: int, data: dict[str, Any], occurred_at: datetime
) -> dict[str, Any]:
    """An event with a fresh id: the idempotency key of all its deliveries."""
    return {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "created_at": occurred_at.isoformat(),
        "project_id": project_id,
        "data": data,
    }


def announce(conn: Connection, event: dict[str, Any]) -> list[int]:
    """Enqueue the event's delivery to each webhook of its project; the job ids.

    The jobs are inserted in `conn`'s transaction: they exist only if it commits.
    """
    return [
        enqueue(
            send_webhook,
            {"webhook_id": webhook_id, "event": event},
            conn=conn,
            max_attempts=MAX_ATTEMPTS,
        )
        for webhook_id in webhooks.ids_of_project(conn, event["project_id"])
    ]


def encode(event: dict[str, Any]) -> bytes:
    """The request body: the same bytes for every attempt of one event."""
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Runner-Signature` value: `t=<unix time>,v1=<hex HMAC-SHA256>`.

    The HMAC covers the timestamp, a dot and the body, so a receiver can refuse
    an old request replayed to it.
    """
    message = str(timestamp).encode() + b"." + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _check(webhook_id: int, event: dict[str, Any]) -> None:
    if webhook_id < 1:
        raise InvalidArguments(
            f"webhook_id must be a positive integer, not {webhook_id}"
        )
    for field in ("id", "type"):
        if not (isinstance(event.get(field), str) and event[field]):
            raise InvalidArguments(f"the event must have a non-empty {field!r}")


@handler("send_webhook", transactional=True, timeout=ATTEMPT_TIMEOUT, validate=_check)
def send_webhook(
    ctx: JobContext, webhook_id: int, event: dict[str, Any]
) -> dict[str, Any]:
    """POST an event to a webhook, signed with the webhook's secret."""
    # Transactional only to read the webhook: the job's transaction then stays
    # idle while the request is out, for at most ATTEMPT_TIMEOUT.
    if ctx.conn is None:
        raise RuntimeError("send_webhook must run in the job's transaction")
    target = webhooks.target(ctx.conn, webhook_id, SecretBox.from_env())
    if target is None:
        logger.info(
            "webhook %s was removed; event %s is not sent to it",
            webhook_id,
            event["id"],
            extra={"action": "webhook_removed", "job_id": ctx.job_id},
        )
        return {"outcome": "webhook_removed", "webhook_id": webhook_id}

    try:
        status = _deliver(target, event)
    except AddressRefused:
        metrics.WEBHOOK_DELIVERIES.labels("refused").inc()
        raise
    except PermanentError:
        metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
        raise
    except Exception:
        last = ctx.attempt >= ctx.max_attempts
        metrics.WEBHOOK_DELIVERIES.labels("failed" if last else "retried").inc()
        raise
    metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
    return {
        "outcome": "delivered",
        "webhook_id": webhook_id,
        "event_id": event["id"],
        "status": status,
    }


def _deliver(target: webhooks.Target, event: dict[str, Any]) -> int:
    """Send the event; return the 2xx status, or raise how the attempt failed."""
    destination = destinations.check(target.url)
    body = encode(event)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: event["type"],
        IDEMPOTENCY_HEADER: event["id"],
        SIGNATURE_HEADER: sign(target.secret, int(time.time()), body),
    }
    timeout = _timeout()

    started = time.perf_counter()
    try:
        status = _post(destination, headers, body, timeout, target.id)
    finally:
        metrics.WEBHOOK_DELIVERY_DURATION.observe(time.perf_counter() - started)

    _judge(status, target.id, destination.host)
    return status


def _post(
    destination: Destination,
    headers: dict[str, str],
    body: bytes,
    timeout: float,
    webhook_id: int,
) -> int:
    """POST to the first checked address that connects; the answer's status."""
    # The URL names the checked address; Host and, over TLS, the server name
    # (for SNI and the certificate check) stay the registered host's.
    headers = {**headers, "Host": destination.url.netloc.decode("ascii")}
    extensions: dict[str, Any] = {}
    if destination.url.scheme == "https":
        extensions["sni_hostname"] = destination.host
    where = f"webhook {webhook_id} at {destination.host}"

    # trust_env=False: a proxy from the environment would connect in our stead,
    # to an address nobody checked.
    client = httpx.Client(
        verify=_tls_context(),
        timeout=timeout,
        trust_env=False,
        follow_redirects=False,
    )
    unreachable: httpx.HTTPError | None = None
    with client:
        for address in destination.addresses:
            url = destination.pinned_url(address)
            try:
                with client.stream(
                    "POST", url, content=body, headers=headers, extensions=extensions
                ) as response:
                    # The body is left unread: only the status counts.
                    return response.status_code
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # As a client given the name would, try the host's next address.
                unreachable = exc
            except httpx.HTTPError as exc:
                raise _failure(exc, where, timeout) from None
    raise _failure(unreachable, where, timeout)


@cache
def _tls_context() -> ssl.SSLContext:
    """The certificate authorities to trust, loaded once: it takes about 0.1 s.

    SSL_CERT_FILE and SSL_CERT_DIR name others, for a receiver behind a private CA.
    """
    return httpx.create_ssl_context()


def _failure(exc: httpx.HTTPError | None, where: str, timeout: float) -> DeliveryFailed:
    if isinstance(exc, httpx.TimeoutException):
        return DeliveryFailed(
            f"{where} did not answer within {timeout:g} s ({type(exc).__name__})"
        )
    reason = "no address" if exc is None else _reason(exc)
    return DeliveryFailed(f"cannot deliver to {where}: {reason}")


def _judge(status: int, webhook_id: int, host: str) -> None:
    """Raise unless the status delivers the event."""
    if 200 <= status < 300:
        return
    # The standard phrase, not the receiver's: its text could echo anything.
    answered = f"webhook {webhook_id} at {host} answered {status} {_phrase(status)}"
    if status >= 500 or status in _RETRY_STATUSES:
        raise DeliveryFailed(answered)
    if 300 <= status < 400:
        raise DeliveryRejected(f"{answered}: redirects are not followed")
    raise DeliveryRejected(answered)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _reason(exc: httpx.HTTPError) -> str:
    """Why a transfer failed, from the operating system's error when there is one.

    Never the exception's own text: a protocol error quotes what the receiver sent.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return f"{type(exc).__name__}: {cause.strerror}"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise ConfigurationError(
            f"{TIMEOUT_ENV} must be a number of seconds above 0 and at most "
            f"{MAX_TIMEOUT:g}"
        )
    return value
