"""The running job as its handler sees it: progress reports (percent, a message, items processed and failed) and
which job and attempt this is.

Handlers call `report(...)`; the values land in the job's hash (field `progress`, JSON) at once, readable while
the job runs and after it ends. `current_job()` gives the job's id, queue and attempt, e.g. for idempotency keys.
"""

from __future__ import annotations

import json
import time
from typing import Any

_current: dict[str, Any] = {}


def _bind(connection, job) -> None:
    """Called by the worker before each run: reports go to this job."""
    _current.clear()
    _current.update(connection=connection, key=job.key, job=job, values={})


def _unbind() -> dict | None:
    """Called by the worker after each run: the last values reported, if any."""
    values = _current.get("values") or None
    _current.clear()
    return values


def current_job():
    """The job being run (`.id`, `.origin`: its queue, `.attempt`: 1 on the first try), or None outside a job."""
    return _current.get("job")


def current_connection():
    """The Redis client the running job's worker uses, or None outside a job."""
    return _current.get("connection")


def report(
    percent: float | None = None,
    message: str | None = None,
    processed: int | None = None,
    failed: int | None = None,
) -> dict:
    """Record the running job's progress; arguments left out keep their last value. Returns what is stored.

    Raises:
        RuntimeError: called outside a running job.
    """
    if not _current:
        raise RuntimeError("progress.report() is only available inside a running job")
    values = _current["values"]
    if percent is not None:
        values["percent"] = max(0.0, min(100.0, float(percent)))
    if message is not None:
        values["message"] = str(message)[:500]
    if processed is not None:
        values["processed"] = int(processed)
    if failed is not None:
        values["failed"] = int(failed)
    values["updated_at"] = round(time.time(), 3)
    _current["connection"].hset(_current["key"], "progress", json.dumps(values))
    return dict(values)
