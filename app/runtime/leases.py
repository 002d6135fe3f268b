"""Leases of running jobs: a worker holds one per running job and renews it while it lives.

A lease is the job's entry in RQ's started registry (`rq:wip:<queue>`), "<job id>:<execution id>" scored by the
time it ends on Redis' own clock (the scripts read it; a worker's clock never counts). A worker that dies stops
renewing, its lease expires, and any live worker recovers the job. A worker whose renewal finds its lease gone
stops the run and records nothing: the job belongs to whoever took it back.

Time during which nobody could watch (Redis down or unreachable for every worker) does not count against a lease:
after such a gap, expired leases get OUTAGE_GRACE seconds for their live owners to renew them or to record how
their runs ended, so an outage longer than the lease does not turn finished runs into abandoned ones.

Scores are milliseconds, not RQ's seconds: RQ's `StartedJobRegistry.cleanup` (run by `rq info` and by every
`registry.count`) takes each member scored up to now *in seconds* for abandoned and requeues or fails it with RQ's
semantics (no lane, no history row, pickled meta). Scored in milliseconds, a lease never looks expired to it, so
reading with RQ's tools changes nothing and only bullrq's recover script takes abandoned jobs back.
"""

from __future__ import annotations

import time

from redis import Redis

from app.runtime.redis_scripts import SCRIPTS
from app.store.rows import stream_cap
from app.tasks import queue_keys
from queues import HISTORY_STREAM, JOB_KEY_PREFIX

#: seconds a lease lasts; renewed every `maintenance.RENEW_INTERVAL` while the worker lives, so the job of a dead
#: worker is recovered within about LEASE seconds, and a healthy job of any length never is
LEASE = 20
#: seconds without a look for expired leases (every live worker looks every few seconds) that count as an outage
OUTAGE_GAP = LEASE / 2
#: seconds expired leases are left to their owners after such a gap (owners retry Redis at least every 5 s)
OUTAGE_GRACE = LEASE / 2


def lease_score(epoch: float) -> float:
    """The started-registry score of a lease ending at `epoch` (seconds): milliseconds, see above."""
    return epoch * 1000


def rq_time(epoch: float) -> str:
    """`epoch` in the date format RQ stores in job hashes (`rq.utils.utcformat`: 2026-12-02T06:43:24.123456Z).

    Every enqueue, dequeue and finish writes one or two, so the part up to the second is formatted once per second.
    """
    global _second
    whole = int(epoch)
    micro = round((epoch - whole) * 1_000_000)  # rounded half to even, as datetime.fromtimestamp does
    if micro == 1_000_000:
        whole, micro = whole + 1, 0
    second, text = _second
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)  # one rebinding: threads see the old pair or the new one
    return f"{text}.{micro:06d}Z"


_second: tuple[int, str] = (-1, "")


def recover(
    connection: Redis,
    queue: str,
    consume_attempt: bool = True,
    reason: str = "abandoned: its worker stopped renewing the lease",
    limit: int = 100,
    member: str | None = None,
) -> list[tuple[str, str]]:
    """Take back jobs from dead workers: the expired leases of `queue`, or the one lease `member` (that of a worker
    known to be dead).

    Each goes back to the front of its lane, or to the failed registry when no attempt is left.

    Returns:
        (job id, "requeued" | "failed" | "canceled") per job taken back.
    """
    keys = queue_keys(queue)
    now = time.time()
    which = f"member:{member}" if member else "expired"
    reply = SCRIPTS.recover(
        connection,
        [keys.started, keys.failed, keys.marker, keys.stats, *keys.lanes, HISTORY_STREAM, keys.canceled,
         keys.lease_clock],
        [now, rq_time(now), JOB_KEY_PREFIX, limit, which, int(consume_attempt), reason, stream_cap(), OUTAGE_GAP,
         OUTAGE_GRACE],
    )  # fmt: skip
    return [(reply[i].decode(), reply[i + 1].decode()) for i in range(0, len(reply), 2)]
