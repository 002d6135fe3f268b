"""Waiting on jobs in the process-level tests: read a job's status, wait for one, assert a condition holds."""

from __future__ import annotations

import time

import redis

from queues import job_key
from tests.fixtures import wait_for


def status(connection: redis.Redis, job_id: str) -> str | None:
    """The job's RQ status (queued, started, finished, ...), fresh from Redis; None when the job is gone."""
    value = connection.hget(job_key(job_id), "status")
    return value.decode() if value is not None else None


def wait_status(connection: redis.Redis, job_id: str, *wanted: str, timeout: float = 15) -> str:
    """Wait until the job's status is one of `wanted`; returns it."""
    seen = []

    def reached():
        seen[:] = [status(connection, job_id)]
        return seen[0] in wanted and seen[0]

    try:
        return wait_for(reached, timeout=timeout, message=f"job {job_id} to be {' or '.join(wanted)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (last status: {seen[0] if seen else None})") from None


def stays(condition, seconds: float, interval: float = 0.05) -> None:
    """Assert that `condition()` holds throughout the next `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert condition(), "the condition stopped holding"
        time.sleep(interval)
