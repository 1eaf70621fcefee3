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
import json
import logging
import uuid
from datetime import datetime
from typing import Any

from runner import metrics
from runner.client import enqueue_many
from runner.errors import InvalidArguments, PermanentError
from runner.registry import JobContext, handler
from runner.store import Connection

logger = logging.getLogger(__name__)

# Seconds to connect, to send, and to wait for each piece of the answer, at most
# (RUNNER_WEBHOOK_TIMEOUT; see handlers.webhook_delivery).
MAX_TIMEOUT = 30.0
# Seconds a whole attempt may take: bounds a receiver that trickles its answer.
ATTEMPT_TIMEOUT = 4 * MAX_TIMEOUT
# With the default backoff (2 s doubling), ten attempts span about 17 minutes.
MAX_ATTEMPTS = 10


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


def announce(
    conn: Connection, event: dict[str, Any], webhook_ids: list[int]
) -> list[int]:
    """Enqueue the event's delivery to each of the webhooks; the job ids.

    The jobs are inserted in `conn`'s transaction: they exist only if it commits.
    """
    if not webhook_ids:
        return []
    args = [{"webhook_id": webhook_id, "event": event} for webhook_id in webhook_ids]
    return enqueue_many(send_webhook, args, conn=conn, max_attempts=MAX_ATTEMPTS)


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
    # Imported here: a runner that never delivers a webhook does not load the
    # HTTP client and the ciphers (several MB of memory).
    from handlers import webhook_delivery, webhooks
    from handlers.destinations import AddressRefused
    from handlers.webhook_secrets import SecretBox

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
        status = webhook_delivery.deliver(target, event)
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
