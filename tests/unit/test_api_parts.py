"""Parts of the HTTP API that need no server: request bodies and the view of a job."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from handlers.rotate_key import rotate_key
from runner.api import Refusal, job_view, rotation_args
from runner.sealing import Recipient, seal


def job(**fields) -> dict:
    at = datetime(2026, 12, 4, 20, 0, tzinfo=UTC)
    return {
        "id": 7,
        "task": "rotate_key",
        "queue": "default",
        "state": "succeeded",
        "attempts": 1,
        "max_attempts": 5,
        "unique_key": "rotate_key:3",
        "created_at": at,
        "run_at": at,
        "updated_at": at,
        "finished_at": at,
        "last_error": None,
        "args": {},
        "result": None,
        "claimed_by": None,
        **fields,
    }


def test_a_job_shows_its_sealed_secret_and_withholds_the_others():
    recipient = Recipient()
    sealed = seal(recipient.public, "rk_new")
    view = job_view(
        job(
            args={"key_id": 3, "password": "hunter2"},
            result={"new_key_id": 4, "sealed_secret": sealed, "token": "t0k"},
        )
    )

    assert view["args"] == {"key_id": 3, "password": "[withheld]"}
    assert view["result"] == {
        "new_key_id": 4,
        "sealed_secret": sealed,
        "token": "[withheld]",
    }
    assert view["withheld"] == ["args.password", "result.token"]
    assert recipient.open(view["result"]["sealed_secret"]) == "rk_new"
    assert view["finished_at"] == "2026-12-04T20:00:00+00:00"
    assert "claimed_by" not in view


def test_a_sealed_secret_elsewhere_or_a_plain_one_is_withheld():
    sealed = seal(Recipient().public, "rk_new")
    view = job_view(
        job(result={"sealed_secret": "rk_plain", "copy": {"inner": sealed}})
    )
    assert view["result"] == {
        "sealed_secret": "[withheld]",
        "copy": {"inner": "[withheld]"},
    }


def test_a_body_fills_in_the_defaults_and_is_checked_by_the_handler():
    assert rotation_args(3, b"", rotate_key) == {
        "key_id": 3,
        "grace_hours": 24.0,
        "requested_by": "api",
    }
    assert rotation_args(3, b'{"grace_hours": 0}', rotate_key)["grace_hours"] == 0
    with pytest.raises(Refusal, match="longer than the maximum") as refused:
        rotation_args(3, b'{"grace_hours": 721}', rotate_key)
    assert refused.value.status == 422
