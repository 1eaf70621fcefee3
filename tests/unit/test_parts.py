from __future__ import annotations

import os
import stat

import click
import pytest

from handlers.rotate_key import hash_secret, new_secret
from runner import queries
from runner.cli import _parse_value, _task_options
from runner.delivery import create_key_file, read_key_file
from runner.errors import InvalidArguments, RunnerError
from runner.sealing import Recipient, seal
from runner.store import describe


def test_named_queries_split_on_their_name_lines():
    text = (
        "-- preamble\n-- name: a_one\nSELECT 1;\n\n-- name: b_two\n-- why\nSELECT 2;\n"
    )
    assert queries.parse(text) == {"a_one": "SELECT 1;", "b_two": "-- why\nSELECT 2;"}


def test_every_runtime_query_is_named_entity_first():
    for name in ("job_claim", "job_succeed", "job_rescue_stalled", "worker_heartbeat"):
        assert queries.query(name).strip()
    with pytest.raises(KeyError):
        queries.query("no_such_query")


def test_task_options_become_arguments():
    assert _task_options(["--key-id", "123", "--grace-hours=0.5", "--dry-run"]) == {
        "key_id": 123,
        "grace_hours": 0.5,
        "dry_run": True,
    }
    assert _parse_value("text") == "text"
    assert _parse_value('{"a": [1]}') == {"a": [1]}
    with pytest.raises(click.UsageError):
        _task_options(["stray"])


def test_a_sealed_secret_opens_only_for_its_recipient():
    recipient, stranger = Recipient(), Recipient()
    sealed = seal(recipient.public, "rk_secret")
    assert "rk_secret" not in str(sealed)
    assert recipient.open(sealed) == "rk_secret"
    with pytest.raises(RunnerError, match="not sealed to this recipient"):
        stranger.open(sealed)
    with pytest.raises(InvalidArguments, match="X25519"):
        seal("not a key", "x")


def test_a_key_file_is_0600_whatever_the_umask_and_reads_back(tmp_path):
    path = tmp_path / "ops.key"
    previous = os.umask(0o277)
    try:
        recipient = create_key_file(path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path).public == recipient.public


def test_a_key_file_that_is_no_key_is_refused(tmp_path):
    for name, content in (("binary", b"\xff\xfe\x00"), ("large", b"A" * 10_000)):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(RunnerError, match="holds no recipient key"):
            read_key_file(path)


def test_new_secrets_are_random_and_only_their_hash_is_kept():
    secret, prefix, key_hash = new_secret()
    other, _, _ = new_secret()
    assert secret != other
    assert secret.startswith(prefix) and prefix.startswith("rk_")
    assert key_hash == hash_secret(secret) and secret not in key_hash
    assert len(secret) == 3 + 43


def test_database_descriptions_never_show_the_password():
    text = describe("postgresql://app:hunter2@db.internal:6543/jobs")
    assert "hunter2" not in text
    assert text == "database jobs on db.internal:6543 as app"
