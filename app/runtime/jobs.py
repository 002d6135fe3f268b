"""Jobs on RQ's data model: the JSON serializer, a Job class that runs only registered tasks, queue objects.

A job's `func_name` is its task type (e.g. `system.ping`), so rq-dashboard and `rq info` show the type, and a
job planted in Redis with a function path (`os.system`) fails with UnknownTaskError instead of running.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from redis import Redis
from rq.exceptions import DeserializationError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer

from app.tasks import get_queue_spec, get_task, queue_keys
from queues import NORMAL_PRIORITY, QUEUES, QUEUES_SET, job_key

#: the only serializer bullrq uses; pickle never touches Redis
SERIALIZER = JSONSerializer


class State(StrEnum):
    """Bull's names for job states, used by the API, the CLI and the pages."""

    WAITING = "waiting"
    DELAYED = "delayed"
    DEFERRED = "deferred"  #: waits for the jobs it depends on (or, a batch's callback, for its batch)
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


_STATE_OF_STATUS = {
    JobStatus.CREATED: State.WAITING,  # between create_job and its enqueue
    JobStatus.QUEUED: State.WAITING,
    JobStatus.DEFERRED: State.DEFERRED,
    JobStatus.SCHEDULED: State.DELAYED,
    JobStatus.STARTED: State.ACTIVE,
    JobStatus.FINISHED: State.COMPLETED,
    JobStatus.FAILED: State.FAILED,
    JobStatus.STOPPED: State.CANCELED,
    JobStatus.CANCELED: State.CANCELED,
}


def state_of(status: JobStatus | str | None) -> State | None:
    """The Bull state name of an RQ job status."""
    return _STATE_OF_STATUS.get(JobStatus(status)) if status else None


class BullJob(Job):
    """An RQ job whose function is looked up in the task registry, never imported by path.

    Besides RQ's fields its hash holds `priority`, `attempts` (total tries allowed), `dedup_key`, `progress`,
    `earlier_attempts`, `last_attempt`, `group` and, for flows (app.runtime.flows), `on_parent_failure`,
    `deps_pending`, `has_dependents`, `batch_id`, `batch_counted` and `callback_of`.
    """

    priority: int = NORMAL_PRIORITY
    attempts: int = 1
    dedup_key: str | None = None
    progress: dict | None = None
    earlier_attempts: int = 0  #: tries made before a retry-failed put the job back with its attempts reset
    last_attempt: int = 0  #: the number of the last try that ended
    batch_id: str | None = None  #: the batch it belongs to
    group: str | None = None  #: its group within its queue (option `group`)
    created: bool = True  #: False when `enqueue` returned an earlier job holding the same dedup key

    def __init__(self, *args, **kwargs):
        # RQ's class methods (fetch, create) pass serializer=None explicitly: JSON whatever the caller says
        kwargs["serializer"] = SERIALIZER
        super().__init__(*args, **kwargs)

    def restore(self, raw_data: dict) -> None:
        super().restore(raw_data)
        self.priority = int(raw_data.get(b"priority") or NORMAL_PRIORITY)
        self.attempts = int(raw_data.get(b"attempts") or 1)
        self.dedup_key = raw_data[b"dedup_key"].decode() if raw_data.get(b"dedup_key") else None
        self.progress = json.loads(raw_data[b"progress"]) if raw_data.get(b"progress") else None
        self.earlier_attempts = int(raw_data.get(b"earlier_attempts") or 0)
        self.last_attempt = int(raw_data.get(b"last_attempt") or 0)
        batch = raw_data.get(b"batch_id") or raw_data.get(b"callback_of")  # a callback shows its batch too
        self.batch_id = batch.decode() if batch else None
        self.group = raw_data[b"group"].decode() if raw_data.get(b"group") else None

    @property
    def attempt(self) -> int:
        """The number of the current (or last) try, 1 for the first; tries before a retry-failed count too."""
        number = self.earlier_attempts + max(1, self.attempts - (self.retries_left or 0))
        if number <= self.last_attempt and state_of(self.get_status(refresh=False)) in (State.WAITING, State.DELAYED):
            return self.last_attempt + 1  # put back by rq's requeue: the worker numbers its next run so
        return number

    @property
    def func(self):
        return get_task(self.func_name).func

    @property
    def task_type(self) -> str:
        return self.func_name


def get_queue(name: str, connection: Redis) -> Queue:
    """The RQ queue `name` (validated against queues.py) with bullrq's job class and serializer.

    Raises:
        UnknownQueueError: the name is not declared in queues.py.
    """
    spec = get_queue_spec(name)
    return Queue(
        spec.name,
        connection=connection,
        job_class=BullJob,
        serializer=SERIALIZER,
        default_timeout=spec.timeout,
    )


def declare_queues(connection: Redis) -> None:
    """Add every declared queue to RQ's set of queues, so RQ's tools (`rq info`) list them before their first job.

    Lanes are added by the enqueue script when first used. Jobs still waiting in the lanes of an earlier release
    (`bullrq:<q>:lane:<p>`) move to the end of today's lanes.
    """
    connection.sadd(QUEUES_SET, *(queue_keys(name).queue for name in QUEUES))
    legacy = [(keys, p, old) for keys in map(queue_keys, QUEUES) for p, old in keys.legacy_lanes.items()]
    with connection.pipeline(transaction=False) as pipe:
        for _, _, old in legacy:
            pipe.exists(old)
        found = [entry for entry, exists in zip(legacy, pipe.execute(), strict=True) if exists]
    for keys, priority, old in found:
        connection.sadd(QUEUES_SET, keys.lane(priority))
        while connection.lmove(old, keys.lane(priority), "LEFT", "RIGHT"):
            pass


def fetch_job(job_id: str, connection: Redis) -> BullJob | None:
    """The job `job_id`, or None when Redis no longer has it."""
    return BullJob.fetch_many([job_id], connection=connection, serializer=SERIALIZER)[0]


@dataclass
class RunningJob:
    """What a worker needs of a job it runs, read in the same step that leases it (no RQ Job object: cheaper)."""

    #: the job hash fields the worker reads, in this order
    FIELDS: ClassVar[tuple[str, ...]] = (
        "data", "timeout", "retries_left", "retry_intervals", "result_ttl", "failure_ttl", "priority", "attempts",
        "enqueued_at", "schedule_id", "cancel_requested", "earlier_attempts", "last_attempt", "schedule_slot",
    )  # fmt: skip

    id: str
    origin: str
    func_name: str
    kwargs: dict
    timeout: int | None
    retries_left: int | None
    retry_intervals: list[int] | None
    result_ttl: int | None
    failure_ttl: int | None
    priority: int
    attempts: int
    enqueued_at: str | None = None  #: RQ's date format
    schedule_id: str | None = None  #: the schedules.yaml entry that created the job
    started: float = 0.0  #: epoch seconds the run began
    duration: float = 0.0  #: seconds the run took
    progress: dict | None = None  #: the last values the handler reported
    cancel_requested: bool = False  #: canceled while its worker was taking it: it must not run
    problem: str | None = None  #: why the stored job cannot run (it fails at once, without retry)
    earlier_attempts: int = 0  #: tries made before a retry-failed put the job back with its attempts reset
    last_attempt: int = 0  #: the number of the last try that ended (recorded with its outcome)
    schedule_slot: str | None = None  #: the cron slot (RQ's date format) it runs for; None for a run now

    @classmethod
    def from_fields(cls, job_id: str, origin: str, values: list[bytes | None]) -> RunningJob:
        """Build from the values of `FIELDS`; a job whose stored data is unreadable gets a `problem`."""
        data, timeout, retries_left, intervals, result_ttl, failure_ttl, priority, attempts = values[:8]
        enqueued, schedule, cancel, earlier, last, slot = values[8:]
        func_name, kwargs, problem = "", {}, None
        try:  # small data is stored as it is (JSON opens with "[", which no zlib stream does)
            raw = data if not data or data[:1] == b"[" else zlib.decompress(data)
        except zlib.error:
            raw = data
        try:
            func_name, _instance, _args, kwargs = SERIALIZER.loads(raw)
            if not isinstance(func_name, str) or not isinstance(kwargs, dict):
                raise TypeError("it is not RQ's [function, instance, args, kwargs] layout")
        except (ValueError, TypeError) as exc:
            func_name, kwargs, problem = "", {}, f"stored job data is not a JSON job: {exc}"
        return cls(
            id=job_id,
            origin=origin,
            func_name=func_name,
            kwargs=kwargs,
            timeout=_int(timeout),
            retries_left=_int(retries_left),
            retry_intervals=json.loads(intervals) if intervals else None,
            result_ttl=_int(result_ttl),
            failure_ttl=_int(failure_ttl),
            priority=_int(priority) or NORMAL_PRIORITY,
            attempts=_int(attempts) or 1,
            problem=problem,
            enqueued_at=enqueued.decode() if enqueued else None,
            schedule_id=schedule.decode() if schedule else None,
            cancel_requested=bool(cancel),
            earlier_attempts=_int(earlier) or 0,
            last_attempt=_int(last) or 0,
            schedule_slot=slot.decode() if slot else None,
        )

    @property
    def key(self) -> str:
        return job_key(self.id)

    @property
    def attempt(self) -> int:
        """The number of this try, 1 for the first; tries before a retry-failed count too."""
        return self.earlier_attempts + max(1, self.attempts - (self.retries_left or 0))


def _int(value: bytes | None) -> int | None:
    return int(value) if value not in (None, b"") else None


#: states in which no attempt of the job runs any more (a retry-failed or execute starts a new round)
ENDED = (State.COMPLETED, State.FAILED, State.CANCELED)


def attempt_counts(state: State | None, attempt: int, retries_left: int | None) -> tuple[int, int]:
    """(attempts made, attempts left) of a job in `state` whose current or next try is number `attempt`, with
    `retries_left` retries after that try.

    A waiting or delayed job has its next try still to make; an ended job has no try left, however many it was
    allowed (a completed job needed no more, a failed one failed for good, until a retry-failed).
    """
    if state in ENDED:
        return attempt, 0
    if state == State.ACTIVE:
        return attempt, retries_left or 0
    return attempt - 1, (retries_left or 0) + 1


def describe_job(job: BullJob) -> dict:
    """The job as the API and CLI show it, with Bull's state names.

    `result` and `error` are those of the job's outcome: a job still waiting, delayed or running shows neither
    (a retry that runs again does not show the error of the attempt before it); `last_error` keeps that one.
    """
    latest = job.latest_result()
    status = job.get_status(refresh=False)
    state = state_of(status)
    result = error = last_error = None
    if latest is not None:
        if state == State.COMPLETED:
            result = latest.return_value
        elif state in ENDED:
            error = latest.exc_string
        else:
            last_error = latest.exc_string
    elif state in (State.FAILED, State.CANCELED) and job._exc_info:  # ended without running: a parent failed
        error = job._exc_info
    try:
        task_type, data = job.func_name, job.kwargs
    except DeserializationError:  # planted or corrupted data: show the job, not a 500
        task_type, data = None, None
    made, left = attempt_counts(state, job.attempt, job.retries_left)
    return {
        "id": job.id,
        "type": task_type,
        "queue": job.origin,
        "status": state.value if state else None,
        "data": data,
        "priority": job.priority,
        "progress": job.progress,
        "attempts": job.attempts,
        "attempt": job.attempt,
        "attempts_made": made,
        "attempts_left": left,
        "result": result,
        "error": error,
        "last_error": last_error,
        "worker": job.worker_name,
        "created_at": _iso(job.created_at),
        "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
        "depends_on": list(job._dependency_ids),
        "batch_id": job.batch_id,
        "group": job.group,
    }


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None
