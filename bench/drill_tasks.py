"""Task types of the fault drills, registered in the drills' worker processes through bench/preload.

`drill.gated` holds a job until the drill opens its gate (a Redis list), so a drill can damage a process while the
job is certainly still running, however slow the machine, instead of hoping a sleep outlasts the damage.
"""

from __future__ import annotations

import os
import time

import redis

from app.tasks import task
from bench.gates import pass_gate

GATED = "drill.gated"
#: seconds a gated job waits for its gate at most
GATE_WAIT = 300
_clients: dict[int, redis.Redis] = {}


def gate_key(tag: str) -> str:
    return f"drill:gate:{tag}"


def started_key(tag: str) -> str:
    """Redis list of the times `tag` started a run (one entry per run)."""
    return f"drill:started:{tag}"


def open_gate(connection: redis.Redis, tag: str, runs: int = 1) -> None:
    """Let `runs` runs of `tag` go on past the gate (a run already waiting, or the next ones)."""
    connection.rpush(gate_key(tag), *["go"] * runs)


def _redis() -> redis.Redis:
    pid = os.getpid()  # a forked work horse gets its own client
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=None)
    return _clients[pid]


@task(GATED, queue=None)
def gated(tag: str, wait: float = GATE_WAIT) -> str:
    """Record the start, then wait (at most `wait` seconds) for the drill to open the gate of `tag`."""
    client = _redis()
    client.rpush(started_key(tag), time.time())
    return "opened" if pass_gate(client, gate_key(tag), wait) else "gate timeout"
