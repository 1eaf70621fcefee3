"""The embedded PostgreSQL used when no database URL is given.

The `pgserver` package ships the server binaries. Its data directory is kept under
the user's data folder (or `RUNNER_DATA_DIR`); the server is started on first use,
shared by every runner command on the machine through a unix socket, and stopped
when the last of them exits.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from runner import store
from runner.errors import ConfigurationError

logger = logging.getLogger(__name__)

# Keeps the server handle alive as long as the process: dropping it stops the server.
_servers: dict[Path, Any] = {}


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "runner" / "pgdata"


def resolve_database_url(url: str | None, data_dir: Path | None = None) -> str:
    """The URL given, else DATABASE_URL, else the embedded server's (migrated)."""
    url = url or os.environ.get("DATABASE_URL")
    if url:
        return url
    return start(data_dir or default_data_dir())


def start(data_dir: Path) -> str:
    """Start (or join) the embedded server in `data_dir`, migrate it, return its URL."""
    try:
        # pgserver warns on import when XDG_RUNTIME_DIR is unset; it copes without.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import get_server
    except ImportError:
        raise ConfigurationError(
            "no database: set DATABASE_URL, or install the embedded server "
            "with: pip install 'runner[embedded]'"
        ) from None
    data_dir = data_dir.resolve()
    server = _servers.get(data_dir)
    if server is None:
        # pgserver reports each step of its start at INFO.
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot make the embedded PostgreSQL's folder {data_dir}: "
                f"{exc.strerror}"
            ) from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server = get_server(data_dir, cleanup_mode="stop")
        except Exception as exc:
            raise ConfigurationError(
                f"cannot start the embedded PostgreSQL in {data_dir}: {exc}"
            ) from exc
        _servers[data_dir] = server
    url: str = server.get_uri()
    with store.connect(url) as conn:
        store.migrate(conn)
    return url
