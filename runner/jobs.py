"""The job model: states and the claimed job as the worker sees it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class JobState(enum.StrEnum):
    """The closed set of job states, mirrored by the `runner.job_state` type.

    A job is inserted `queued`; a runner claims it (`running`) and records how it
    ended. A failed attempt with attempts left, or an attempt whose runner died, goes
    back to `queued`.
    """

    QUEUED = "queued"
    """Waiting for a runner; claimable once `run_at` has passed."""
    RUNNING = "running"
    """Claimed by the runner named in `claimed_by`, which is running its handler."""
    SUCCEEDED = "succeeded"
    """The handler returned; its result is stored. Final."""
    FAILED = "failed"
    """The last attempt failed, or the failure was permanent. Final."""
    CANCELLED = "cancelled"
    """Withdrawn before it ran. Final."""

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job a runner has claimed: the attempt number already counts this attempt."""

    id: int
    task: str
    args: dict[str, Any]
    queue: str
    attempt: int
    max_attempts: int
    waited: float = 0.0
    """Seconds the job had been runnable when it was claimed."""
    claimed_at: float = 0.0
    """When it was claimed, on this process's monotonic clock."""

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts
