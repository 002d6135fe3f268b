"""The `cache-cleanup` queue: stale Redis cache keys, the AI-result cache, and database rows past their retention.

Task types (data keys are optional overrides for one run):
- `cache.cleanup` (daily 02:00): sweeps CACHE_NAMESPACES (keys under AI_CACHE_NAMESPACES are left to
  `cache.ai_cleanup`), then deletes `sync_runs` ended more than LOG_RETENTION_DAYS ago, `notification_outbox` rows
  sent or failed more than LOG_RETENTION_DAYS ago, and temporary `document_analyses` older than
  TEMP_ANALYSIS_RETENTION_HOURS.
- `cache.ai_cleanup` (daily 03:00): sweeps AI_CACHE_NAMESPACES with AI_CACHE_MAX_IDLE_SECONDS.
  Data of both: `maxKeys` (1..1,000,000), `maxIdleSeconds` (1..30 days), `batchDelayMs` (0..10,000),
  `dryRun` (count what would go, remove and delete nothing, leave the SCAN cursors alone).

Sweep: SCAN MATCH <pattern> COUNT 100 (never KEYS), at most CACHE_SCAN_LIMIT keys examined per run (shared by the
patterns), resumed by the next run from the cursor kept in `bullrq:cache-cleanup:cursor:<pattern>`; batches of 100
keys, CACHE_BATCH_DELAY_MS apart; PTTL and OBJECT IDLETIME pipelined per batch; UNLINK, never DEL. A key with a
TTL is left for Redis to expire; a key without TTL goes once idle longer than the idle limit (see
`workers/_cleanup_redis.py`). Keys are counted once each, although SCAN may return a key twice. Patterns must
start with a fixed namespace ending in ':' and may not reach `rq:` or `bullrq:` keys other than `bullrq:cache:`.
Each run reports INFO used_memory before and after; a dry run frees nothing and says so.

Environment:
    CACHE_REDIS_URL                 Redis holding the caches (default: the product's REDIS_URL)
    CACHE_NAMESPACES                comma-separated SCAN patterns (bullrq:cache:*)
    AI_CACHE_NAMESPACES             comma-separated SCAN patterns of the AI-result cache (bullrq:cache:ai:*)
    CACHE_SCAN_LIMIT                keys examined per run (10000)
    CACHE_BATCH_DELAY_MS            milliseconds between batches of 100 keys (100)
    CACHE_MAX_IDLE_SECONDS          idle time after which a key without TTL goes (21600: 6 h)
    AI_CACHE_MAX_IDLE_SECONDS       the same for the AI-result cache (86400: 24 h)
    LOG_RETENTION_DAYS              sync_runs and sent/failed notification_outbox rows (30)
    TEMP_ANALYSIS_RETENTION_HOURS   document_analyses with temporary = true (48)
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

from app.config import env_number, env_redis_url, environment
from app.errors import ConfigError, InvalidJobError, PermanentFailure, ServiceUnavailableError
from app.tasks import task

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACES = "bullrq:cache:*"
DEFAULT_AI_NAMESPACES = "bullrq:cache:ai:*"
#: the largest per-run override of the scan cap, in keys
MAX_KEYS_LIMIT = 1_000_000
#: seconds: the longest idle limit accepted (30 days)
MAX_IDLE_LIMIT = 30 * 86400
#: milliseconds: the longest pause between batches accepted
MAX_BATCH_DELAY_MS = 10_000
#: share of the progress bar the Redis sweep of cache.cleanup takes (the rest: the database)
SWEEP_SHARE = 80.0
#: seconds: socket timeouts of the client of CACHE_REDIS_URL (a hung server becomes a retried failure)
REDIS_SOCKET_TIMEOUT = 10


@dataclass(frozen=True)
class CleanupSettings:
    """The cleanup's settings from the environment."""

    redis_url: str | None
    namespaces: tuple[str, ...]
    ai_namespaces: tuple[str, ...]
    scan_limit: int  #: keys
    batch_delay_ms: int  #: milliseconds
    max_idle_seconds: float
    ai_max_idle_seconds: float
    log_retention_days: float
    temp_analysis_retention_hours: float

    @classmethod
    def from_env(cls, env: dict | None = None) -> CleanupSettings:
        """Read and check the settings; a bad value raises ConfigError naming the variable."""
        env = environment(env)
        return cls(
            redis_url=env_redis_url(env, "CACHE_REDIS_URL"),
            namespaces=_patterns(env, "CACHE_NAMESPACES", DEFAULT_NAMESPACES),
            ai_namespaces=_patterns(env, "AI_CACHE_NAMESPACES", DEFAULT_AI_NAMESPACES),
            scan_limit=int(env_number(env, "CACHE_SCAN_LIMIT", 10_000, 1, MAX_KEYS_LIMIT, "keys")),
            batch_delay_ms=int(env_number(env, "CACHE_BATCH_DELAY_MS", 100, 0, MAX_BATCH_DELAY_MS, "milliseconds")),
            max_idle_seconds=env_number(env, "CACHE_MAX_IDLE_SECONDS", 6 * 3600, 1, MAX_IDLE_LIMIT, "seconds"),
            ai_max_idle_seconds=env_number(env, "AI_CACHE_MAX_IDLE_SECONDS", 86400, 1, MAX_IDLE_LIMIT, "seconds"),
            log_retention_days=env_number(env, "LOG_RETENTION_DAYS", 30, 1, 3650, "days"),
            temp_analysis_retention_hours=env_number(env, "TEMP_ANALYSIS_RETENTION_HOURS", 48, 1, 8760, "hours"),
        )


def _patterns(env: dict, name: str, default: str) -> tuple[str, ...]:
    from workers._cleanup_glob import pattern_problem

    raw = env.get(name, "").strip() or default
    patterns = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    for pattern in patterns:
        problem = pattern_problem(pattern)
        if problem:
            raise ConfigError(f"{name}: pattern {pattern!r} {problem}")
    return patterns


def _validate_overrides(kwargs: dict) -> None:
    """Check the optional per-run overrides of both tasks."""
    checks = {
        "max_keys": (1, MAX_KEYS_LIMIT, True, "maxKeys must be a whole number of keys"),
        "max_idle_seconds": (1, MAX_IDLE_LIMIT, False, "maxIdleSeconds must be a number of seconds"),
        "batch_delay_ms": (0, MAX_BATCH_DELAY_MS, True, "batchDelayMs must be a whole number of milliseconds"),
    }
    for name, (low, high, whole, message) in checks.items():
        value = kwargs.get(name)
        if value is None:
            continue
        kinds = int if whole else int | float
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
            raise InvalidJobError(f"{message} from {low:,} to {high:,}, not {value!r}")
    if not isinstance(kwargs.get("dry_run", False), bool):
        raise InvalidJobError(f"dryRun must be true or false, not {kwargs['dry_run']!r}")


@task("cache.cleanup", queue="cache-cleanup", validate=_validate_overrides)
def cleanup(
    max_keys: int | None = None,
    max_idle_seconds: float | None = None,
    batch_delay_ms: int | None = None,
    dry_run: bool = False,
) -> dict:
    """Remove idle cache keys of CACHE_NAMESPACES and delete database rows past their retention."""
    config = _settings()
    sweep = _sweep(
        config,
        config.namespaces,
        exclude=config.ai_namespaces,
        max_idle=max_idle_seconds or config.max_idle_seconds,
        max_keys=max_keys or config.scan_limit,
        batch_delay_ms=config.batch_delay_ms if batch_delay_ms is None else batch_delay_ms,
        dry_run=dry_run,
        span=SWEEP_SHARE,
    )
    rows, statements = _purge(config, dry_run, removed=sweep["keys_removed"])
    result = {**sweep, "rows_deleted": dict.fromkeys(rows, 0) if dry_run else rows, "db_statements": statements}
    if dry_run:
        result["rows_past_retention"] = rows
    result["processed"] = sweep["keys_removed"] + sum(result["rows_deleted"].values())
    _finish("cache.cleanup", result)
    return result


@task("cache.ai_cleanup", queue="cache-cleanup", validate=_validate_overrides)
def ai_cleanup(
    max_keys: int | None = None,
    max_idle_seconds: float | None = None,
    batch_delay_ms: int | None = None,
    dry_run: bool = False,
) -> dict:
    """Remove idle entries of the AI-result cache (AI_CACHE_NAMESPACES)."""
    config = _settings()
    result = _sweep(
        config,
        config.ai_namespaces,
        exclude=(),
        max_idle=max_idle_seconds or config.ai_max_idle_seconds,
        max_keys=max_keys or config.scan_limit,
        batch_delay_ms=config.batch_delay_ms if batch_delay_ms is None else batch_delay_ms,
        dry_run=dry_run,
        span=100.0,
    )
    result["processed"] = result["keys_removed"]
    _finish("cache.ai_cleanup", result)
    return result


def _settings() -> CleanupSettings:
    try:
        return CleanupSettings.from_env()
    except ConfigError as exc:
        raise PermanentFailure(str(exc)) from None


def _sweep(config: CleanupSettings, patterns, *, exclude, max_idle, max_keys, batch_delay_ms, dry_run, span) -> dict:
    """Sweep `patterns` in the cache Redis, reporting progress per batch; returns the sweep's figures."""
    from app.runtime import progress
    from workers._cleanup_redis import Sweeper, SweepRules, used_memory

    rules = SweepRules(max_idle, max_keys, batch_delay_ms / 1000, dry_run, tuple(exclude))

    def on_batch(report) -> None:
        scanned, removed = report.total("scanned"), report.total("removed")
        progress.report(
            percent=span * min(1.0, scanned / max_keys),
            message=f"{scanned} keys examined, {report.total('candidates')} stale, {removed} removed",
            processed=removed,
            failed=report.total("unchecked"),
        )

    with _redis_errors():
        client = _cache_redis(config.redis_url)
        before = used_memory(client)
        report = Sweeper(client, rules, on_batch).run(list(patterns))
        after = used_memory(client)
    figures = report.as_dict()
    progress.report(percent=span, message=f"{figures['keys_removed']} keys removed", processed=figures["keys_removed"],
                    failed=figures["keys_unchecked"])
    # other clients write meanwhile, so `freed` is what INFO shows, possibly negative; bytes_removed is per key.
    # A dry run removes nothing: it frees nothing, whatever other clients did to used_memory meanwhile.
    memory = {"used_before": before, "used_after": after, "freed": 0 if dry_run else before - after}
    return {"dry_run": dry_run, "max_idle_seconds": max_idle, **figures, "memory": memory}


def _purge(config: CleanupSettings, dry_run: bool, removed: int) -> tuple[dict[str, int], int]:
    """Delete (or count) the database rows past their retention, reporting progress per table."""
    import psycopg

    from app.runtime import progress, resources
    from workers._cleanup_db import RULES, purge

    retention = {"logs": config.log_retention_days * 86400, "temporary": config.temp_analysis_retention_hours * 3600}
    done: dict[str, int] = {}

    def on_table(table: str, rows: int) -> None:
        done[table] = rows
        progress.report(
            percent=SWEEP_SHARE + (100 - SWEEP_SHARE) * len(done) / len(RULES),
            message=f"{table}: {rows} rows {'past retention' if dry_run else 'deleted'}",
            processed=removed + (0 if dry_run else sum(done.values())),
        )

    try:
        return purge(resources.database, retention, dry_run, on_table)
    except psycopg.errors.UndefinedTable as exc:
        message = f"the database lacks a table of migration 0007 ({exc}); run `bullrq db migrate`"
        raise PermanentFailure(message) from None
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(f"PostgreSQL unavailable: {str(exc).strip().splitlines()[0]}") from exc


_clients: dict[tuple[int, str], object] = {}


def _cache_redis(url: str | None):
    """The client of the Redis holding the caches: CACHE_REDIS_URL, else the product's own."""
    from app.runtime import resources

    if url is None:
        return resources.redis_client()
    key = (os.getpid(), url)
    if key not in _clients:
        from app.connections import redis_from_url

        _clients.clear()  # after a fork the parent's sockets are not ours to use (nor to close)
        _clients[key] = redis_from_url(
            url, socket_timeout=REDIS_SOCKET_TIMEOUT, socket_connect_timeout=REDIS_SOCKET_TIMEOUT
        )
    return _clients[key]


@contextmanager
def _redis_errors():
    """Turn Redis errors into the queue's terms: unreachable is transient (retried), a refused command is not."""
    import redis

    try:
        yield
    except redis.AuthenticationError as exc:
        raise PermanentFailure(f"cache Redis refused the credentials: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError) as exc:
        raise ServiceUnavailableError(f"cache Redis unavailable: {exc}") from exc
    except redis.ResponseError as exc:
        raise PermanentFailure(f"cache Redis refused a command: {exc}") from None


def _finish(name: str, result: dict) -> None:
    logger.info(
        "%s: %d keys examined, %d removed, %d bytes freed (INFO), rows %s%s",
        name,
        result["keys_scanned"],
        result["keys_removed"],
        result["memory"]["freed"],
        result.get("rows_deleted", {}),
        " (dry run)" if result["dry_run"] else "",
    )
