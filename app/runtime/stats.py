"""Queue statistics in Bull's terms, read from Redis in two round trips for all queues."""

from __future__ import annotations

import time

from redis import Redis

from app.runtime.groups import grouped_waiting
from app.runtime.leases import lease_score
from app.tasks import queue_keys
from queues import QUEUES


def queue_stats(connection: Redis) -> dict:
    """Every queue's counts and controls: `{"queues": {name: {...}}, "workers": n}` (SPEC's stats shape).

    Per queue: waiting, active, delayed, deferred, completed, failed, canceled (jobs now in each state), paused,
    workers,
    the concurrency cap and rate limit with their current use, and totals counted since the queue began.
    """
    now = time.time()
    names = list(QUEUES)
    pipe = connection.pipeline(transaction=False)
    for name in names:
        keys = queue_keys(name)
        for lane in keys.lanes:
            pipe.llen(lane)
        pipe.zcount(keys.started, lease_score(now), "+inf")
        pipe.zcard(keys.started)
        pipe.zcard(keys.scheduled)
        pipe.zcard(keys.deferred)
        pipe.zcard(keys.finished)
        pipe.zcard(keys.failed)
        pipe.zcard(keys.canceled)
        pipe.exists(keys.paused)
        pipe.get(keys.limiter)
        pipe.pttl(keys.limiter)
        pipe.hgetall(keys.stats)
        pipe.smembers(keys.workers)
        pipe.exists(keys.turn)
    replies = iter(pipe.execute())

    result, worker_keys = {}, {}
    for name in names:
        spec = QUEUES[name]
        lanes = [next(replies) for _ in range(10)]
        active, leased, delayed, deferred, completed, failed, canceled, paused, used, reset_ms, totals, workers = (
            next(replies) for _ in range(12)
        )
        if next(replies):  # the queue has had groups: their jobs wait in their groups' lists
            for priority, waiting in grouped_waiting(connection, name).items():
                lanes[priority - 1] += waiting
        worker_keys[name] = [w.decode() for w in workers]
        result[name] = {
            "waiting": sum(lanes),
            "active": active,
            "delayed": delayed,
            "deferred": deferred,  #: waiting for their parents or their batch
            "completed": completed,
            "failed": failed,
            "canceled": canceled,
            "paused": bool(paused),
            "workers": 0,
            "abandoned": leased - active,  #: running jobs whose worker died, about to be recovered
            "waiting_by_priority": {p: n for p, n in enumerate(lanes, start=1) if n},
            "concurrency": {"limit": spec.concurrency, "running": active},
            "rate_limit": None
            if spec.rate_limit is None
            else {
                "max": spec.rate_limit.max_jobs,
                "period": spec.rate_limit.period,
                "used": int(used or 0),
                "resets_in_ms": max(0, reset_ms),
            },
            "totals": {k.decode(): int(v) for k, v in totals.items()},
        }
    # registrations of dead workers linger in RQ's per-queue sets until RQ cleans them: count live ones
    every = sorted({w for ws in worker_keys.values() for w in ws})
    alive = dict(zip(every, _exists(connection, every), strict=True))
    for name in names:
        result[name]["workers"] = sum(1 for w in worker_keys[name] if alive.get(w))
    return {"queues": result, "workers": sum(alive.values())}


def _exists(connection: Redis, keys: list[str]) -> list[bool]:
    if not keys:
        return []
    pipe = connection.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return [bool(n) for n in pipe.execute()]
