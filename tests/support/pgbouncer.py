"""PgBouncer in front of a test cluster, in transaction or session pooling mode.

It runs Debian's `pgbouncer` (`apt-get install pgbouncer`) as the cluster's
unprivileged user, since PgBouncer refuses to run as root, listening on a free port
of 127.0.0.1 and passing every database name through to the cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import BinaryIO

import psycopg
from psycopg.conninfo import make_conninfo

from tests.support.cluster import Cluster, free_port
from tests.support.processes import terminate, wait_until

# The role every test connects as; the cluster trusts it without a password.
USER = "postgres"


def executable() -> str:
    path = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(path).exists():
        raise RuntimeError("pgbouncer is not installed: apt-get install pgbouncer")
    return path


class PgBouncer:
    """One PgBouncer process; `start` it, connect through `url`, then `stop` it."""

    def __init__(self, cluster: Cluster, pool_mode: str = "transaction") -> None:
        self.cluster = cluster
        self.pool_mode = pool_mode
        self.port = free_port()
        # Files the server's user must read: the directory and all in it are 0o755.
        self.base = Path(tempfile.mkdtemp(prefix="runner-pgbouncer-", dir="/tmp"))
        self.base.chmod(0o755)
        self.config_path = self.base / "pgbouncer.ini"
        self.auth_path = self.base / "userlist.txt"
        self.log_path = self.base / "pgbouncer.log"
        self._log: BinaryIO | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_files()

    def _write_files(self) -> None:
        backend = f"host=127.0.0.1 port={self.cluster.port}"
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            # No unix socket: the default directory is not ours to write.
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.auth_path),
            "pool_mode": self.pool_mode,
            # Enough server connections for a few runners and the test itself.
            "default_pool_size": "20",
            "max_client_conn": "200",
        }
        lines = ["[databases]", f"* = {backend}", "", "[pgbouncer]"]
        lines += [f"{name} = {value}" for name, value in settings.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        # With auth_type trust, PgBouncer still wants the user listed.
        self.auth_path.write_text(f'"{USER}" ""\n')
        for path in (self.config_path, self.auth_path):
            path.chmod(0o644)

    def url(self, dbname: str) -> str:
        return make_conninfo(host="127.0.0.1", port=self.port, user=USER, dbname=dbname)

    def start(self, timeout: float = 30) -> PgBouncer:
        """Start PgBouncer in the foreground; return once it accepts connections."""
        log = self.log_path.open("ab")
        self._log = log
        self._proc = subprocess.Popen(
            [executable(), str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self.cluster.user,
            cwd=self.base,
        )
        wait_until(self._accepts, timeout, f"PgBouncer on port {self.port}")
        return self

    def _accepts(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise AssertionError(f"pgbouncer exited early:\n{self.log()}")
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop PgBouncer at once and remove its files."""
        if self._proc is not None:
            terminate(self._proc, 10)
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.base, ignore_errors=True)
