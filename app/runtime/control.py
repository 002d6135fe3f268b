"""Queue and job controls: pause, resume, cancel, retry-failed, run now, clean, empty, delete, compact.

Every control works on Redis alone, across all workers on all machines, and is safe to call at any time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from redis import Redis
from rq.utils import str_to_date

from app.errors import InvalidJobError, JobStateError
from app.runtime.enqueue import DEDUP_TTL
from app.runtime.groups import waiting_lists
from app.runtime.jobs import State, state_of
from app.runtime.leases import rq_time
from app.runtime.redis_scripts import SCRIPTS
from app.store.rows import stream_cap
from app.tasks import queue_keys
from queues import HISTORY_STREAM, JOB_KEY_PREFIX, NORMAL_PRIORITY, RESULTS_KEY_PREFIX, job_key, worker_commands_key

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
        [job_id, now, rq_time(now), stream_cap()],
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
    """Put failed jobs of `queue` back to wait with their attempts reset: those of `job_ids`, or all of them (all
    those failed when the call began; jobs failing meanwhile wait for the next call).

    Returns:
        The ids requeued (ids not in the failed registry are skipped).
    """
    registry = queue_keys(queue).failed
    if job_ids is not None:
        ids = list(job_ids)
        return [job for start in range(0, len(ids), BATCH) for job in _requeue(connection, queue, registry,
                                                                                ids[start : start + BATCH])]
    # Only the jobs failed when the call began: under steady failures, jobs put back fail again and return to the
    # registry, and a loop until it is empty would never end. New failures score later (their end + failure TTL)
    # than the snapshot's last one; the count bounds the work even if a queue's failure TTL was shortened.
    last = connection.zrange(registry, -1, -1, withscores=True)
    if not last:
        return []
    cutoff, budget = last[0][1], connection.zcard(registry)
    requeued: list[str] = []
    while budget > 0:
        batch = _decode(connection.zrangebyscore(registry, "-inf", cutoff, start=0, num=min(BATCH, budget)))
        if not batch:
            break
        budget -= len(batch)  # the script takes every id it is given out of the registry (also expired jobs')
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


def empty(connection: Redis, queue: str, waiting: bool = True, delayed: bool = True) -> int:
    """Delete every waiting and delayed job of `queue` (running jobs finish), or only the `waiting` (in every
    priority lane) or only the `delayed` ones. Returns how many were deleted.

    Ids are taken out of the lanes with LPOP and out of the delayed set with ZREM before their jobs are deleted:
    a job a worker takes meanwhile is never deleted under it, and a job pushed back meanwhile is never lost.
    """
    keys = queue_keys(queue)
    removed = 0
    for lane in waiting_lists(connection, queue) if waiting else ():
        while batch := _decode(connection.lpop(lane, BATCH) or []):
            _delete_jobs(connection, batch)
            removed += len(batch)
    while delayed and (batch := _decode(connection.zrange(keys.scheduled, 0, BATCH - 1))):
        removed += len(_delete(connection, keys.scheduled, batch))
    logger.info("queue %s: emptied, %d job(s) deleted", queue, removed)
    return removed


def delete(connection: Redis, job_id: str) -> str:
    """Delete a job that is not running: a waiting one (taken out of its lane), a delayed or an ended one.

    The job is taken out of where it waits before it is deleted, so a job a worker took meanwhile is never
    deleted under it; its dedup key is freed.

    Returns:
        The Bull state the job was in.

    Raises:
        InvalidJobError: no such job.
        JobStateError: the job is running (cancel it instead), or it started meanwhile.
    """
    origin, status, group, priority = connection.hmget(job_key(job_id), "origin", "status", "group", "priority")
    if origin is None:
        raise InvalidJobError(f"no job {job_id!r}")
    keys = queue_keys(origin.decode())
    state = state_of((status or b"").decode() or None)
    if state is State.WAITING:
        lanes = keys.lanes
        if group:  # and its lane too: a job enqueued before its queue had groups
            lanes = [keys.group_lane(group.decode(), int(priority or NORMAL_PRIORITY)), *lanes]
        with connection.pipeline(transaction=False) as pipe:
            for lane in lanes:
                pipe.lrem(lane, 0, job_id)
            taken = any(pipe.execute())
    elif state in (State.DELAYED, State.DEFERRED):
        taken = bool(connection.zrem(keys.scheduled if state is State.DELAYED else keys.deferred, job_id))
    elif state in (State.COMPLETED, State.FAILED, State.CANCELED):
        registry = {State.COMPLETED: keys.finished, State.FAILED: keys.failed}.get(state, keys.canceled)
        taken = bool(connection.zrem(registry, job_id))  # not when put back to run meanwhile
    else:
        taken = False
    if not taken:
        now = state_of((connection.hget(job_key(job_id), "status") or b"").decode() or None)
        raise JobStateError(f"job {job_id!r} is {now.value if now else 'gone'}: a running job cannot be deleted; "
                            "cancel it instead")
    _delete_jobs(connection, [job_id])
    logger.info("job %s: deleted (was %s)", job_id, state.value)
    return state.value


def compact(connection: Redis, queue: str) -> int:
    """Drop from `queue`'s lanes the ids of jobs that no longer exist. Returns how many ids were dropped.

    Workers skip such ids anyway; this only makes the counts exact again. Safe beside running workers.
    """
    removed = 0
    for lane in queue_keys(queue).lanes:
        start = 0
        while True:
            dropped, seen = SCRIPTS.compact(connection, [lane], [JOB_KEY_PREFIX, start, BATCH])
            removed += dropped
            if seen < BATCH:
                break
            start += seen - dropped
    logger.info("queue %s: compacted, %d stale id(s) dropped", queue, removed)
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
    """Delete the jobs and their results; a dedup key goes only while its job still holds it (compared in Lua)."""
    if job_ids:
        SCRIPTS.delete(connection, [], [JOB_KEY_PREFIX, RESULTS_KEY_PREFIX, stream_cap(), *job_ids])


def _decode(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def _epoch(stamp: str) -> float:
    return str_to_date(stamp).timestamp()
