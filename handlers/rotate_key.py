"""`rotate_key`: issue a successor for an API key and let the old one expire.

The rotation runs in the transaction that completes its job, with the key row
locked: the old key's new expiry, its successor and the job's success commit
together or not at all, and a key gets at most one successor (a unique index
backs this up when two rotations race).

The successor's secret is generated here and stored only as a hash. It reaches the
person who asked for the rotation only when they sent a one-time public key
(`recipient`): then the job's result holds the secret sealed to that key.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from datetime import datetime
from typing import Any, LiteralString

from runner import metrics
from runner.errors import InvalidArguments, PermanentError
from runner.queries import query
from runner.registry import JobContext, handler
from runner.sealing import public_key, seal
from runner.store import Connection

logger = logging.getLogger(__name__)

DEFAULT_GRACE_HOURS = 24.0
MAX_GRACE_HOURS = 30 * 24.0
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


def _check(key_id: int, grace_hours: float, recipient: str | None) -> None:
    if key_id < 1:
        raise InvalidArguments(f"key_id must be a positive integer, not {key_id!r}")
    if not (math.isfinite(grace_hours) and 0 <= grace_hours <= MAX_GRACE_HOURS):
        raise InvalidArguments(
            f"grace_hours must be from 0 to {MAX_GRACE_HOURS:g}, not {grace_hours!r}"
        )
    if recipient is not None:
        public_key(recipient)


@handler("rotate_key", transactional=True, validate=_check)
def rotate_key(
    ctx: JobContext,
    key_id: int,
    grace_hours: float = DEFAULT_GRACE_HOURS,
    recipient: str | None = None,
) -> dict[str, Any]:
    """Issue a successor for an API key; the old key stays valid for a grace period."""
    if ctx.conn is None:
        raise RuntimeError("rotate_key must run in the job's transaction")
    started = time.perf_counter()
    try:
        result = _rotate(ctx.conn, key_id, grace_hours, recipient)
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


def _rotate(
    conn: Connection, key_id: int, grace_hours: float, recipient: str | None
) -> dict[str, Any]:
    key = conn.execute(_query("api_key_lock"), {"key_id": key_id}).fetchone()
    if key is None:
        raise _KeyUnusable(f"key {key_id} does not exist", "not_found")
    project_id, key_type, scopes, rate_limit, expires_at, expired = key

    successor = conn.execute(_query("api_key_successor"), {"key_id": key_id}).fetchone()
    if successor is not None:
        return _already_rotated(key_id, successor[0], successor[1], expires_at)
    if expired:
        raise _KeyUnusable(
            f"key {key_id} expired at {expires_at.isoformat()} and cannot be rotated",
            "expired",
        )

    new_expiry = _expire_after(conn, key_id, grace_hours)
    new_id, prefix, secret = create_key(
        conn,
        project_id,
        key_type=key_type,
        scopes=scopes,
        rate_limit=rate_limit,
        replaces_key_id=key_id,
    )
    result: dict[str, Any] = {
        "outcome": "rotated",
        "old_key_id": key_id,
        "new_key_id": new_id,
        "new_key_prefix": prefix,
        "old_key_expires_at": new_expiry.isoformat(),
        "grace_hours": grace_hours,
    }
    if recipient is not None:
        result["sealed_secret"] = seal(recipient, secret)
    return result


def _expire_after(conn: Connection, key_id: int, grace_hours: float) -> datetime:
    """Expire the old key after the grace period, never later than it already would."""
    params = {"key_id": key_id, "grace": grace_hours * 3600.0}
    row = conn.execute(_query("api_key_expire_after"), params).fetchone()
    if row is None:
        raise RuntimeError(f"key {key_id} vanished while locked")
    expiry: datetime = row[0]
    return expiry


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
