"""Groups within a queue (job option `group`, e.g. a workspace): where their jobs wait and what each holds.

A job of a group waits in its group's list for its priority; the groups with jobs waiting at a priority form that
priority's ring, taken in turns by the dequeue script (`lua/dequeue-n.lua`, `lua/include/waiting.lua`), with the
jobs without a group as one more turn, so one group's backlog never holds the others back. May import app.tasks,
app.runtime.leases and queues.
"""

from __future__ import annotations

import time

from redis import Redis

from app.runtime.leases import lease_score
from app.tasks import get_queue_spec, queue_keys
from queues import PRIORITY_RANGE, job_key


def waiting_groups(connection: Redis, queue: str) -> list[tuple[int, str]]:
    """(priority, group) of every group with jobs waiting in `queue`, priority 1 first, each in its turn's order."""
    return waiting_groups_of(connection, [queue])[queue]


def waiting_groups_of(connection: Redis, queues: list[str]) -> dict[str, list[tuple[int, str]]]:
    """`waiting_groups` of each queue, in one round trip (the rings of every priority)."""
    with connection.pipeline(transaction=False) as pipe:
        for queue in queues:
            for ring in queue_keys(queue).rings:
                pipe.zrange(ring, 0, -1)
        rings = iter(pipe.execute())
    return {queue: [(p, g.decode()) for p in PRIORITY_RANGE for g in next(rings) if g] for queue in queues}


def waiting_lists(connection: Redis, queue: str) -> list[str]:
    """Every list where jobs of `queue` wait: its lanes, priority 1 first, each followed by its groups' lists."""
    return waiting_lists_of(connection, [queue])[queue]


def waiting_lists_of(connection: Redis, queues: list[str]) -> dict[str, list[str]]:
    """`waiting_lists` of each queue, in one round trip."""
    groups = waiting_groups_of(connection, queues)
    lists = {}
    for queue in queues:
        keys = queue_keys(queue)
        lists[queue] = [key for p in PRIORITY_RANGE
                        for key in (keys.lane(p), *(keys.group_lane(g, gp) for gp, g in groups[queue] if gp == p))]
    return lists


def grouped_waiting(connection: Redis, queue: str) -> dict[int, int]:
    """Jobs of groups waiting in `queue`, by priority."""
    keys = queue_keys(queue)
    groups = waiting_groups(connection, queue)
    with connection.pipeline(transaction=False) as pipe:
        for priority, group in groups:
            pipe.llen(keys.group_lane(group, priority))
        counts = pipe.execute()
    by_priority: dict[int, int] = {}
    for (priority, _), waiting in zip(groups, counts, strict=True):
        by_priority[priority] = by_priority.get(priority, 0) + waiting
    return by_priority


def group_stats(connection: Redis, queue: str) -> dict:
    """Per group of `queue`: jobs waiting, jobs running, and the most that may run at once (None: no limit).

    Returns `{"queue", "groups": {name: {"waiting", "active", "limit"}}}`; groups with no job waiting or running
    are not listed.
    """
    keys = queue_keys(queue)
    groups = waiting_groups(connection, queue)
    live = connection.zrangebyscore(keys.started, lease_score(time.time()), "+inf")
    with connection.pipeline(transaction=False) as pipe:
        for priority, group in groups:
            pipe.llen(keys.group_lane(group, priority))
        for member in live:
            pipe.hget(job_key(member.decode().rsplit(":", 1)[0]), "group")
        pipe.hgetall(keys.group_limits)
        replies = pipe.execute()
    shown: dict[str, dict] = {}
    for (_, group), waiting in zip(groups, replies, strict=False):
        shown.setdefault(group, {"waiting": 0, "active": 0})["waiting"] += waiting
    for group in replies[len(groups) : len(groups) + len(live)]:
        if group:
            shown.setdefault(group.decode(), {"waiting": 0, "active": 0})["active"] += 1
    limits = {k.decode(): int(v) for k, v in replies[-1].items()}
    default = get_queue_spec(queue).group_concurrency
    for name, counts in shown.items():
        counts["limit"] = limits.get(name, default)
    return {"queue": queue, "groups": dict(sorted(shown.items()))}
