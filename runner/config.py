"""Settings of a runner process; the CLI fills them from options and the environment."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field, fields

from runner.errors import ConfigurationError, InvalidArguments
from runner.sealing import seal

# A bearer token must be hard to guess and fit an HTTP header as it is.
MIN_TOKEN_LENGTH = 32
_TOKEN_CHARACTERS = frozenset(string.ascii_letters + string.digits + string.punctuation)
# The `rotate_keys_recipient` that lets the rotator issue secrets nobody receives:
# said out loud, because their old keys' holders lose access when the grace ends.
NO_RECIPIENT = "none"


@dataclass(frozen=True)
class Settings:
    """Every duration is in seconds."""

    database_url: str
    listen_database_url: str | None = None
    """A direct connection for LISTEN, when `database_url` goes through a pooler."""
    queues: tuple[str, ...] = ()
    """Queues to take jobs from; empty means all."""
    poll_interval: float = 10.0
    """Look for work at least this often, notification or not."""
    job_timeout: float = 600.0
    """Interrupt a handler that runs longer, unless it sets its own timeout."""
    shutdown_grace: float = 25.0
    """On SIGTERM, let the current job run this long before interrupting it; under the
    30 s that platforms wait before SIGKILL."""
    retry_base_delay: float = 2.0
    retry_max_delay: float = 3600.0
    heartbeat_interval: float = 15.0
    stall_threshold: float = 60.0
    """A running job whose runner has not been seen for this long is put back."""
    rescue_interval: float = 30.0
    prune_interval: float = 3600.0
    retention: float = 7 * 24 * 3600.0
    """Succeeded jobs are deleted this long after they finished."""
    failed_retention: float = 30 * 24 * 3600.0
    """Failed and cancelled jobs are deleted this long after they finished: longer by
    default, so that they stay visible until someone has looked at them."""
    batch_size: int = 100
    """Claim at most this many jobs per round trip; they still run one at a time.
    1 claims each job only when the one before it has finished."""
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    api_token: str | None = field(default=None, repr=False)
    """The bearer token of the HTTP API; None turns the API off."""
    rotate_keys_older_than: float = 0.0
    """Hours: enqueue a rotation of every API key older than this; 0 turns it off."""
    rotate_keys_interval: float = 3600.0
    rotate_keys_recipient: str | None = None
    """The base64 X25519 public key the rotator seals every new secret to, or
    NO_RECIPIENT; required while the rotation is on."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not (math.isfinite(value) and value >= 0):
                raise ConfigurationError(
                    f"{_option(f.name)} must be a finite number >= 0"
                )
        for name in (
            "poll_interval",
            "job_timeout",
            "heartbeat_interval",
            "rescue_interval",
            "prune_interval",
            "rotate_keys_interval",
        ):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{_option(name)} must be more than 0")
        if self.batch_size < 1:
            raise ConfigurationError(f"{_option('batch_size')} must be at least 1")
        if self.stall_threshold < 2 * self.heartbeat_interval:
            # Any less, and a heartbeat a little late makes a live runner look dead.
            raise ConfigurationError(
                f"{_option('stall_threshold')} must be at least twice "
                f"{_option('heartbeat_interval')} ({self.heartbeat_interval:g} s)"
            )
        if self.api_token is not None:
            _check_token(self.api_token)
        if self.retry_max_delay < self.retry_base_delay:
            raise ConfigurationError(
                f"{_option('retry_max_delay')} must not be less than "
                f"{_option('retry_base_delay')}"
            )
        self._check_rotation_recipient()

    @property
    def rotation_recipient(self) -> str | None:
        """The public key the rotator seals new secrets to; None: nobody."""
        if self.rotate_keys_recipient == NO_RECIPIENT:
            return None
        return self.rotate_keys_recipient

    def _check_rotation_recipient(self) -> None:
        recipient = self.rotate_keys_recipient
        if recipient is None:
            if self.rotate_keys_older_than > 0:
                raise ConfigurationError(
                    "automatic key rotation needs "
                    f"{_option('rotate_keys_recipient')}: the public key that "
                    "`runner recipient new FILE` prints, to seal the new secrets "
                    f"to, or `{NO_RECIPIENT}` to let nobody receive them"
                )
            return
        if recipient == NO_RECIPIENT:
            return
        try:
            # A point of small order (32 zero bytes, say) parses, but no key
            # agreement with it works: every rotation would fail to seal.
            seal(recipient, "")
        except (InvalidArguments, ValueError):
            # The message never quotes the value: it may be a private key pasted
            # by mistake.
            raise ConfigurationError(
                f"{_option('rotate_keys_recipient')} must be a base64 X25519 "
                "public key, as `runner recipient new FILE` prints, or "
                f"`{NO_RECIPIENT}`"
            ) from None


def _check_token(token: str) -> None:
    # The message never quotes the token.
    if len(token) < MIN_TOKEN_LENGTH or not set(token) <= _TOKEN_CHARACTERS:
        raise ConfigurationError(
            f"{_option('api_token')} must be at least {MIN_TOKEN_LENGTH} printable "
            "ASCII characters, without spaces"
        )


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")
