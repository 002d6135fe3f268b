"""Enqueueing by task type: the one helper that turns (type, data, options) into a job under its queue's policy."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from rq.job import Retry

from app.errors import InvalidJobError
from app.jobs import BullJob, get_queue
from app.tasks import get_task
from queues import Backoff, BackoffType, get_queue_spec

logger = logging.getLogger(__name__)

#: named priorities; numbers 1 (most urgent) to 10 are accepted too, as in Bull
PRIORITIES = {"high": 1, "normal": 5, "low": 10}
#: seconds: the longest delay or timeout an option may ask for (30 days)
MAX_SECONDS = 30 * 24 * 3600
MAX_ATTEMPTS = 100
_OPTION_NAMES = ("queue", "priority", "delay", "attempts", "backoff", "timeout", "jobId")


@dataclass(frozen=True)
class JobOptions:
    """Per-job options; None means "the queue's default"."""

    queue: str | None = None
    priority: int | None = None
    delay: float | None = None  #: seconds
    attempts: int | None = None
    backoff: Backoff | None = None
    timeout: int | None = None  #: seconds

    @classmethod
    def parse(cls, raw: dict | None) -> JobOptions:
        """Options from their JSON form (`{"queue", "priority", "delay", "attempts", "backoff", "timeout"}`).

        Raises:
            InvalidJobError: an option is unknown or out of range; the message names it.
        """
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise InvalidJobError(f"options must be a JSON object, not {type(raw).__name__}")
        unknown = sorted(set(raw) - set(_OPTION_NAMES))
        if unknown:
            raise InvalidJobError(f"unknown option {unknown[0]!r}; known options: {', '.join(_OPTION_NAMES)}")
        if raw.get("jobId") is not None:
            # Dedup needs an atomic claim in Redis; it lands with the Bull-semantics queue layer.
            raise InvalidJobError("option 'jobId' (dedup) is not supported yet")
        queue = raw.get("queue")
        if queue is not None:
            if not isinstance(queue, str):
                raise InvalidJobError("option 'queue' must be a queue name")
            get_queue_spec(queue)
        return cls(
            queue=queue,
            priority=_priority(raw.get("priority")),
            delay=_number(raw, "delay", 0, MAX_SECONDS),
            attempts=_integer(raw, "attempts", 1, MAX_ATTEMPTS),
            backoff=_backoff(raw.get("backoff")),
            timeout=_integer(raw, "timeout", 1, MAX_SECONDS),
        )


def _number(raw: dict, name: str, low: float, high: float) -> float | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidJobError(f"option {name!r} must be a number from {low} to {high}")
    return value


def _integer(raw: dict, name: str, low: int, high: int) -> int | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJobError(f"option {name!r} must be a whole number from {low} to {high}")
    return value


def _priority(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value in PRIORITIES:
        return PRIORITIES[value]
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10:
        return value
    raise InvalidJobError("option 'priority' must be high, normal, low or a whole number from 1 (first) to 10")


def _backoff(value: Any) -> Backoff | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"type", "delay"}:
        raise InvalidJobError('option \'backoff\' must look like {"type": "fixed" | "exponential", "delay": seconds}')
    try:
        kind = BackoffType(value.get("type", BackoffType.EXPONENTIAL.value))
    except ValueError:
        raise InvalidJobError("option 'backoff.type' must be fixed or exponential") from None
    delay = _number(value, "delay", 0, MAX_SECONDS)
    return Backoff(kind, delay if delay is not None else Backoff().delay)


def retry_intervals(backoff: Backoff, retries: int, rng: random.Random | None = None) -> list[int]:
    """Seconds to wait before each retry: fixed, or doubling per retry with +-20 % jitter (RQ takes whole seconds)."""
    if backoff.type is BackoffType.FIXED:
        return [max(0, round(backoff.delay))] * retries
    rng = rng or random.Random()
    return [max(1, round(backoff.delay * 2**n * rng.uniform(0.8, 1.2))) for n in range(retries)]


def enqueue(connection: Redis, task_type: str, data: dict | None = None, options: JobOptions | dict | None = None):
    """Create a job of a registered task type under its queue's policy.

    Args:
        connection: the Redis connection.
        task_type: a registered task type, e.g. `system.ping`.
        data: the job's JSON object; its keys are the handler's keyword arguments (camelCase accepted).
        options: `JobOptions` or their JSON form.

    Returns:
        The created job (an RQ job: `job.id`, `job.origin` is its queue).

    Raises:
        UnknownTaskError: the type is not registered.
        UnknownQueueError: `options.queue` names no declared queue.
        InvalidJobError: the data or options are not acceptable for this type.
    """
    task = get_task(task_type)
    opts = options if isinstance(options, JobOptions) else JobOptions.parse(options)
    kwargs = task.bind({} if data is None else data)
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError) as exc:
        raise InvalidJobError(f"data for {task.name} is not JSON-serializable: {exc}") from None

    if task.queue is not None and opts.queue not in (None, task.queue):
        raise InvalidJobError(f"{task.name} runs only on queue {task.queue!r}, not {opts.queue!r}")
    queue_name = opts.queue or task.queue
    if queue_name is None:
        raise InvalidJobError(f"{task.name} runs on any queue: choose one with option 'queue'")
    spec = get_queue_spec(queue_name)
    queue = get_queue(queue_name, connection)

    attempts = opts.attempts or spec.attempts
    priority = opts.priority or PRIORITIES[spec.priority]
    retry = None
    if attempts > 1:
        retry = Retry(max=attempts - 1, interval=retry_intervals(opts.backoff or spec.backoff, attempts - 1))
    job: BullJob = queue.create_job(
        task.name,
        kwargs=kwargs,
        timeout=opts.timeout or spec.timeout,
        result_ttl=spec.result_ttl,
        failure_ttl=spec.failure_ttl,
        retry=retry,
        meta={"priority": priority, "attempts": attempts},
    )
    if opts.delay:
        queue.schedule_job(job, datetime.now(UTC) + timedelta(seconds=opts.delay))
    else:
        queue.enqueue_job(job, at_front=priority < PRIORITIES["normal"])
    logger.debug("job %s: enqueued %s on %s", job.id, task.name, queue_name)
    return job
