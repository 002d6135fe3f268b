"""What handlers share inside one worker process: the settings, a Redis client and a PostgreSQL pool.

Each is built on first use and kept for the process; a forked child (queues with fork isolation) builds its own,
because sockets inherited from the parent must not be used by two processes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import redis

from app.config import Settings, load_settings
from app.connections import redis_from_url

_cache: dict[str, object] = {}
_owner: list[int] = []
_lock = threading.RLock()  # handlers that fan out over threads may ask for a resource at the same moment


def _here() -> dict[str, object]:
    """This process's resources (dropped, unclosed, after a fork: the parent still owns those sockets)."""
    if _owner != [os.getpid()]:
        _cache.clear()
        _owner[:] = [os.getpid()]
    return _cache


def _get(name: str, build):
    with _lock:
        cache = _here()
        if name not in cache:
            cache[name] = build()
        return cache[name]


def settings() -> Settings:
    """The product's settings, read once per process."""
    return _get("settings", load_settings)


def redis_client() -> redis.Redis:
    """A Redis client for handler data (caches, markers), on the product's Redis."""
    return _get("redis", lambda: redis_from_url(settings().redis_url))


@contextmanager
def database() -> Iterator[psycopg.Connection]:
    """A pooled PostgreSQL connection (rows as dicts); the transaction commits when the block ends without error."""
    from app.store.db import open_pool

    pool = _get("pool", lambda: open_pool(settings().database_url, min_size=0, max_size=4, name="bullrq-handlers"))
    with pool.connection() as conn:
        yield conn
