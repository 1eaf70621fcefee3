"""A PostgreSQL server of our own, fully controlled: stop it, restart it, read its log.

The fault tests and the benchmark run on it. It runs the server binaries that the
`pgserver` package ships, as an unprivileged user (PostgreSQL refuses to run as
root), listening on a unix socket and on a free port of 127.0.0.1 (for a pooler in
front of it, and for clients that take only TCP).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path

from psycopg.conninfo import make_conninfo

with warnings.catch_warnings():
    # pgserver warns on import when XDG_RUNTIME_DIR is unset; it copes without.
    warnings.simplefilter("ignore")
    from pgserver._commands import POSTGRES_BIN_PATH

SERVER_USER = "pgserver"
# Settings of every cluster: durability is not under test, speed is welcome.
DEFAULT_SETTINGS = {
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "log_lock_waits": "on",
    "deadlock_timeout": "200ms",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> str | None:
    """The user to run the server as: SERVER_USER when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", SERVER_USER], check=True
        )
    return SERVER_USER


class Cluster:
    """A throwaway cluster in a temporary directory; `settings` are added to, or
    override, DEFAULT_SETTINGS."""

    bin = POSTGRES_BIN_PATH

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.user = _server_user()
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        # A directory the server's user can reach, whatever the caller's tmp is.
        self.base = Path(tempfile.mkdtemp(prefix="runner-cluster-", dir="/tmp"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.socket_dir = self.base / "socket"
        self.log_path = self.base / "server.log"
        self.port = free_port()
        for path in (self.data, self.socket_dir):
            path.mkdir()
        self.log_path.touch()
        if self.user:
            for path in (self.data, self.socket_dir, self.log_path):
                shutil.chown(path, self.user, self.user)
        self._initdb()

    def _run(self, program: str, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            [str(self.bin / program), *args],
            check=True,
            capture_output=True,
            user=self.user,
            timeout=timeout,
            cwd=self.base,
        )

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            **self.settings,
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            for name, value in settings.items():
                conf.write(f"{name} = {value}\n")

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, dbname: str = "postgres", *, tcp: bool = False) -> str:
        host = "127.0.0.1" if tcp else str(self.socket_dir)
        return make_conninfo(host=host, port=self.port, user="postgres", dbname=dbname)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def destroy(self) -> None:
        if self.is_running():
            try:
                self.stop("immediate")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)
