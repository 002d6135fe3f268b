"""Jobs on RQ's data model: the JSON serializer, a Job class that runs only registered tasks, queue objects.

A job's `func_name` is its task type (e.g. `system.ping`), so rq-dashboard and `rq info` show the type, and a
job planted in Redis with a function path (`os.system`) fails with UnknownTaskError instead of running.
"""

from __future__ import annotations

from enum import StrEnum

from redis import Redis
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer

from app.tasks import get_task
from queues import get_queue_spec

#: the only serializer bullrq uses; pickle never touches Redis
SERIALIZER = JSONSerializer


class State(StrEnum):
    """Bull's names for job states, used by the API, the CLI and the pages."""

    WAITING = "waiting"
    DELAYED = "delayed"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


_STATE_OF_STATUS = {
    JobStatus.CREATED: State.WAITING,  # between create_job and its enqueue
    JobStatus.QUEUED: State.WAITING,
    JobStatus.DEFERRED: State.DELAYED,
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
    """An RQ job whose function is looked up in the task registry, never imported by path."""

    def __init__(self, *args, **kwargs):
        # RQ's class methods (fetch, create) pass serializer=None explicitly: JSON whatever the caller says
        kwargs["serializer"] = SERIALIZER
        super().__init__(*args, **kwargs)

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


def fetch_job(job_id: str, connection: Redis) -> BullJob | None:
    """The job `job_id`, or None when Redis no longer has it."""
    return BullJob.fetch_many([job_id], connection=connection, serializer=SERIALIZER)[0]
