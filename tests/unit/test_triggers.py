"""Periodic triggers across daylight-saving changes, in any time zone of the process."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from runner.config import Settings
from runner.scheduler import MaintenanceScheduler, every
from runner.store import WorkerStore

# The changes of 2024 in Berlin and of 2022 in Los Angeles, as UTC instants.
TRANSITIONS = [
    ("Europe/Berlin", datetime(2024, 3, 31, 1, 0, tzinfo=UTC)),
    ("Europe/Berlin", datetime(2024, 10, 27, 1, 0, tzinfo=UTC)),
    ("America/Los_Angeles", datetime(2022, 3, 13, 10, 0, tzinfo=UTC)),
    ("America/Los_Angeles", datetime(2022, 11, 6, 9, 0, tzinfo=UTC)),
]
PROCESS_ZONES = ["Europe/Berlin", "America/Los_Angeles", "UTC"]
# The product's defaults (heartbeat, rescuer, pruner) and the tests' fast settings.
INTERVALS = [0.5, 10, 30, 3600]
# How far each side of a change the fire times are followed.
MARGIN = timedelta(hours=3)


@contextmanager
def process_time_zone(zone: str) -> Iterator[None]:
    """Run the block with TZ set to `zone`, then restore the process's own."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def fire_times(seconds: float, first: datetime, last: datetime) -> list[datetime]:
    """Successive fire times of every(seconds), from `first` until past `last`."""
    trigger = every(seconds)
    times = [first]
    while times[-1] <= last:
        nxt = trigger.get_next_fire_time(times[-1], times[-1])
        assert nxt is not None
        times.append(nxt)
    return times


@pytest.mark.parametrize("process_zone", PROCESS_ZONES)
@pytest.mark.parametrize("seconds", INTERVALS)
@pytest.mark.parametrize(("zone", "change"), TRANSITIONS)
def test_triggers_fire_once_per_interval_across_dst(
    zone, change, seconds, process_zone
):
    # The instant really is a change of that zone's offset.
    local = ZoneInfo(zone)
    before, after = change - timedelta(minutes=1), change + timedelta(minutes=1)
    assert before.astimezone(local).utcoffset() != after.astimezone(local).utcoffset()

    with process_time_zone(process_zone):
        # The previous run's time as the scheduler holds it: aware, in local time.
        start = (change - MARGIN).astimezone()
        times = fire_times(seconds, start, change + MARGIN)

    gaps = {b.timestamp() - a.timestamp() for a, b in pairwise(times)}
    assert gaps == {seconds}
    assert all(t.utcoffset() == timedelta(0) for t in times[1:])
    expected = int(2 * MARGIN.total_seconds() // seconds) + 1
    assert len(times) - 1 in (expected, expected + 1)


@pytest.mark.parametrize("process_zone", PROCESS_ZONES)
def test_the_maintenance_scheduler_counts_in_utc(process_zone):
    settings = Settings(
        database_url="postgresql://127.0.0.1:1/unused",
        heartbeat_interval=3600,
        stall_threshold=7200,
        rescue_interval=3600,
        prune_interval=3600,
    )
    with process_time_zone(process_zone):
        maintenance = MaintenanceScheduler(settings, WorkerStore(uuid.uuid4()), str)
        # An hour before any job falls due: nothing runs or connects meanwhile.
        maintenance.start()
        try:
            scheduler = maintenance._scheduler
            jobs = scheduler.get_jobs()
        finally:
            maintenance.shutdown()

    summer = datetime(2024, 7, 1, 12, 0)
    assert scheduler.timezone.utcoffset(summer) == timedelta(0)
    assert {job.name for job in jobs} == {"heartbeat", "rescuer", "pruner"}
    for job in jobs:
        assert job.trigger.timezone.utcoffset(summer) == timedelta(0)
        assert job.next_run_time.utcoffset() == timedelta(0)
