"""Webhook signing secrets: made, fingerprinted, and kept encrypted at rest.

A signing secret is shared with the receiver and used as an HMAC key, so unlike an
API key it cannot be stored as a hash. It is stored encrypted with
ChaCha20-Poly1305 under a key that only the runners and the `runner webhooks`
command hold (`RUNNER_WEBHOOK_KEY`, 32 random bytes in base64), never the
database: a dump, a backup or a replica of the database reveals no secret. The
encryption is bound to the webhook's id, project and URL, so a sealed secret copied
to another row, or a row pointed at another URL, no longer opens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from runner.errors import ConfigurationError, InvalidArguments, RunnerError

KEY_ENV = "RUNNER_WEBHOOK_KEY"
SECRET_PREFIX = "whsec_"
# 256 random bits; a secret given by the user must be at least as long in text.
SECRET_BYTES = 32
MIN_SECRET_LENGTH = 32
_NONCE_BYTES = 12
_CONTEXT = b"runner webhook secret v1"


def new_secret() -> str:
    """A fresh signing secret: `whsec_` and 43 URL-safe characters."""
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def new_key() -> str:
    """A fresh value for RUNNER_WEBHOOK_KEY."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def fingerprint(secret: str) -> str:
    """A short, safe-to-show name for a secret: 48 bits of its SHA-256."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def check_secret(secret: str) -> None:
    """Refuse a secret given by the user that is too short or not plain text."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise InvalidArguments(
            f"a signing secret must be at least {MIN_SECRET_LENGTH} characters"
        )
    if not (secret.isascii() and secret.isprintable()) or any(
        c.isspace() for c in secret
    ):
        raise InvalidArguments(
            "a signing secret must be printable ASCII without spaces"
        )


# TODO: secrets cannot be re-sealed under a new RUNNER_WEBHOOK_KEY; replacing a
# leaked key means removing and adding every webhook again, with new secrets.
class SecretBox:
    """Seals and opens signing secrets with the key from RUNNER_WEBHOOK_KEY."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)

    @classmethod
    def from_env(cls) -> SecretBox:
        text = os.environ.get(KEY_ENV, "").strip()
        if not text:
            raise ConfigurationError(
                f"{KEY_ENV} is not set: webhook secrets are stored encrypted under "
                "it; make one with `runner webhooks new-key`"
            )
        return cls(_decode_key(text))

    def seal(self, secret: str, webhook: bytes) -> bytes:
        """The secret encrypted for the webhook named by `context(...)`."""
        # A random 96-bit nonce per secret: far below the 2^32 encryptions one key
        # may make before nonces risk repeating.
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret.encode(), webhook)

    def open(self, sealed: bytes, webhook: bytes) -> str:
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, ciphertext, webhook).decode()
        except InvalidTag:
            raise RunnerError(
                f"the webhook's secret does not open with {KEY_ENV}: the key differs "
                "from the one it was stored with, or the webhook's row was altered"
            ) from None


def context(webhook_id: int, project_id: int, url: str) -> bytes:
    """What a sealed secret is bound to."""
    return b"\n".join(
        [_CONTEXT, str(webhook_id).encode(), str(project_id).encode(), url.encode()]
    )


def _decode_key(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(
            padded.replace("-", "+").replace("_", "/"), validate=True
        )
    except binascii.Error:
        key = b""
    if len(key) != 32:
        raise ConfigurationError(f"{KEY_ENV} must be 32 bytes in base64")
    return key
