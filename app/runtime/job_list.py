"""One page of the jobs in a state, across queues, read without touching the rest: listing the newest 50 of a
million failed jobs costs what listing 50 of 60 costs.

Three round trips whatever the sizes: the size of every source (a lane, a registry), the id ranges of just the
sources the page falls into, then the jobs themselves.
"""

from __future__ import annotations

import time

from redis import Redis

from app.runtime.groups import waiting_lists
from app.runtime.jobs import BullJob, State, describe_job
from app.runtime.leases import lease_score
from app.tasks import queue_keys
from queues import QUEUES


def _sources(connection: Redis, queue: str, state: State) -> list[tuple[str, str]]:
    """Where jobs of `state` wait in `queue`, in listing order: (kind, key)."""
    keys = queue_keys(queue)
    if state is State.WAITING:  # priority 1 first, each list FIFO; a priority's groups after its lane
        return [("list", key) for key in waiting_lists(connection, queue)]
    if state is State.ACTIVE:
        return [("leased", keys.started)]  # entries whose lease ran out belong to dead workers, about to recover
    if state is State.DELAYED:
        return [("ascending", keys.scheduled)]  # soonest first
    if state is State.DEFERRED:
        return [("ascending", keys.deferred)]  # oldest first
    registry = {State.COMPLETED: keys.finished, State.FAILED: keys.failed, State.CANCELED: keys.canceled}[state]
    return [("descending", registry)]  # scored by expiry: newest first


def list_jobs(connection: Redis, state: State, queue: str | None = None, limit: int = 50, offset: int = 0) -> dict:
    """Jobs of `state` (in `queue`, or in every queue in declaration order), `limit` of them from `offset`.

    Returns:
        `{"jobs": [...], "total": n, "limit", "offset"}`, each job as `describe_job` shows it.
    """
    now = lease_score(time.time())  # only compared with lease scores
    sources = [source for name in ([queue] if queue else list(QUEUES)) for source in _sources(connection, name, state)]
    pipe = connection.pipeline(transaction=False)
    for kind, key in sources:
        if kind == "list":
            pipe.llen(key)
        elif kind == "leased":
            pipe.zcount(key, now, "+inf")
        else:
            pipe.zcard(key)
    sizes = pipe.execute()

    skip, wanted = offset, limit
    for (kind, key), size in zip(sources, sizes, strict=True):
        if wanted <= 0:
            break
        if skip >= size:
            skip -= size
            continue
        stop = skip + wanted - 1
        if kind == "list":
            pipe.lrange(key, skip, stop)
        elif kind == "leased":
            pipe.zrangebyscore(key, now, "+inf", start=skip, num=wanted)
        elif kind == "ascending":
            pipe.zrange(key, skip, stop)
        else:
            pipe.zrevrange(key, skip, stop)
        wanted -= min(size - skip, wanted)
        skip = 0
    ids = [raw.decode() for ids in pipe.execute() for raw in ids][:limit]
    jobs = [job for job in BullJob.fetch_many(ids, connection=connection) if job is not None]
    return {"jobs": [describe_job(job) for job in jobs], "total": sum(sizes), "limit": limit, "offset": offset}
