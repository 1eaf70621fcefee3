"""The PostgreSQL server the benchmark runs on: its own, or DATABASE_URL when set.

Its own server runs the binaries that the `pgserver` package ships, as an
unprivileged user when we are root (PostgreSQL refuses to run as root), listening on
127.0.0.1 only, on a free port: every system measured connects over the same TCP
loopback, since some peers take only a TCP URL.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

SERVER_USER = "pgserver"

# Durability is off unless asked for: with fsync and synchronous commit on, every
# figure would measure this machine's disk flushes rather than the runner.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
COMMON_SETTINGS = {
    "max_connections": "100",
    "shared_buffers": "'256MB'",
    # A backlog of a million rows is built in one statement.
    "max_wal_size": "'4GB'",
    # Autovacuum's own transactions would count in the idle measurement (it visits
    # each database in turn), and its passes would land at random inside the timed
    # windows. The benchmark runs VACUUM ANALYZE itself where a measurement needs it.
    "autovacuum": "off",
}


def with_dbname(url: str, dbname: str) -> str:
    params: dict[str, Any] = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def as_uri(url: str) -> str:
    """The URL as postgresql://user@host:port/db, which every client here accepts
    (asyncpg and awa take no key=value connection strings)."""
    params: dict[str, Any] = conninfo_to_dict(url)
    user = quote(str(params.get("user", "postgres")), safe="")
    password = quote(str(params.get("password", "")), safe="")
    auth = f"{user}:{password}" if password else user
    host = params.get("host", "127.0.0.1")
    port = params.get("port", "5432")
    dbname = quote(str(params.get("dbname", "postgres")), safe="")
    return f"postgresql://{auth}@{host}:{port}/{dbname}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        # pgserver warns on import when XDG_RUNTIME_DIR is unset; it copes without.
        warnings.simplefilter("ignore")
        import pgserver

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


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


class OwnServer:
    """A throwaway PostgreSQL cluster in a temporary directory."""

    def __init__(self, *, durable: bool) -> None:
        self.bin = _bin_dir()
        self.user = _server_user()
        self.base = Path(tempfile.mkdtemp(prefix="runner-bench-pg-", dir="/tmp"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.log_path = self.base / "server.log"
        self.port = _free_port()
        self.data.mkdir()
        self.log_path.touch()
        if self.user:
            for path in (self.data, self.log_path):
                shutil.chown(path, self.user, self.user)
        self.durable = durable
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
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E=UTF8"
        )
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",
            **COMMON_SETTINGS,
            **({} if self.durable else FAST_SETTINGS),
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            for name, value in settings.items():
                conf.write(f"{name} = {value}\n")

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "start"
        )

    def url(self, dbname: str = "postgres") -> str:
        return make_conninfo(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname
        )

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class Server:
    """Where the benchmark creates its databases, and what it knows of the server."""

    admin_url: str
    description: str
    bin_dir: Path | None
    _created: list[str] = field(default_factory=list)

    def url(self, dbname: str) -> str:
        return as_uri(with_dbname(self.admin_url, dbname))

    def create_database(self, prefix: str, template: str | None = None) -> str:
        """A new empty database (or a copy of `template`); return its name."""
        name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("{} TEMPLATE {}").format(
                statement, sql.Identifier(template)
            )
        self._execute(statement)
        self._created.append(name)
        return name

    def drop_database(self, name: str) -> None:
        self._execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )
        if name in self._created:
            self._created.remove(name)

    def drop_all(self) -> None:
        for name in list(reversed(self._created)):
            self.drop_database(name)

    def settings(self, names: list[str]) -> dict[str, str]:
        """The server's version and the named settings, as it reports them."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT name, setting || coalesce(' ' || unit, '') FROM pg_settings"
                " WHERE name = ANY(%s) ORDER BY name",
                (["server_version", *names],),
            ).fetchall()
        return {str(name): str(value) for name, value in rows}

    def _execute(self, statement: sql.Composable) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)


@contextmanager
def server(*, durable: bool = False) -> Iterator[Server]:
    """DATABASE_URL's server when set, else a server of our own for this run."""
    url = os.environ.get("DATABASE_URL")
    if url:
        srv = Server(url, "the server at DATABASE_URL", _bin_dir_if_any())
        try:
            yield srv
        finally:
            srv.drop_all()
        return
    own = OwnServer(durable=durable)
    try:
        own.start()
        durability = "durable" if durable else "fsync and synchronous_commit off"
        srv = Server(
            own.url(),
            f"own server on 127.0.0.1:{own.port} ({durability})",
            own.bin,
        )
        yield srv
    finally:
        own.destroy()


def _bin_dir_if_any() -> Path | None:
    try:
        return _bin_dir()
    except ImportError:
        return None
