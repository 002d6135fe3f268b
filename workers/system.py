"""Built-in tasks that every queue accepts."""

from __future__ import annotations

import time
from typing import Any

from app.errors import InvalidJobError
from app.tasks import task

#: seconds: the longest sleep system.ping accepts
MAX_PING_SLEEP = 60


def _validate_ping(kwargs: dict) -> None:
    sleep = kwargs.get("sleep", 0)
    if isinstance(sleep, bool) or not isinstance(sleep, int | float) or not 0 <= sleep <= MAX_PING_SLEEP:
        raise InvalidJobError(f"system.ping: sleep must be a number of seconds from 0 to {MAX_PING_SLEEP}")


@task("system.ping", queue=None, validate=_validate_ping)
def ping(sleep: float = 0, echo: Any = None) -> Any:
    """Sleep `sleep` seconds, then return `echo`: for health checks, smoke tests and benchmarks."""
    if sleep:
        time.sleep(sleep)
    return echo
