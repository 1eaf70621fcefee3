"""`rotate_key`: issue a successor for an API key and let the old one expire.

The rotation runs in the transaction that completes its job, with the key row
locked: the old key's new expiry, its successor and the job's success commit
together or not at all, and a key gets at most one successor (a unique index
backs this up when two rotations race).

The successor's secret is generated here and stored only as a hash. It reaches the
person who asked for the rotation only when they sent a one-time public key
(`recipient`): then the job's result holds the secret sealed to that key.

In the same transaction, a rotation that issues a successor records who asked for
it in `control_plane.api_key_rotations` and enqueues the `api_key.rotated` event's
delivery to each webhook of the key's project: a rotation that rolls back leaves
neither, and one that commits is always announced.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

from handlers.send_webhook import announce, new_event
from runner import metrics
from runner.errors import ConfigurationError, InvalidArguments, PermanentError
from runner.queries import query
from runner.registry import JobContext, handler
from runner.sealing import public_key, seal
from runner.store import Connection

logger = logging.getLogger(__name__)

DEFAULT_GRACE_HOURS = 24.0
# The longest grace period a rotation may ask for, unless MAX_GRACE_ENV says less
# (or more): a leaked key should not stay valid for long after its rotation.
MAX_GRACE_HOURS = 30 * 24.0
MAX_GRACE_ENV = "RUNNER_ROTATION_MAX_GRACE_HOURS"
# Who asked, when the job does not say: the Python API, or SQL.
DEFAULT_REQUESTED_BY = "api"
MAX_REQUESTED_BY_LENGTH = 200
ROTATED_EVENT = "api_key.rotated"
# Secrets are "rk_" and 43 URL-safe characters (256 random bits); the first
# PREFIX_LENGTH characters are stored in clear to tell keys apart.
SECRET_BYTES = 32
PREFIX_LENGTH = 11


def new_secret() -> tuple[str, str, str]:
    """A fresh secret, its display prefix and its hash (hex SHA-256)."""
    secret = "rk_" + secrets.token_urlsafe(SECRET_BYTES)
    return secret, secret[:PREFIX_LENGTH], hash_secret(secret)


def hash_secret(secret: str) -> str:
    """The form of a secret that `key_hash` stores: hex SHA-256.

    A secret of 256 random bits needs no slow password hash.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def max_grace_hours() -> float:
    """The configured maximum grace period, in hours."""
    text = os.environ.get(MAX_GRACE_ENV)
    if text is None:
        return MAX_GRACE_HOURS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigurationError(
            f"{MAX_GRACE_ENV} must be a number of hours, 0 or more"
        )
    return value


def _check(
    key_id: int, grace_hours: float, recipient: str | None, requested_by: str
) -> None:
    if key_id < 1:
        raise InvalidArguments(f"key_id must be a positive integer, not {key_id!r}")
    if not (math.isfinite(grace_hours) and grace_hours >= 0):
        raise InvalidArguments(
            f"grace_hours must be a number of hours, 0 or more, not {grace_hours!r}"
        )
    limit = max_grace_hours()
    if grace_hours > limit:
        raise InvalidArguments(
            f"grace_hours {grace_hours:g} is longer than the maximum of {limit:g} "
            f"hours ({MAX_GRACE_ENV})"
        )
    if recipient is not None:
        public_key(recipient)
    if not requested_by.strip() or len(requested_by) > MAX_REQUESTED_BY_LENGTH:
        raise InvalidArguments(
            f"requested_by must be 1 to {MAX_REQUESTED_BY_LENGTH} characters"
        )


@handler("rotate_key", transactional=True, validate=_check)
def rotate_key(
    ctx: JobContext,
    key_id: int,
    grace_hours: float = DEFAULT_GRACE_HOURS,
    recipient: str | None = None,
    requested_by: str = DEFAULT_REQUESTED_BY,
) -> dict[str, Any]:
    """Issue a successor for an API key; the old key stays valid for a grace period."""
    if ctx.conn is None:
        raise RuntimeError("rotate_key must run in the job's transaction")
    request = _Request(ctx.job_id, key_id, grace_hours, recipient, requested_by)
    started = time.perf_counter()
    try:
        result = _rotate(ctx.conn, request)
    except _KeyUnusable as exc:
        metrics.KEY_ROTATIONS.labels(exc.outcome).inc()
        raise
    duration = time.perf_counter() - started

    def count() -> None:
        metrics.KEY_ROTATIONS.labels(result["outcome"]).inc()
        if result["outcome"] == "rotated":
            metrics.KEY_ROTATION_DURATION.observe(duration)

    ctx.after_commit(count)
    return result


@dataclass(frozen=True)
class _Request:
    job_id: int
    key_id: int
    grace_hours: float
    recipient: str | None
    requested_by: str


class _KeyUnusable(PermanentError):
    def __init__(self, message: str, outcome: str) -> None:
        super().__init__(message)
        self.outcome = outcome


def _query(name: str) -> LiteralString:
    return query(name, package="handlers", filename="api_keys.sql")


def create_key(
    conn: Connection,
    project_id: int,
    *,
    key_type: str = "api",
    scopes: list[str] | None = None,
    rate_limit: int | None = None,
    replaces_key_id: int | None = None,
) -> tuple[int, str, str]:
    """Insert a key with a fresh secret; return its id, prefix and secret."""
    secret, prefix, key_hash = new_secret()
    params = {
        "project_id": project_id,
        "key_type": key_type,
        "key_prefix": prefix,
        "key_hash": key_hash,
        "scopes": ["read"] if scopes is None else scopes,
        "rate_limit": rate_limit,
        "replaces_key_id": replaces_key_id,
    }
    row = conn.execute(_query("api_key_insert"), params).fetchone()
    if row is None:
        raise RuntimeError("the new key was not inserted")
    return int(row[0]), prefix, secret


def _rotate(conn: Connection, request: _Request) -> dict[str, Any]:
    key_id = request.key_id
    key = conn.execute(_query("api_key_lock"), {"key_id": key_id}).fetchone()
    if key is None:
        raise _KeyUnusable(f"key {key_id} does not exist", "not_found")
    project_id, old_prefix, expires_at, expired, successor_id, successor_prefix = key[
        :6
    ]
    webhook_ids: list[int] = key[6]
    if successor_id is not None:
        return _already_rotated(key_id, successor_id, successor_prefix, expires_at)
    if expired:
        raise _KeyUnusable(
            f"key {key_id} expired at {expires_at.isoformat()} and cannot be rotated",
            "expired",
        )

    secret, prefix, key_hash = new_secret()
    params = {
        "key_id": key_id,
        "grace": request.grace_hours * 3600.0,
        "grace_hours": request.grace_hours,
        "key_prefix": prefix,
        "key_hash": key_hash,
        "job_id": request.job_id,
        "requested_by": request.requested_by,
    }
    row = conn.execute(_query("api_key_rotate"), params).fetchone()
    if row is None:
        # A rotation that raced with the lock issued the successor first.
        successor = conn.execute(
            _query("api_key_successor"), {"key_id": key_id}
        ).fetchone()
        if successor is None:
            raise RuntimeError(f"key {key_id} was neither rotated nor replaced")
        return _already_rotated(key_id, successor[0], successor[1], expires_at)
    new_id, new_expiry, rotated_at = row
    rotation = {
        "old_key_id": key_id,
        "old_key_prefix": old_prefix,
        "new_key_id": new_id,
        "new_key_prefix": prefix,
        "old_key_expires_at": new_expiry.isoformat(),
    }
    # Announced in the rotation's transaction: together with the new key, or not
    # at all. The event's time is the record's, in database time.
    event = new_event(ROTATED_EVENT, project_id, rotation, rotated_at)
    result: dict[str, Any] = {
        "outcome": "rotated",
        **rotation,
        "grace_hours": request.grace_hours,
        "webhook_jobs": announce(conn, event, webhook_ids),
    }
    if request.recipient is not None:
        result["sealed_secret"] = seal(request.recipient, secret)
    return result


def _already_rotated(
    key_id: int, successor_id: int, successor_prefix: str, expires_at: datetime | None
) -> dict[str, Any]:
    logger.info(
        "key %s was already rotated; its successor is key %s",
        key_id,
        successor_id,
        extra={"action": "key_already_rotated"},
    )
    return {
        "outcome": "already_rotated",
        "old_key_id": key_id,
        "new_key_id": successor_id,
        "new_key_prefix": successor_prefix,
        "old_key_expires_at": expires_at.isoformat() if expires_at else None,
    }
