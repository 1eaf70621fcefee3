"""Settings of a runner process; the CLI fills them from options and the environment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Every duration is in seconds."""

    database_url: str
    listen_database_url: str | None = None
    """A direct connection for LISTEN, when `database_url` goes through a pooler."""
    queues: tuple[str, ...] = ()
    """Queues to take jobs from; empty means all."""
    poll_interval: float = 5.0
    """Look for work at least this often, notification or not."""
    job_timeout: float = 600.0
    """Interrupt a handler that runs longer, unless it sets its own timeout."""
    shutdown_grace: float = 25.0
    """On SIGTERM, let the current job run this long before interrupting it; under the
    30 s that platforms wait before SIGKILL."""
    retry_base_delay: float = 2.0
    retry_max_delay: float = 3600.0
    heartbeat_interval: float = 10.0
    stall_threshold: float = 60.0
    """A running job whose runner has not been seen for this long is put back."""
    rescue_interval: float = 30.0
    prune_interval: float = 3600.0
    retention: float = 7 * 24 * 3600.0
    """Finished jobs are deleted this long after they finished."""
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
