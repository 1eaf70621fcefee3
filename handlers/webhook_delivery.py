"""The HTTP side of webhook delivery: check the address, POST, judge the answer.

Loaded by the `send_webhook` handler on its first delivery, with the HTTP client.
"""

from __future__ import annotations

import http
import math
import os
import ssl
import time
from functools import cache
from typing import Any

import httpx

from handlers import destinations, webhooks
from handlers.destinations import Destination
from handlers.send_webhook import MAX_TIMEOUT, encode, sign
from runner import metrics
from runner.errors import ConfigurationError, JobError, PermanentError

TIMEOUT_ENV = "RUNNER_WEBHOOK_TIMEOUT"
# Seconds to connect, to send, and to wait for each piece of the answer.
DEFAULT_TIMEOUT = 10.0
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


def deliver(target: webhooks.Target, event: dict[str, Any]) -> int:
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
