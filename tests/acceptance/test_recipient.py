"""The operator's key pair receives the new secrets of automatic rotations: made by
`runner recipient new`, configured on `runner run`, read by `runner secret
--recipient-file`, all as real processes."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from handlers.rotate_key import hash_secret
from runner.sealing import Recipient
from tests.support import db
from tests.support.processes import run_cli, wait_until

SHOWN = re.compile(r"new secret of key (\d+) \(shown once, store it now\): (\S+)")


def new_key_file(env: dict[str, str], path: Path) -> str:
    """Make a key pair with the CLI; return its public half."""
    made = run_cli(env, "recipient", "new", str(path))
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def assert_one_line_error(done, message: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith(f"error: {message}"), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr


def test_a_new_key_file_is_private_and_never_overwritten(env, tmp_path):
    key_file = tmp_path / "ops.key"
    public = new_key_file(env, key_file)

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert Recipient.load(key_file.read_text()).public == public
    written = key_file.read_text()

    again = run_cli(env, "recipient", "new", str(key_file))
    assert_one_line_error(again, f"{key_file} exists already: not replaced")
    assert again.stdout == ""
    assert key_file.read_text() == written

    nowhere = run_cli(env, "recipient", "new", str(tmp_path / "no" / "ops.key"))
    assert_one_line_error(nowhere, "cannot create")


def test_a_scheduled_rotation_opens_with_the_operators_key_file(
    conn, env, start_runner, tmp_path
):
    key_file = tmp_path / "ops.key"
    public = new_key_file(env, key_file)
    old = db.new_key(conn)
    conn.execute(
        "UPDATE control_plane.api_keys SET created_at = now() - interval '2 hours'"
        " WHERE id = %s",
        (old,),
    )
    runner = start_runner(
        RUNNER_ROTATE_KEYS_OLDER_THAN="1",
        RUNNER_ROTATE_KEYS_INTERVAL="0.5",
        RUNNER_ROTATE_KEYS_RECIPIENT=public,
    )

    ((job_id,),) = wait_until(
        lambda: conn.execute(
            "SELECT id FROM runner.jobs"
            " WHERE task = 'rotate_key' AND state = 'succeeded'"
        ).fetchall(),
        message="the scheduled rotation",
    )
    assert db.job(conn, job_id)["args"]["recipient"] == public
    shown = run_cli(env, "secret", str(job_id), "--recipient-file", str(key_file))
    assert shown.returncode == 0, shown.stderr
    found = SHOWN.fullmatch(shown.stdout.strip())
    assert found is not None, shown.stdout
    (new,) = db.successors(conn, old)
    assert int(found[1]) == new["id"]
    secret = found[2]
    assert hash_secret(secret) == new["key_hash"]

    # Shown once: the sealed copy is wiped; the key file stays for the next ones.
    assert "sealed_secret" not in db.job(conn, job_id)["result"]
    again = run_cli(env, "secret", str(job_id), "--recipient-file", str(key_file))
    assert_one_line_error(again, f"job {job_id} holds no secret")
    assert Recipient.load(key_file.read_text()).public == public

    dump = conn.execute(
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM runner.jobs) t"
    ).fetchone()
    for text in (str(dump), runner.log(), shown.stderr, again.stderr):
        assert secret not in text


def test_opening_with_a_key_file_fails_in_one_line(conn, env, start_runner, tmp_path):
    mine, theirs = tmp_path / "mine.key", tmp_path / "theirs.key"
    new_key_file(env, mine)
    their_public = new_key_file(env, theirs)
    key_id = db.new_key(conn)
    sealed_to_them = db.insert_job(
        conn, "rotate_key", {"key_id": key_id, "recipient": their_public}
    )
    unsealed = db.insert_job(conn, "rotate_key", {"key_id": db.new_key(conn)})
    start_runner()
    wait_until(
        lambda: (
            {db.job_state(conn, j) for j in (sealed_to_them, unsealed)} == {"succeeded"}
        ),
        message="the rotations",
    )
    damaged = tmp_path / "damaged.key"
    damaged.write_text("not a key\n")

    def secret(job_id: int, key_file: Path):
        return run_cli(env, "secret", str(job_id), "--recipient-file", str(key_file))

    missing = tmp_path / "missing.key"
    assert_one_line_error(
        secret(sealed_to_them, missing), f"no recipient key file {missing}"
    )
    assert_one_line_error(
        secret(sealed_to_them, damaged), f"{damaged} holds no recipient key"
    )
    assert_one_line_error(secret(unsealed, mine), f"job {unsealed} holds no secret")
    assert_one_line_error(
        secret(sealed_to_them, mine),
        f"job {sealed_to_them}'s secret is sealed to another key than {mine}'s",
    )

    # None of that wiped the sealed copy: its recipient still opens it.
    opened = secret(sealed_to_them, theirs)
    assert opened.returncode == 0, opened.stderr
    found = SHOWN.fullmatch(opened.stdout.strip())
    assert found is not None, opened.stdout
    (new,) = db.successors(conn, key_id)
    assert hash_secret(found[2]) == new["key_hash"]


def test_the_rotation_without_a_recipient_runs_only_when_told_and_warns(
    env, start_runner
):
    runner = start_runner(
        RUNNER_ROTATE_KEYS_OLDER_THAN="24", RUNNER_ROTATE_KEYS_RECIPIENT="none"
    )
    assert (
        "automatic key rotation seals the new secrets to nobody "
        "(--rotate-keys-recipient none): the holders of rotated keys lose access"
    ) in runner.log()
