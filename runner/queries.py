"""Named queries, loaded once from `.sql` files shipped inside packages.

Each block starts with a `-- name: <entity>_<verb>` line and runs to the next one.
The texts are constants of the packages, never built from input, so they are typed
as `LiteralString` for psycopg (mypy reads that as `str`).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString

_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split a file of named blocks into a name -> query mapping."""
    parts = _NAME_LINE.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    return {
        name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def _sql_text(package: str, filename: str) -> str:
    return resources.files(package).joinpath("sql", filename).read_text("utf-8")


@cache
def _named(package: str, filename: str) -> dict[str, str]:
    return parse(_sql_text(package, filename))


def query(
    name: str, *, package: str = "runner", filename: str = "queries.sql"
) -> LiteralString:
    """The query `name` of `<package>/sql/<filename>`; KeyError if it has none."""
    return _named(package, filename)[name]


def schema() -> LiteralString:
    """The full, idempotent schema script."""
    return _sql_text("runner", "schema.sql")
