"""A PostgreSQL server for the test suite: DATABASE_URL when set, else an embedded one.

The suite builds a template database with the schema once; every test gets a fresh
database copied from it.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runner import store


def with_dbname(url: str, dbname: str) -> str:
    params: dict[str, Any] = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


@contextmanager
def server(data_dir: Path, url: str | None) -> Iterator[str]:
    """Yield an admin URL: `url` as given, or an embedded server's in `data_dir`."""
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

        pg = get_server(data_dir, cleanup_mode="delete")
    try:
        yield pg.get_uri()
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pg.cleanup()


class Databases:
    """Creates the template once, then one database per test from it."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.template = f"runner_template_{uuid.uuid4().hex[:8]}"
        self._execute(
            sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template))
        )
        with store.connect(with_dbname(admin_url, self.template)) as conn:
            store.migrate(conn)
            # The table where tests.support.tasks.record leaves its effects.
            conn.execute("CREATE TABLE test_effects (job_id bigint, label text)")

    def create(self) -> str:
        name = f"runner_test_{uuid.uuid4().hex[:12]}"
        self._execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(self.template)
            )
        )
        return name

    def drop(self, name: str) -> None:
        self._execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )

    def close(self) -> None:
        self.drop(self.template)

    def _execute(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)
