"""The rotate_key handler in the database's own transactions."""

from __future__ import annotations

import threading

import psycopg
import pytest

from handlers.rotate_key import rotate_key
from runner import InvalidArguments, JobContext, PermanentError
from tests.support import db


def rotate(database_url: str, key_id: int, **args: object) -> dict:
    with psycopg.connect(database_url) as conn:
        ctx = JobContext(
            job_id=0, task="rotate_key", attempt=1, max_attempts=1, conn=conn
        )
        result = rotate_key.run(ctx, {"key_id": key_id, **args})
        conn.commit()
    return result


def test_racing_rotations_issue_one_successor(conn, database_url):
    key_id = db.new_key(conn)
    # The first rotation holds the key's lock in an open transaction...
    holder = psycopg.connect(database_url)
    ctx = JobContext(
        job_id=0, task="rotate_key", attempt=1, max_attempts=1, conn=holder
    )
    first = rotate_key.run(ctx, {"key_id": key_id})
    results: list[dict] = []
    # ...while a second one waits for it.
    racer = threading.Thread(
        target=lambda: results.append(rotate(database_url, key_id))
    )
    racer.start()
    racer.join(0.5)
    assert racer.is_alive(), "the second rotation should wait for the key's lock"
    holder.commit()
    holder.close()
    racer.join(10)
    assert first["outcome"] == "rotated"
    assert results[0]["outcome"] == "already_rotated"
    assert results[0]["new_key_id"] == first["new_key_id"]
    assert len(db.successors(conn, key_id)) == 1


def test_a_rolled_back_rotation_leaves_the_key_untouched(conn, database_url):
    key_id = db.new_key(conn)
    before = db.api_key(conn, key_id)
    with psycopg.connect(database_url) as other:
        ctx = JobContext(
            job_id=0, task="rotate_key", attempt=1, max_attempts=1, conn=other
        )
        rotate_key.run(ctx, {"key_id": key_id})
        other.rollback()
    assert db.api_key(conn, key_id) == before
    assert db.successors(conn, key_id) == []


@pytest.mark.parametrize(
    "args",
    [
        {"key_id": 0},
        {"key_id": 1, "grace_hours": -1},
        {"key_id": 1, "grace_hours": 1e6},
        {"key_id": 1, "recipient": "not base64!"},
    ],
)
def test_bad_arguments_are_permanent_errors(database_url, conn, args):
    db.new_key(conn)
    with pytest.raises(InvalidArguments):
        rotate(database_url, **args)


def test_an_expired_key_is_refused(conn, database_url):
    key_id = db.new_key(conn, expires_in=-1)
    with pytest.raises(PermanentError, match="expired at"):
        rotate(database_url, key_id)
