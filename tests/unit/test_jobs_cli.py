from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest

from runner import admin
from runner.jobs_cli import _ago, _cut, _since


def since(text: str | None) -> admin.Since | None:
    return _since(click.Context(click.Command("x")), click.Option(["--since"]), text)


def test_since_takes_a_span_or_an_iso_time():
    assert since("90s") == admin.Since(ago=timedelta(seconds=90))
    assert since("10m") == admin.Since(ago=timedelta(minutes=10))
    assert since("1.5h") == admin.Since(ago=timedelta(minutes=90))
    assert since("2d") == admin.Since(ago=timedelta(days=2))
    assert since("1w") == admin.Since(ago=timedelta(days=7))
    assert since("2026-12-24T18:00:00") == admin.Since(
        at=datetime(2026, 12, 24, 18, tzinfo=UTC)
    )
    at = since("2026-12-24T18:00:00+01:00")
    assert at is not None and at.at == datetime(2026, 12, 24, 17, tzinfo=UTC)
    assert since(None) is None
    for bad in ("yesterday", "10", "-5m", "5 m", "1y"):
        with pytest.raises(click.BadParameter):
            since(bad)


def test_errors_are_cut_to_their_first_line():
    assert _cut(None) == ""
    assert _cut("short\nsecond line") == "short"
    long = "x" * 100
    assert _cut(long) == "x" * 57 + "..."


def test_ages_are_brief():
    now = datetime(2026, 12, 4, 12, tzinfo=UTC)
    assert _ago(now, now) == "0s ago"
    assert _ago(now, now - timedelta(seconds=59)) == "59s ago"
    assert _ago(now, now - timedelta(minutes=5, seconds=30)) == "5m ago"
    assert _ago(now, now - timedelta(hours=3)) == "3h ago"
    assert _ago(now, now - timedelta(days=8)) == "8d ago"
    assert _ago(now, now + timedelta(hours=2)) == "in 2h"
