"""Every exception the product raises on purpose, under one base class."""

from __future__ import annotations


class BullrqError(Exception):
    """Base class of the product's exceptions."""


class ConfigError(BullrqError):
    """Raised when a setting holds an invalid value; the message names the variable."""


class UnknownQueueError(BullrqError):
    """Raised when a queue name is not declared in queues.py."""

    def __init__(self, name: str, valid: list[str]):
        super().__init__(f"unknown queue {name!r}; valid queues: {', '.join(valid)}")
        self.name = name
        self.valid = valid


class UnknownTaskError(BullrqError):
    """Raised when a task type is not registered."""

    def __init__(self, name: str, valid: list[str]):
        super().__init__(f"unknown task type {name!r}; registered types: {', '.join(valid)}")
        self.name = name
        self.valid = valid


class DuplicateTaskError(BullrqError):
    """Raised when two handlers register the same task type."""


class InvalidJobError(BullrqError):
    """Raised when job data or options are not acceptable (not JSON, wrong type, out of range)."""


class JobDataTooLargeError(InvalidJobError):
    """Raised when a job's data, as JSON, is over MAX_JOB_DATA_BYTES."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"the job's data is {size} bytes as JSON; at most {limit} are accepted (MAX_JOB_DATA_BYTES)")
        self.size, self.limit = size, limit


class JobStateError(BullrqError):
    """Raised when a job is not in a state the action applies to (e.g. running a completed job now)."""


class ServerError(BullrqError):
    """Raised when an embedded Redis or PostgreSQL server cannot be found, started or stopped."""


class MigrationError(BullrqError):
    """Raised when a database migration cannot be applied."""


class PermanentFailure(BullrqError):
    """Raised by a handler for a failure that retrying cannot fix: the job fails at once, with no retry."""

    status: int | None = None  #: the HTTP status, when an outside service's answer was the failure


class RetryLater(BullrqError):
    """Raised by a handler to be retried after `delay` seconds (counts as an attempt)."""

    def __init__(self, message: str = "retry requested", delay: float = 30.0):
        super().__init__(message)
        self.delay = delay


class ServiceUnavailableError(BullrqError):
    """Raised when an outside service may answer later (connection refused, timeout, 408, 429, 5xx): retried."""

    status: int | None = None  #: the HTTP status, when there was an answer


class JobTimeoutError(BaseException):
    """Raised inside a job that ran past its timeout; the run fails and is retried per policy (a BaseException,
    so a handler's `except Exception` cannot swallow it and run on without a limit)."""


class JobCanceledError(BaseException):
    """Raised inside a running job that was canceled (a BaseException, so handlers' `except Exception` let it by)."""


class LeaseLostError(BaseException):
    """Raised inside a running job whose lease was taken back for another worker (its outcome is not recorded)."""
