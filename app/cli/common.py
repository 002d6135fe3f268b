"""What every CLI command shares: settings, the `--redis-url` option and one-line errors for expected failures."""

from __future__ import annotations

import functools
import os
import sys

import click
from redis import Redis
from redis.exceptions import RedisError

from app.config import Settings, load_settings
from app.connections import (
    ALLOW_EVICTION_VARIABLE,
    describe_redis_failure,
    eviction_policy,
    eviction_problem,
    redis_from_url,
)
from app.errors import BullrqError, ConfigError

#: exit statuses: 1 a server is unreachable or an operation failed, 2 bad input (as click's usage errors)
EXIT_FAILURE = 1
EXIT_USAGE = 2


def fail(message: str, status: int = EXIT_FAILURE):
    """Print `error: message` on stderr and exit with `status` (no traceback for expected conditions)."""
    click.secho(f"error: {message}", err=True, fg="red")
    sys.exit(status)


def settings() -> Settings:
    """The validated settings; an invalid variable ends the command with one line naming it."""
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def redis_option(func):
    """Add `--redis-url` (default: REDIS_URL, the run directory's Redis, then localhost)."""

    @click.option("--redis-url", envvar="REDIS_URL", default=None, help="Redis to use (default: $REDIS_URL).")
    @functools.wraps(func)
    def wrapper(*args, redis_url: str | None, **kwargs):
        if redis_url:
            os.environ["REDIS_URL"] = redis_url  # processes this command spawns use the same Redis
        return func(*args, **kwargs)

    return wrapper


def connect_redis(config: Settings) -> Redis:
    """A Redis client that has answered a PING; an unreachable Redis ends the command with one line."""
    connection = redis_from_url(config.redis_url)
    try:
        connection.ping()
    except RedisError as exc:
        fail(describe_redis_failure(config, exc))
    return connection


def check_eviction(connection: Redis, refuse: bool = False, config: Settings | None = None) -> None:
    """At a process's start: say in one line when Redis may evict our keys; with `refuse` (workers), stop there
    unless BULLRQ_ALLOW_EVICTION is set."""
    problem = eviction_problem(eviction_policy(connection))
    if problem is None:
        return
    if refuse and not (config or settings()).allow_eviction:
        fail(f"{problem} (or set {ALLOW_EVICTION_VARIABLE}=1 to run workers anyway)")
    click.secho(f"warning: {problem}", err=True, fg="yellow")


def user_errors(func):
    """Turn the product's expected errors (unknown queue, bad job data, ...) into one line and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except BullrqError as exc:
            fail(str(exc), EXIT_USAGE)

    return wrapper
