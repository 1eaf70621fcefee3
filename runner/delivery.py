"""Delivering a new secret to whoever asked for it, once.

The requester makes a one-time `Recipient` and sends its public half with the job
(the `recipient` argument); the handler stores only the secret sealed to it. The
private half stays with the requester: in memory while `runner enqueue --wait`
waits, else in a file of the requester's own inbox (mode 0600), from which
`runner secret JOB_ID` opens the secret later. Opening wipes the sealed copy from
the job and deletes the key file, so a secret is shown once.

Automatic rotations have no requester: they seal their secrets to a long-lived key
pair of the operator's, whose private half `runner recipient new FILE` writes to a
key file (mode 0600) and `runner secret JOB_ID --recipient-file FILE` reads. Opening
wipes the sealed copy there too, but keeps the key file for the next rotations.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runner import store
from runner.errors import RunnerError
from runner.jobs import JobState
from runner.sealing import Recipient

SEALED_FIELD = "sealed_secret"
# A key file holds about 45 characters; reading stops here, whatever FILE is.
_KEY_FILE_LIMIT = 4096


def default_inbox() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "runner" / "inbox"


class Inbox:
    """The requester's private keys, one file per job, readable by its owner only."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_inbox()

    def keep(self, job_id: int, recipient: Recipient) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_file = self._file(job_id)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(recipient.export())

    def recipient(self, job_id: int) -> Recipient:
        try:
            return Recipient.load(self._file(job_id).read_text())
        except FileNotFoundError:
            raise RunnerError(
                f"no key for job {job_id} in {self.path}: its secret can only be "
                "opened where the job was enqueued, once"
            ) from None

    def discard(self, job_id: int) -> None:
        self._file(job_id).unlink(missing_ok=True)

    def _file(self, job_id: int) -> Path:
        return self.path / f"{job_id}.key"


def create_key_file(path: Path) -> Recipient:
    """A new long-lived key pair, its private half written to a new file at `path`
    that only its owner may read; an existing file is never replaced."""
    recipient = Recipient()
    try:
        # O_EXCL: secrets may be sealed to the key already in a file of that name.
        # It also refuses a symbolic link, dangling or not.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise RunnerError(
            f"{path} exists already: not replaced, since secrets may be sealed to "
            "the key it holds"
        ) from None
    except OSError as exc:
        raise RunnerError(f"cannot create {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            # Exactly 0600, whatever the umask took away.
            os.fchmod(f.fileno(), 0o600)
            f.write(recipient.export() + "\n")
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise RunnerError(f"cannot write {path}: {exc.strerror}") from None
    return recipient


def read_key_file(path: Path) -> Recipient:
    """The key pair whose private half `create_key_file` wrote to `path`."""
    try:
        with path.open("rb") as f:
            text = f.read(_KEY_FILE_LIMIT).decode("ascii")
        return Recipient.load(text)
    except FileNotFoundError:
        raise RunnerError(f"no recipient key file {path}") from None
    except OSError as exc:
        raise RunnerError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, RunnerError):
        raise RunnerError(
            f"{path} holds no recipient key: it is damaged, or another file"
        ) from None


def open_secret(
    conn: store.Connection, job: dict[str, Any], recipient: Recipient
) -> str | None:
    """The secret sealed in a succeeded job's result, wiped from it as it is read.

    None when the job carries no sealed secret (already read, or no new key).
    """
    if job["state"] != JobState.SUCCEEDED:
        raise RunnerError(f"job {job['id']} is {job['state']}: it holds no secret")
    result = job["result"]
    if not isinstance(result, dict) or SEALED_FIELD not in result:
        return None
    secret = recipient.open(result.pop(SEALED_FIELD))
    store.forget_result_field(conn, job["id"], SEALED_FIELD)
    return secret
