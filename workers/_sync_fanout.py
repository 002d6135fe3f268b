"""The scheduled sync's fan-out as batches, and the run summary its onComplete callback writes. Only `workers.sync`
uses this module.

A scheduled run puts one `sync.manual` per workspace into a batch (app.runtime.flows) of at most MAX_BATCH_JOBS
workspaces (one batch holds every workspace up to that many; more make several parts, each a batch with its own
callback). The ids of the batches created so far are kept under `queues.sync_fanout_key(<scheduled job id>)`, so
a retry of the same scheduled job creates only the parts not created yet.
"""

from __future__ import annotations

import logging
from datetime import datetime

from redis import Redis

from app.errors import PermanentFailure

logger = logging.getLogger(__name__)

#: the task type of the callback that sums up a scheduled run
DONE_TASK = "sync.scheduled-done"
#: seconds the list of a scheduled job's batches is kept (covers its retries with a wide margin)
FANOUT_TTL = 24 * 3600
#: failed or canceled workspaces named one by one in a run's summary (the counts cover all of them)
MAX_LISTED = 100
#: characters of each failed workspace's error kept in the summary
MAX_ERROR_CHARS = 300
#: seconds of clock difference allowed between the batch's creation time and its jobs' registry scores
_SLACK = 3600


def fan_out(connection: Redis, job_id: str, workspaces: list[str], per_batch: int, on_part=None) -> dict:
    """Create the batches of scheduled job `job_id` that it has not created yet (one per `per_batch` workspaces);
    `on_part(created_so_far, total)` is called after each. Returns the ids of every batch of the run, in order, and
    how many workspaces this call put into a batch.

    A worker that dies between a batch's creation and the recording of its id leaves that part unrecorded: the
    retry creates it again, and those workspaces are synced twice (a sync is idempotent: the second finds them
    unchanged).
    """
    from app.runtime.flows import create_batch
    from queues import sync_fanout_key

    marker = sync_fanout_key(job_id)
    batch_ids = [raw.decode() for raw in connection.lrange(marker, 0, -1)]
    parts = [workspaces[start : start + per_batch] for start in range(0, len(workspaces), per_batch)]
    enqueued = 0
    for number, part in enumerate(parts[len(batch_ids) :], len(batch_ids) + 1):
        callback = (DONE_TASK, {"scheduledJobId": job_id, "part": number, "parts": len(parts)}, None)
        batch = create_batch(connection, [("sync.manual", {"workspaceId": w}, None) for w in part],
                             on_complete=callback)  # fmt: skip
        connection.pipeline().rpush(marker, batch.id).expire(marker, FANOUT_TTL).execute()
        batch_ids.append(batch.id)
        enqueued += len(part)
        logger.info("job %s: batch %s (part %d of %d) syncs %d workspaces", job_id, batch.id, number, len(parts),
                    len(part))
        if on_part is not None:
            on_part(min(len(workspaces), number * per_batch), len(workspaces))
    return {"batches": batch_ids, "enqueued": enqueued}


def summarize(connection: Redis, batch_id: str, scheduled_job_id: str, part: int, parts: int) -> dict:
    """The figures of one ended batch of a scheduled run: workspaces in it, completed, failed, canceled, and the
    failed and canceled ones by name (at most MAX_LISTED) with their job and error.

    Raises:
        PermanentFailure: the batch does not exist (any more), or has not ended.
    """
    from app.runtime.flows import batch_status

    status = batch_status(connection, batch_id)
    if status is None:
        raise PermanentFailure(f"batch {batch_id} of scheduled sync {scheduled_job_id} does not exist (or ended "
                               "more than 7 days ago)")
    if not status["endedAt"]:
        raise PermanentFailure(f"batch {batch_id} of scheduled sync {scheduled_job_id} has not ended "
                               f"({status['pending']} of {status['total']} workspaces pending)")
    ended = _ended_badly(connection, batch_id, datetime.fromisoformat(status["createdAt"]).timestamp())
    return {
        "scheduled_job_id": scheduled_job_id,
        "batch_id": batch_id,
        "part": part,
        "parts": parts,
        "workspaces": status["total"],
        "completed": status["completed"],
        "failed": status["failed"],
        "canceled": status["canceled"],
        "failures": ended[:MAX_LISTED],
        # deleted jobs count as canceled without a trace, and the list is capped
        "not_listed": status["failed"] + status["canceled"] - min(len(ended), MAX_LISTED),
    }


def failure_message(summary: dict) -> str:
    """One line for the error of a run in which workspaces failed: the failed workspaces first (an alert keeps the
    first 200 characters of an error), then the counts, then each failed workspace's job and error."""
    failed = [f for f in summary["failures"] if f["status"] == "failed"][:10]
    more = summary["failed"] - len(failed)
    names = ", ".join(repr(f["workspace_id"]) for f in failed) + (f" and {more} more" if more > 0 else "")
    errors = "; ".join(f"{f['workspace_id']!r} (job {f['job_id']}): {f['error']}" for f in failed)
    part = f" (part {summary['part']} of {summary['parts']})" if summary["parts"] > 1 else ""
    return (f"{summary['failed']} of {summary['workspaces']} workspaces failed for good: {names}; scheduled sync "
            f"{summary['scheduled_job_id']}{part}, batch {summary['batch_id']}: {summary['completed']} completed, "
            f"{summary['canceled']} canceled; errors: {errors}")


def _ended_badly(connection: Redis, batch_id: str, created_at: float) -> list[dict]:
    """The failed and canceled jobs of the batch, oldest end first: they are in the sync queue's failed and
    canceled registries, scored by the time they expire (their end + the queue's failure_ttl)."""
    from app.runtime.jobs import describe_job, fetch_job
    from app.tasks import get_queue_spec, queue_keys
    from queues import job_key

    keys = queue_keys("sync")
    since = created_at + get_queue_spec("sync").failure_ttl - _SLACK
    with connection.pipeline(transaction=False) as pipe:
        for registry in (keys.failed, keys.canceled):
            pipe.zrangebyscore(registry, since, "+inf", withscores=True)
        candidates = sorted((score, raw.decode()) for members in pipe.execute() for raw, score in members)
    if not candidates:
        return []
    with connection.pipeline(transaction=False) as pipe:
        for _, job_id in candidates:
            pipe.hget(job_key(job_id), "batch_id")
        owners = pipe.execute()
    found = []
    for (_, job_id), owner in zip(candidates, owners, strict=True):
        if owner is None or owner.decode() != batch_id or len(found) >= MAX_LISTED:
            continue
        job = fetch_job(job_id, connection)
        if job is None:
            continue
        shown = describe_job(job)
        found.append({
            "workspace_id": (shown["data"] or {}).get("workspace_id"),  # the handler's arguments
            "job_id": job_id,
            "status": shown["status"],
            "error": _last_line(shown["error"]),
        })  # fmt: skip
    return found


def _last_line(error: str | None) -> str:
    """The line of a traceback that says what happened (its last), shortened."""
    lines = [line.strip() for line in (error or "").strip().splitlines() if line.strip()]
    text = lines[-1] if lines else "no error recorded"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
