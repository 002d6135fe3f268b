"""Redis connections built from the settings."""

from __future__ import annotations

import time

from redis import Redis
from redis.exceptions import RedisError

from app.config import Settings, redact

#: seconds to wait for Redis to accept a connection or answer
CONNECT_TIMEOUT = 5


def redis_from_url(url: str, **kwargs) -> Redis:
    """A Redis client for `url` (bytes responses, as RQ expects) with bounded connect and socket timeouts."""
    kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
    kwargs.setdefault("health_check_interval", 30)
    return Redis.from_url(url, **kwargs)


def get_redis(settings: Settings) -> Redis:
    """The Redis client of these settings."""
    return redis_from_url(settings.redis_url)


def ping(connection: Redis) -> float:
    """Round-trip time of a PING in milliseconds; raises RedisError when Redis does not answer."""
    start = time.perf_counter()
    connection.ping()
    return (time.perf_counter() - start) * 1000


def describe_redis_failure(settings: Settings, exc: RedisError) -> str:
    """One line for a person: which Redis, found where, and what went wrong (no password)."""
    where = {"env": "from the environment", "run-dir": "started by scripts/up", "default": "the default"}
    return f"Redis at {redact(settings.redis_url)} ({where[settings.redis_url_source]}) is unreachable: {exc}"
