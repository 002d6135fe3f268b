"""Queue and job controls: pause, resume, cancel, retry-failed, run now, clean, empty.

Every control works on Redis alone, across all workers on all machines, and is safe to call at any time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from redis import Redis
from rq.utils import str_to_date

from app.enqueue import DEDUP_TTL
from app.errors import InvalidJobError, JobStateError
from app.history import stream_cap
from app.jobs import state_of
from app.leases import rq_time
from app.redis_scripts import SCRIPTS
from queues import HISTORY_STREAM, JOB_KEY_PREFIX, get_queue_spec, job_key, queue_keys, results_key, worker_commands_key

logger = logging.getLogger(__name__)

#: ids handled per Redis call while cleaning or emptying, so no call blocks Redis for more than a few ms
BATCH = 200
#: states `clean` removes, and the registry that holds each
CLEANABLE = ("completed", "failed", "canceled")
#: seconds a command for a worker waits to be picked up
COMMAND_TTL = 24 * 3600


def pause(connection: Redis, queue: str) -> None:
    """Stop workers from starting jobs of `queue` (running jobs finish; enqueueing still works)."""
    connection.set(queue_keys(queue).paused, "1")
    logger.info("queue %s: paused", queue)


def resume(connection: Redis, queue: str) -> None:
    """Let workers start jobs of `queue` again, at once."""
    keys = queue_keys(queue)
    with connection.pipeline() as pipe:
        pipe.delete(keys.paused)
        pipe.lpush(keys.marker, "1")  # wake an idle worker now rather than at its next look
        pipe.ltrim(keys.marker, 0, 0)
        pipe.execute()
    logger.info("queue %s: resumed", queue)


def cancel(connection: Redis, job_id: str) -> str:
    """Cancel a job: a waiting or delayed one at once; a running one is stopped by its worker (which survives).

    Returns:
        "canceled", "canceling" (its worker was told), or the state that cannot be canceled
        ("finished", "failed", "canceled").

    Raises:
        InvalidJobError: no such job.
    """
    origin, worker = connection.hmget(job_key(job_id), "origin", "worker_name")
    if origin is None:
        raise InvalidJobError(f"no job {job_id!r}")
    queue = origin.decode()
    keys = queue_keys(queue)
    now = time.time()
    outcome = SCRIPTS.cancel(
        connection,
        [job_key(job_id), keys.scheduled, keys.canceled, keys.stats, *keys.lanes, HISTORY_STREAM],
        [job_id, now, rq_time(now), get_queue_spec(queue).failure_ttl, stream_cap()],
    ).decode()
    if outcome == "started" and worker:
        command_key = worker_commands_key(worker.decode())
        with connection.pipeline() as pipe:
            pipe.rpush(command_key, f"cancel {job_id}")
            pipe.expire(command_key, COMMAND_TTL)
            pipe.execute()
        outcome = "canceling"
    logger.info("job %s: cancel → %s", job_id, outcome)
    return outcome


def retry_failed(connection: Redis, queue: str, job_ids: Iterable[str] | None = None) -> list[str]:
    """Put failed jobs of `queue` back to wait with their attempts reset: those of `job_ids`, or all of them.

    Returns:
        The ids requeued (ids not in the failed registry are skipped).
    """
    registry = queue_keys(queue).failed
    if job_ids is not None:
        ids = list(job_ids)
        return [job for start in range(0, len(ids), BATCH) for job in _requeue(connection, queue, registry,
                                                                                ids[start : start + BATCH])]
    requeued: list[str] = []
    # the script takes every id it is given out of the registry (also those whose job expired): the loop ends
    while batch := _decode(connection.zrange(registry, 0, BATCH - 1)):
        requeued += _requeue(connection, queue, registry, batch)
    return requeued


def run_now(connection: Redis, job_id: str) -> str:
    """Make a job run as soon as a worker is free: a delayed job stops waiting for its time, a failed or canceled
    one is requeued with its attempts reset.

    Returns:
        "promoted" (was delayed) or "requeued" (was failed or canceled).

    Raises:
        InvalidJobError: no such job.
        JobStateError: the job is waiting, running or completed: there is nothing to run now.
    """
    origin, status = connection.hmget(job_key(job_id), "origin", "status")
    if origin is None:
        raise InvalidJobError(f"no job {job_id!r}")
    keys = queue_keys(origin.decode())
    status = (status or b"").decode()
    if status == "scheduled" and connection.zscore(keys.scheduled, job_id) is not None:
        connection.zadd(keys.scheduled, {job_id: 0}, xx=True)  # due now: the workers' next promotion pass (0.25 s)
        outcome = "promoted"
    elif status in ("failed", "canceled") and _requeue(connection, origin.decode(), getattr(keys, status), [job_id]):
        outcome = "requeued"
    else:
        state = state_of(status)
        raise JobStateError(f"job {job_id!r} is {state.value if state else status or 'unknown'}: only delayed, "
                            "failed or canceled jobs can be run now")
    logger.info("job %s: run now → %s", job_id, outcome)
    return outcome


def _requeue(connection: Redis, queue: str, registry: str, job_ids: list[str]) -> list[str]:
    """Move `job_ids` from `registry` (failed or canceled) back to their lanes, attempts reset; returns those moved."""
    keys = queue_keys(queue)
    args = [rq_time(time.time()), JOB_KEY_PREFIX, DEDUP_TTL, *job_ids]
    return _decode(SCRIPTS.requeue(connection, [registry, keys.marker, *keys.lanes], args))


def clean(connection: Redis, queue: str, state: str, grace: float = 0, limit: int | None = None) -> int:
    """Delete jobs of `queue` in `state` (completed, failed, canceled) that ended more than `grace` seconds ago.

    Works in batches of `BATCH` ids, so Redis is never blocked for long. Returns how many jobs were deleted.
    """
    if not isinstance(state, str) or state not in CLEANABLE:
        raise InvalidJobError(f"state {state!r} cannot be cleaned; use one of {', '.join(CLEANABLE)}")
    if not grace >= 0 or grace == math.inf:  # NaN compares false
        raise InvalidJobError(f"grace must be a number of seconds >= 0, not {grace!r}")
    keys = queue_keys(queue)
    registry = {"completed": keys.finished, "failed": keys.failed, "canceled": keys.canceled}[state]
    cutoff = time.time() - grace
    removed, start = 0, 0
    while limit is None or removed < limit:
        batch = _decode(connection.zrange(registry, start, start + BATCH - 1))
        if not batch:
            break
        ended = connection.pipeline(transaction=False)
        for job_id in batch:
            ended.hget(job_key(job_id), "ended_at")
        doomed = [
            job_id
            for job_id, stamp in zip(batch, ended.execute(), strict=True)
            if stamp is None or _epoch(stamp.decode()) <= cutoff
        ]
        if limit is not None:
            doomed = doomed[: limit - removed]
        taken = _delete(connection, registry, doomed) if doomed else []
        removed += len(taken)
        start += len(batch) - len(taken)
    logger.info("queue %s: cleaned %d %s job(s) older than %s s", queue, removed, state, grace)
    return removed


def empty(connection: Redis, queue: str) -> int:
    """Delete every waiting and delayed job of `queue` (running jobs finish). Returns how many were deleted.

    Ids are taken out of the lanes with LPOP and out of the delayed set with ZREM before their jobs are deleted:
    a job a worker takes meanwhile is never deleted under it, and a job pushed back meanwhile is never lost.
    """
    keys = queue_keys(queue)
    removed = 0
    for lane in keys.lanes:
        while batch := _decode(connection.lpop(lane, BATCH) or []):
            _delete_jobs(connection, batch)
            removed += len(batch)
    while batch := _decode(connection.zrange(keys.scheduled, 0, BATCH - 1)):
        removed += len(_delete(connection, keys.scheduled, batch))
    logger.info("queue %s: emptied, %d job(s) deleted", queue, removed)
    return removed


def _delete(connection: Redis, registry: str, job_ids: list[str]) -> list[str]:
    """Take `job_ids` out of `registry` and delete those this call took out (not those another caller moved)."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.zrem(registry, job_id)
        taken = [job_id for job_id, n in zip(job_ids, pipe.execute(), strict=True) if n]
    _delete_jobs(connection, taken)
    return taken


def _delete_jobs(connection: Redis, job_ids: list[str]) -> None:
    if not job_ids:
        return
    _release_dedup(connection, job_ids)
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.delete(job_key(job_id), results_key(job_id))
        pipe.execute()


def _release_dedup(connection: Redis, job_ids: list[str]) -> None:
    """Free the dedup keys held by jobs about to be deleted."""
    reads = connection.pipeline(transaction=False)
    for job_id in job_ids:
        reads.hget(job_key(job_id), "dedup_key")
    held = [key for key in reads.execute() if key]
    if held:
        connection.delete(*held)


def _decode(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def _epoch(stamp: str) -> float:
    return str_to_date(stamp).timestamp()
