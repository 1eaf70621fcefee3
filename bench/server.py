"""The PostgreSQL server the benchmark runs on: its own, or DATABASE_URL when set.

Its own server is the test suite's `Cluster` (the binaries that the `pgserver`
package ships, run as an unprivileged user); every system measured connects to it
over the same TCP loopback, since some peers take only a TCP URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.support.cluster import Cluster

SERVER_USER = "pgserver"

# Durability is off unless asked for: with fsync and synchronous commit on, every
# figure would measure this machine's disk flushes rather than the runner.
DURABLE_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
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
        srv = Server(url, "the server at DATABASE_URL", Cluster.bin)
        try:
            yield srv
        finally:
            srv.drop_all()
        return
    own = Cluster({**COMMON_SETTINGS, **(DURABLE_SETTINGS if durable else {})})
    try:
        own.start()
        durability = "durable" if durable else "fsync and synchronous_commit off"
        srv = Server(
            own.url(tcp=True),
            f"own server on 127.0.0.1:{own.port} ({durability})",
            own.bin,
        )
        yield srv
    finally:
        own.destroy()
