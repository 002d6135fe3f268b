"""Flows: batches of jobs with callbacks, and what a dependent job reads of its parents.

Dependencies are job options (`dependsOn`, `onParentFailure`: app.runtime.enqueue); their transitions, and a
batch's counting and callbacks, happen inside the job path's Lua scripts (`lua/include/flows.lua`), in the same
step as the job's own end, so a crash between two steps cannot lose or repeat one. Imports what the runtime may
(enqueue's request building, jobs, progress, the scripts, app.store.rows, app.tasks, queues).
"""

from __future__ import annotations

import functools
import json
import time
from base64 import b64decode
from datetime import UTC, datetime
from typing import Any, NamedTuple

from redis import Redis

from app.errors import BullrqError, InvalidJobError, JobDataTooLargeError
from app.runtime.enqueue import JobOptions, _prepare, _Request, check_parents, new_job_id, request_from_json
from app.runtime.jobs import SERIALIZER, state_of
from app.runtime.progress import current_connection, current_job
from app.runtime.redis_scripts import SCRIPTS
from app.store.rows import stream_cap
from app.tasks import get_task
from queues import batch_key, job_key, results_key

#: jobs one batch may hold
MAX_BATCH_JOBS = 10_000
#: jobs created per round trip while a batch is built
CHUNK = 500
#: a batch's callbacks, by their option name
CALLBACKS = ("onSuccess", "onComplete")

JobRequest = tuple[str, dict | None, JobOptions | dict | None]


class Batch(NamedTuple):
    id: str
    job_ids: list[str]
    callbacks: dict[str, str]  #: "onSuccess" / "onComplete" -> the callback job's id


def create_batch(
    connection: Redis,
    jobs: list[JobRequest],
    on_success: JobRequest | None = None,
    on_complete: JobRequest | None = None,
) -> Batch:
    """Create the jobs of a batch, and its callbacks: `on_complete` runs once every job has ended, `on_success`
    once every job has completed (it is canceled when one failed or was canceled). Each fires exactly once, in the
    step that records the last job's end.

    Every request is validated before anything is written. A callback whose task takes a `batch_id` argument is
    given the batch's id.

    Raises:
        InvalidJobError: a request is not acceptable (the message names which), or the batch is empty or too big.
    """
    if not isinstance(jobs, list) or not 1 <= len(jobs) <= MAX_BATCH_JOBS:
        raise InvalidJobError(f"a batch holds 1 to {MAX_BATCH_JOBS} jobs")
    batch_id = new_job_id()
    requests = [_batch_job(batch_id, n, request) for n, request in enumerate(jobs)]
    callbacks = {
        name: _callback(batch_id, name, request)
        for name, request in zip(CALLBACKS, (on_success, on_complete), strict=True)
        if request is not None
    }
    check_parents(connection, requests)

    def open_batch(pipe):
        pipe.hset(batch_key(batch_id), mapping={
            "state": "creating", "total": 0, "pending": 0, "completed": 0, "failed": 0, "canceled": 0,
            "created_at": time.time(),
            **{_FIELD[name]: request.id for name, request in callbacks.items()},
        })  # fmt: skip
        _enqueue_all(list(callbacks.values()), pipe)

    SCRIPTS.execute(connection, open_batch)
    missing = []
    try:
        for start in range(0, len(requests), CHUNK):
            chunk = requests[start : start + CHUNK]
            replies = SCRIPTS.execute(connection, functools.partial(_enqueue_all, chunk))
            missing += [job_id.decode() for made, job_id in replies if made == -1]
    finally:  # the jobs created are the batch, even when the rest could not be: their end fires the callbacks
        SCRIPTS.seal(connection, [batch_key(batch_id)], [batch_id, stream_cap()])
    if missing:
        raise InvalidJobError(f"batch {batch_id} holds {len(requests) - len(missing)} of its {len(requests)} jobs: "
                              f"parent {missing[0]!r} ended and expired while the batch was created")
    return Batch(batch_id, [r.id for r in requests], {name: r.id for name, r in callbacks.items()})


def _enqueue_all(requests: list[_Request], pipe) -> None:
    for request in requests:
        pipe.execute_command(*request.command)


def batch_from_json(body: Any) -> dict:
    """`create_batch`'s arguments from a batch's JSON form: `{"jobs": [{type, data, options}, ...], "onSuccess":
    {type, data, options}, "onComplete": {...}}` (callbacks optional).

    Raises:
        InvalidJobError: `body` is not of that form; the message names the part.
    """
    if not isinstance(body, dict):
        raise InvalidJobError("a batch must be a JSON object: {jobs, onSuccess, onComplete}")
    unknown = sorted(set(body) - {"jobs", *CALLBACKS})
    if unknown:
        raise InvalidJobError(f"unknown field {unknown[0]!r}; fields: jobs, {', '.join(CALLBACKS)}")
    jobs = body.get("jobs")
    if not isinstance(jobs, list):
        raise InvalidJobError("'jobs' must be a list of {type, data, options}")
    callbacks = {name: None if body.get(name) is None else request_from_json(body[name], f"{name}: ")
                 for name in CALLBACKS}  # fmt: skip
    return {
        "jobs": [request_from_json(job, f"job {n}: ") for n, job in enumerate(jobs)],
        "on_success": callbacks["onSuccess"],
        "on_complete": callbacks["onComplete"],
    }


#: the batch hash's field holding each callback's job id
_FIELD = {"onSuccess": "on_success", "onComplete": "on_complete"}


def _batch_job(batch_id: str, number: int, request: Any) -> _Request:
    task_type, data, options = _unpack(request, f"job {number}")
    opts = options if isinstance(options, JobOptions) else _parse(options, f"job {number}")
    if opts.dedup:
        raise InvalidJobError(
            f"job {number}: option 'jobId' is not available in a batch (a job it would not "
            "create could never end, and the batch with it)"
        )
    return _named(f"job {number}", lambda: _prepare(task_type, data, opts, batch_id=batch_id))


def _callback(batch_id: str, name: str, request: Any) -> _Request:
    task_type, data, options = _unpack(request, name)
    opts = options if isinstance(options, JobOptions) else _parse(options, name)
    if opts.dedup or opts.depends_on or opts.delay:
        raise InvalidJobError(
            f"{name}: options 'jobId', 'dependsOn' and 'delay' do not apply to a callback (it runs when its batch ends)"
        )
    task = _named(name, lambda: get_task(task_type))
    if task.takes("batch_id"):
        data = {**(data or {}), "batchId": batch_id}
    return _named(name, lambda: _prepare(task_type, data, opts, batch_id=batch_id, held=True))


def _unpack(request: Any, what: str) -> JobRequest:
    if isinstance(request, tuple) and len(request) == 3:
        return request
    raise InvalidJobError(f"{what}: expected (type, data, options)")


def _parse(options: Any, what: str) -> JobOptions:
    return _named(what, lambda: JobOptions.parse(options))


def _named(what: str, build):
    """`build()`; a refusal of the request (unknown type or queue, bad data or options) names `what` (which job of
    the batch) before its own message."""
    try:
        return build()
    except JobDataTooLargeError:
        raise  # its own answer (413), with the sizes
    except BullrqError as exc:
        raise InvalidJobError(f"{what}: {exc}") from None


def batch_status(connection: Redis, batch_id: str) -> dict | None:
    """A batch's counts and state, and its callbacks' job ids and states; None when there is no such batch (or
    it ended more than BATCH_TTL ago).

    `state`: creating (its jobs are being created), active, completed (every job completed), failed (every job
    ended, one or more failed or canceled).
    """
    raw = connection.hgetall(batch_key(batch_id))
    if not raw:
        return None
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    callbacks = {name: fields[_FIELD[name]] for name in CALLBACKS if _FIELD[name] in fields}
    with connection.pipeline(transaction=False) as pipe:
        for job_id in callbacks.values():
            pipe.hget(job_key(job_id), "status")
        statuses = pipe.execute()
    return {
        "batchId": batch_id,
        "state": fields.get("state"),
        **{name: int(fields.get(name) or 0) for name in ("total", "pending", "completed", "failed", "canceled")},
        "createdAt": _iso(fields.get("created_at")),
        "endedAt": _iso(fields.get("ended_at")),
        "callbacks": {
            name: {"jobId": job_id, "state": _state(status), "fired": f"{_FIELD[name]}_fired" in fields}
            for (name, job_id), status in zip(callbacks.items(), statuses, strict=True)
        },
    }


def _state(status: bytes | None) -> str | None:
    state = state_of(status.decode()) if status else None
    return state.value if state else None


def _iso(epoch: str | None) -> str | None:
    return datetime.fromtimestamp(float(epoch), UTC).isoformat() if epoch else None


def parent_results(connection: Redis | None = None, job_id: str | None = None) -> dict[str, Any]:
    """Inside a handler: what each parent of the running job returned, by parent id (a parent whose result has
    expired, or that failed and was ignored, gives None).

    Raises:
        RuntimeError: called outside a running job, without `job_id`.
    """
    if job_id is None:
        job = current_job()
        if job is None:
            raise RuntimeError("parent_results() is only available inside a running job")
        job_id = job.id
    connection = connection or current_connection()
    raw = connection.hget(job_key(job_id), "dependency_ids")
    parents = json.loads(raw) if raw else []
    with connection.pipeline(transaction=False) as pipe:
        for parent in parents:
            pipe.xrevrange(results_key(parent), count=1)
        entries = pipe.execute()
    return {parent: _return_value(entry) for parent, entry in zip(parents, entries, strict=True)}


def _return_value(entries: list) -> Any:
    if not entries:
        return None
    fields = entries[0][1]
    value = fields.get(b"return_value")
    return SERIALIZER.loads(b64decode(value)) if value else None
