"""JSON log lines: one per record, always an action, the running job's fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from runner import logs


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """What a logger called `test_logs` writes, as the CLI would format it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.JobFields())
    log = logging.getLogger("test_logs")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    yield out
    log.removeHandler(handler)


def entries(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_record_without_an_action_is_marked_unstructured(lines):
    logging.getLogger("test_logs").warning("from a library")
    logging.getLogger("test_logs").info("ours", extra={"action": "thing_done"})
    assert [e["action"] for e in entries(lines)] == ["unstructured", "thing_done"]


def test_a_multiline_message_and_its_traceback_stay_on_one_line(lines):
    try:
        raise ValueError("first\nsecond")
    except ValueError:
        logging.getLogger("test_logs").exception("failed:\n%s", "details")
    [entry] = entries(lines)
    assert entry["message"] == "failed:\ndetails"
    assert "ValueError: first\nsecond" in str(entry["exception"])


def test_records_inside_a_job_carry_its_fields(lines):
    log = logging.getLogger("test_logs")
    with logs.job_context(7, "send_mail", 2):
        log.info("inside")
        log.info("explicit", extra={"action": "x", "job_id": 8})
    log.info("after")
    inside, explicit, after = entries(lines)
    assert (inside["job_id"], inside["task"], inside["attempt"]) == (7, "send_mail", 2)
    assert (explicit["job_id"], explicit["task"]) == (8, "send_mail")
    assert "job_id" not in after and "task" not in after
