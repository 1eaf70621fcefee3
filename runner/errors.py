"""Errors raised by the runner.

Every error derives from `RunnerError`, grouped by what the caller can do:

    RunnerError
    ├── ConfigurationError      fix the settings or the command line
    ├── DatabaseError           the database refused or failed a statement
    │   └── DatabaseUnavailable     it cannot be reached; try again later
    ├── JobNotFound             no job has that id
    ├── JobStateConflict        the job's state does not allow what was asked
    ├── WaitTimedOut            a job did not finish within the time waited
    ├── UnknownTask             no handler is registered under that name
    └── JobError                raised by handlers: how one job attempt ended
        └── PermanentError          fail the job now, never retry
            └── InvalidArguments        the arguments do not fit the handler
"""

from __future__ import annotations


class RunnerError(Exception):
    """The base of every error the runner raises on purpose."""


class ConfigurationError(RunnerError):
    """A setting or command-line value is missing or invalid."""


class DatabaseError(RunnerError):
    """A statement failed in the database."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached; the operation may succeed later."""


class JobNotFound(RunnerError):
    """No job has the requested id."""


class JobStateConflict(RunnerError):
    """The job's state does not allow the operation, such as retrying a running job."""


class WaitTimedOut(RunnerError):
    """A job did not reach a final state within the time waited; it may still."""


class UnknownTask(RunnerError):
    """No handler is registered under the task name."""

    def __init__(self, task: str) -> None:
        super().__init__(f"unknown task {task!r}: no handler is registered for it")
        self.task = task


class JobError(RunnerError):
    """How one attempt of a job ended, when it did not succeed."""


class PermanentError(JobError):
    """The job cannot succeed: fail it at once, without retrying."""


class InvalidArguments(PermanentError):
    """The job's arguments do not fit its handler."""
