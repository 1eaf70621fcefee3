"""Sealed secrets: encrypt a value to a recipient's public key, for its eyes only.

Whoever asks for a new secret (say `runner enqueue rotate_key --wait`) makes a
one-time X25519 key pair and sends only the public half with the job. The handler
seals the secret to it; the database stores nothing but the sealed form, which only
the waiting requester, holding the private half in memory, can open. Automatic
rotations seal to the operator's long-lived key pair instead (see runner.delivery).

Scheme: an ephemeral X25519 key agreement, HKDF-SHA256 over the shared secret bound
to both public keys, and ChaCha20-Poly1305.

The cryptography package is imported on first use: a runner process that never
seals a secret does not carry it (about 7 MB of resident memory).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from runner.errors import InvalidArguments, RunnerError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )

_INFO = b"runner sealed secret v1"
# ChaCha20-Poly1305 with a key used once: a zero nonce is safe.
_NONCE = bytes(12)


class Recipient:
    """A key pair, one-time or the operator's; `public` travels with the job."""

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        self._private = private or X25519PrivateKey.generate()
        self.public = _b64(_raw(self._private.public_key()))

    def export(self) -> str:
        """The private half as text, to keep until the sealed value arrives."""
        from cryptography.hazmat.primitives import serialization

        raw = self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return _b64(raw)

    @classmethod
    def load(cls, text: str) -> Recipient:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        try:
            return cls(X25519PrivateKey.from_private_bytes(_unb64(text.strip())))
        except ValueError as exc:
            raise RunnerError("the stored recipient key is damaged") from exc

    def open(self, sealed: dict[str, str]) -> str:
        """The plaintext sealed to this recipient."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        try:
            ephemeral = public_key(sealed["ephemeral"])
            ciphertext = _unb64(sealed["ciphertext"])
        except (KeyError, TypeError, ValueError, InvalidArguments) as exc:
            raise RunnerError("the sealed secret is malformed") from exc
        key = _derive(self._private.exchange(ephemeral), ephemeral, self.public)
        try:
            return ChaCha20Poly1305(key).decrypt(_NONCE, ciphertext, None).decode()
        except InvalidTag:
            raise RunnerError(
                "the sealed secret was not sealed to this recipient"
            ) from None


def public_key(text: str) -> X25519PublicKey:
    """The X25519 public key in base64 `text`; InvalidArguments if it is not one."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    try:
        return X25519PublicKey.from_public_bytes(_unb64(text))
    except (TypeError, ValueError) as exc:
        raise InvalidArguments(
            "recipient must be a base64 X25519 public key (32 bytes)"
        ) from exc


def seal(recipient_public: str, plaintext: str) -> dict[str, str]:
    """Seal `plaintext` to the base64 X25519 public key `recipient_public`."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    recipient = public_key(recipient_public)
    ephemeral = X25519PrivateKey.generate()
    key = _derive(
        ephemeral.exchange(recipient), ephemeral.public_key(), recipient_public
    )
    ciphertext = ChaCha20Poly1305(key).encrypt(_NONCE, plaintext.encode(), None)
    return {
        "ephemeral": _b64(_raw(ephemeral.public_key())),
        "ciphertext": _b64(ciphertext),
    }


def _derive(shared: bytes, ephemeral: X25519PublicKey, recipient_public: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    salt = _raw(ephemeral) + _unb64(recipient_public)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(
        shared
    )


def _raw(key: X25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64") from exc
