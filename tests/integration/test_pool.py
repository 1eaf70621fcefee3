"""The request threads' connection pool on a real PostgreSQL: bounded, time-boxed."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from runner.errors import DatabaseError, DatabaseUnavailable
from runner.pool import Pool
from tests.support import db
from tests.support.processes import wait_until

NAME = "runner api test"


def lock_job(conn) -> object:
    """Work that waits for the job row that the test holds locked."""
    return conn.execute("SELECT id FROM runner.jobs FOR UPDATE").fetchall()


@contextmanager
def job_locked(database_url: str) -> Iterator[None]:
    db_conn = psycopg.connect(database_url)
    db.insert_job(db_conn, "echo")
    db_conn.commit()
    db_conn.execute("SELECT id FROM runner.jobs FOR UPDATE")
    try:
        yield
    finally:
        db_conn.rollback()
        db_conn.close()


def connections(conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (NAME,)
    ).fetchone()
    return int(row[0])


def waiting(conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = %s AND wait_event_type = 'Lock'",
        (NAME,),
    ).fetchone()
    return int(row[0])


def in_background(pool: Pool, work) -> list[object]:
    outcomes: list[object] = []

    def run() -> None:
        try:
            outcomes.append(pool.run(work))
        except Exception as exc:
            outcomes.append(exc)

    threading.Thread(target=run, daemon=True).start()
    return outcomes


def test_a_unit_runs_in_a_transaction_and_its_connection_is_kept(conn, database_url):
    pool = Pool(database_url, application_name=NAME)
    try:
        first = pool.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone())
        second = pool.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone())
        assert first == second
        with pytest.raises(ZeroDivisionError):
            pool.run(lambda c: (db.insert_job(c, "echo"), 1 / 0))
        assert conn.execute("SELECT count(*) FROM runner.jobs").fetchone() == (0,)
        assert pool.run(lambda c: None) is None
    finally:
        pool.close()


def test_no_more_connections_than_slots_however_many_requests_wait(conn, database_url):
    # The statement timeout is long: the units wait until the test lets them go.
    pool = Pool(
        database_url,
        size=2,
        budget=0.5,
        statement_timeout=60,
        application_name=NAME,
    )
    with job_locked(database_url):
        stuck = [in_background(pool, lock_job) for _ in range(2)]
        wait_until(lambda: waiting(conn) == 2, message="two units to wait")

        # No slot frees up within the budget: turned away, nothing opened.
        for _ in range(3):
            with pytest.raises(DatabaseUnavailable, match="stayed busy"):
                pool.run(lambda c: 1)
        assert connections(conn) == 2
        # The stuck ones gave up waiting; their units still hold the slots.
        wait_until(lambda: all(stuck), message="the waiting requests to give up")
        assert all(isinstance(s[0], DatabaseUnavailable) for s in stuck)

    # Once the database answers, the units end and free their slots.
    wait_until(lambda: waiting(conn) == 0, message="the units to end")
    assert wait_until(lambda: _try(pool), message="a slot to free up") == 1
    assert connections(conn) <= 2
    pool.close()


def _try(pool: Pool) -> object:
    try:
        return pool.run(lambda c: 1)
    except DatabaseUnavailable:
        return None


def test_a_slow_statement_is_cut_off_by_the_statement_timeout(database_url):
    pool = Pool(database_url, statement_timeout=0.1, application_name=NAME)
    try:
        with pytest.raises(DatabaseError, match="statement timeout"):
            pool.run(lambda c: c.execute("SELECT pg_sleep(30)"))
        assert pool.run(lambda c: c.execute("SELECT 1").fetchone()) == (1,)
    finally:
        pool.close()


def test_a_database_that_never_answers_does_not_hang_the_request():
    # It accepts connections (the kernel does), and never says a word.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        pool = Pool(f"postgresql://nobody@127.0.0.1:{port}/none", budget=0.3)
        with pytest.raises(DatabaseUnavailable, match="did not answer within"):
            pool.run(lambda c: 1)


def test_a_kept_connection_that_died_is_replaced(conn, database_url):
    pool = Pool(database_url, application_name=NAME)
    try:
        before = pool.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone())
        conn.execute("SELECT pg_terminate_backend(%s)", before)
        after = pool.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone())
        assert after != before
    finally:
        pool.close()
