"""Leases of running jobs: a worker holds one per running job and renews it while it lives.

A lease is the job's entry in RQ's started registry (`rq:wip:<queue>`), "<job id>:<execution id>" scored by the
time it ends. A worker that dies stops renewing, its lease expires, and any live worker recovers the job.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from redis import Redis
from rq.utils import utcformat

from app.history import stream_cap
from app.redis_scripts import SCRIPTS
from queues import HISTORY_STREAM, JOB_KEY_PREFIX, queue_keys

#: seconds a lease lasts; renewed every `maintenance.RENEW_INTERVAL` while the worker lives, so the job of a dead
#: worker is recovered within about LEASE seconds, and a healthy job of any length never is
LEASE = 20


def rq_time(epoch: float) -> str:
    """`epoch` in the date format RQ stores in job hashes."""
    return utcformat(datetime.fromtimestamp(epoch, UTC))


def recover(
    connection: Redis,
    queue: str,
    lease: str | None = None,
    consume_attempt: bool = True,
    reason: str = "abandoned: its worker stopped renewing the lease",
    limit: int = 100,
) -> list[tuple[str, str]]:
    """Take back jobs from dead workers: the expired leases of `queue`, or the leases starting with `lease`.

    `lease` is a lease member ("<job id>:<execution id>") or the prefix one worker gives all of its members
    ("<job id>:<execution prefix>", see `lease_prefix`): a job retaken by another worker is never touched.

    Each goes back to the front of its lane, or to the failed registry when no attempt is left.

    Returns:
        (job id, "requeued" | "failed" | "canceled") per job taken back.
    """
    keys = queue_keys(queue)
    now = time.time()
    reply = SCRIPTS.recover(
        connection,
        [keys.started, keys.failed, keys.marker, keys.stats, *keys.lanes, HISTORY_STREAM, keys.canceled],
        [now, rq_time(now), JOB_KEY_PREFIX, limit, lease or "expired", int(consume_attempt), reason, stream_cap()],
    )
    return [(reply[i].decode(), reply[i + 1].decode()) for i in range(0, len(reply), 2)]
