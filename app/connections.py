"""Redis connections built from the settings."""

from __future__ import annotations

import time

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel

from app import sentinel
from app.config import Settings, redact

#: seconds to wait for Redis to accept a connection or answer
CONNECT_TIMEOUT = 5
#: seconds to wait for a sentinel (its answers are small and quick; a silent one is skipped)
SENTINEL_TIMEOUT = 1


def redis_from_url(url: str, **kwargs) -> Redis:
    """A Redis client for `url` (bytes responses, as RQ expects) with bounded connect and socket timeouts.

    A `redis+sentinel://` URL (see `app.sentinel`) gives a client of the master the sentinels name: each new
    connection asks them, and a connection to a master demoted by a failover is dropped, so commands after a
    failover reach the promoted replica.
    """
    kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
    kwargs.setdefault("health_check_interval", 30)
    if not sentinel.is_sentinel_url(url):
        return Redis.from_url(url, **kwargs)
    target = sentinel.parse(url)
    sentinels = Sentinel(
        target.sentinels,
        # A sentinel that hangs must not hold up the search: it gets one short try, then the next one is asked
        # (redis-py's default would retry it ten times).
        sentinel_kwargs={
            "password": target.sentinel_password,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
            "socket_timeout": SENTINEL_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
        },
    )
    return sentinels.master_for(
        target.master, db=target.db, username=target.username, password=target.password, **kwargs
    )


def get_redis(settings: Settings) -> Redis:
    """The Redis client of these settings."""
    return redis_from_url(settings.redis_url)


def ping(connection: Redis) -> float:
    """Round-trip time of a PING in milliseconds; raises RedisError when Redis does not answer."""
    start = time.perf_counter()
    connection.ping()
    return (time.perf_counter() - start) * 1000


#: the only maxmemory-policy under which Redis never deletes a key on its own
SAFE_POLICY = "noeviction"
#: the variable that lets workers start on a Redis that may evict keys
ALLOW_EVICTION_VARIABLE = "BULLRQ_ALLOW_EVICTION"


def eviction_policy(connection: Redis) -> str | None:
    """Redis' maxmemory-policy, read from INFO (hosted Redis often refuses CONFIG GET); None if it does not say."""
    return connection.info("memory").get("maxmemory_policy")


def eviction_problem(policy: str | None) -> str | None:
    """One line when `policy` lets Redis evict keys (jobs, leases, locks and dedup keys would vanish silently)."""
    if policy is None or policy == SAFE_POLICY:
        return None
    return (f"Redis maxmemory-policy is {policy}: once memory is full it deletes keys (jobs, leases, dedup keys) "
            f"without a word; set maxmemory-policy {SAFE_POLICY}")


def describe_redis_failure(settings: Settings, exc: RedisError) -> str:
    """One line for a person: which Redis, found where, and what went wrong (no password)."""
    where = {"env": "from the environment", "run-dir": "started by scripts/up", "default": "the default"}
    hint = ""
    if settings.redis_url_source == "default":  # nothing published in the run directory: say where we looked
        hint = (f"; no local Redis runs for the run directory {settings.home.root} (start ./scripts/up, or set "
                "REDIS_URL, or BULLRQ_HOME to the run directory scripts/up uses)")
    return f"Redis at {redact(settings.redis_url)} ({where[settings.redis_url_source]}) is unreachable: {exc}{hint}"
