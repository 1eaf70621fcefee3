"""The automatic rotation of old API keys (the rotator sweep), on a real PostgreSQL."""

from __future__ import annotations

import base64
import uuid

import pytest

from runner import queries, scheduler, store
from runner.config import NO_RECIPIENT, Settings
from runner.errors import ConfigurationError
from runner.scheduler import MaintenanceScheduler
from runner.sealing import Recipient
from tests.support import db


def old_key(conn, hours: float, **fields) -> int:
    """A key created `hours` ago."""
    key_id = db.new_key(conn, **fields)
    conn.execute(
        "UPDATE control_plane.api_keys"
        " SET created_at = now() - make_interval(secs => %s) WHERE id = %s",
        (hours * 3600.0, key_id),
    )
    return key_id


def rotator(
    database_url: str, older_than: float = 24, recipient: str = NO_RECIPIENT
) -> MaintenanceScheduler:
    settings = Settings(
        database_url=database_url,
        rotate_keys_older_than=older_than,
        rotate_keys_recipient=recipient,
    )
    return MaintenanceScheduler(settings, store.WorkerStore(uuid.uuid4()), str)


def rotations(conn) -> dict[int, dict]:
    """The queued rotate_key jobs, by key id."""
    rows = conn.execute(
        "SELECT args, unique_key FROM runner.jobs"
        " WHERE task = 'rotate_key' AND state = 'queued'"
    ).fetchall()
    return {args["key_id"]: {**args, "unique_key": key} for args, key in rows}


def test_old_keys_that_are_live_and_not_rotated_get_a_rotation(conn, database_url):
    due = old_key(conn, 48)
    due_with_expiry = old_key(conn, 30, expires_in=3600)
    old_key(conn, 23)
    old_key(conn, 48, expires_in=-1)
    # Rotated: in its grace period, or (set by hand) without an expiry.
    for rotated in (old_key(conn, 48, expires_in=3600), old_key(conn, 48)):
        db.new_key(conn, replaces_key_id=rotated)

    rotator(database_url).rotate_keys(conn)

    found = rotations(conn)
    assert set(found) == {due, due_with_expiry}
    assert found[due] == {
        "key_id": due,
        "requested_by": "schedule",
        "unique_key": f"rotate_key:{due}",
    }


def test_each_rotation_seals_its_secret_to_the_configured_recipient(conn, database_url):
    public = Recipient().public
    key_id = old_key(conn, 48)

    rotator(database_url, recipient=public).rotate_keys(conn)

    assert rotations(conn)[key_id]["recipient"] == public


def test_a_key_gets_one_rotation_however_often_it_is_swept(conn, database_url):
    key_id = old_key(conn, 48)
    queued = store.insert_unique_job(
        conn, "rotate_key", {"key_id": key_id}, store.rotation_key(key_id)
    )

    sweeps = rotator(database_url)
    sweeps.rotate_keys(conn)
    sweeps.rotate_keys(conn)

    assert conn.execute("SELECT id FROM runner.jobs").fetchall() == [(queued.id,)]


def test_a_pass_enqueues_a_bounded_batch_oldest_first(conn, database_url, monkeypatch):
    monkeypatch.setattr(scheduler, "ROTATE_BATCH", 3)
    keys = [old_key(conn, 100 - n) for n in range(5)]
    sweeps = rotator(database_url)

    sweeps.rotate_keys(conn)
    assert set(rotations(conn)) == set(keys[:3])
    sweeps.rotate_keys(conn)
    assert set(rotations(conn)) == set(keys)


def test_the_sweep_runs_once_per_interval_across_runners(conn, database_url):
    old_key(conn, 48)
    first, second = rotator(database_url), rotator(database_url)
    try:
        for sweeps in (first, second):
            sweeps._sweep("rotator", 3600, sweeps.rotate_keys, atomic=True)()
    finally:
        # Each closes the connection its sweep opened on this thread.
        first._drop_connection()
        second._drop_connection()

    assert len(rotations(conn)) == 1
    row = conn.execute(
        "SELECT last_succeeded_at IS NOT NULL FROM runner.sweeps WHERE name = 'rotator'"
    ).fetchone()
    assert row == (True,)


def test_the_sweep_reads_index_ranges_on_a_large_table(conn):
    # Many keys rotated long ago, expired and superseded: they must not be read.
    conn.execute(
        "INSERT INTO control_plane.api_keys"
        " (project_id, key_prefix, key_hash, created_at, expires_at)"
        " SELECT 1, 'rk_old', md5(n::text), now() - interval '400 days',"
        "        now() - interval '300 days'"
        " FROM generate_series(1, 20000) AS n"
    )
    for _ in range(10):
        old_key(conn, 48)
    conn.execute("ANALYZE control_plane.api_keys")
    params = {
        "age": 86400.0,
        "batch": scheduler.ROTATE_BATCH,
        "requested_by": "schedule",
        "recipient": Recipient().public,
        "unique_prefix": store.ROTATION_KEY_PREFIX,
    }
    plan = "\n".join(
        row[0]
        for row in conn.execute(
            "EXPLAIN " + queries.query("job_insert_due_rotations"), params
        )
    )
    assert "Seq Scan on api_keys" not in plan, plan
    assert "api_keys_unexpiring_created_idx" in plan, plan
    assert "api_keys_expires_at_idx" in plan, plan


def test_automatic_rotation_is_off_unless_configured(database_url):
    sweeps = MaintenanceScheduler(
        Settings(database_url=database_url), store.WorkerStore(uuid.uuid4()), str
    )
    sweeps.start()
    try:
        names = {job.name for job in sweeps._scheduler.get_jobs()}
    finally:
        sweeps.shutdown()
    assert "rotator" not in names


@pytest.mark.parametrize("interval", [0, -1])
def test_a_rotation_interval_must_be_positive(interval):
    with pytest.raises(ConfigurationError, match="--rotate-keys-interval"):
        Settings(database_url="x", rotate_keys_interval=interval)


def test_the_rotation_needs_a_recipient_or_an_explicit_none():
    with pytest.raises(ConfigurationError, match="needs --rotate-keys-recipient"):
        Settings(database_url="x", rotate_keys_older_than=24)
    unsealed = Settings(
        database_url="x", rotate_keys_older_than=24, rotate_keys_recipient="none"
    )
    assert unsealed.rotation_recipient is None
    public = Recipient().public
    sealed = Settings(database_url="x", rotate_keys_recipient=public)
    assert sealed.rotation_recipient == public


@pytest.mark.parametrize(
    "value",
    [
        "not a key",
        "AAAA",
        Recipient().export()[:-4],
        base64.b64encode(bytes(32)).decode(),
    ],
)
def test_a_recipient_that_is_no_public_key_is_refused(value):
    with pytest.raises(ConfigurationError, match="must be a base64 X25519") as refused:
        Settings(database_url="x", rotate_keys_recipient=value)
    assert value not in str(refused.value)
