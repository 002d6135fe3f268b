"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify
from psycopg import Error as PsycopgError
from psycopg_pool import PoolTimeout
from redis import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from app import connections
from app.scheduling.scheduler import liveness
from app.web.db import get_pool

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is up and serving requests."""
    return jsonify(status="ok")


#: seconds a probe waits for Redis or PostgreSQL: a probe answers within about a second whatever is down
PROBE_TIMEOUT = 0.5


def _probe_redis() -> Redis:
    """The app's Redis, through connections with short timeouts kept for probes (a Redis that hangs costs a probe
    PROBE_TIMEOUT, not the app's socket timeout). Through Sentinel, the app's own client."""
    client = current_app.extensions["bullrq.redis"]
    cached = current_app.extensions.get("bullrq.redis_probe")
    if cached and cached[0] is client:
        return cached[1]
    pool, probe = client.connection_pool, client
    if type(pool) is ConnectionPool:
        kwargs = {**pool.connection_kwargs, "socket_timeout": PROBE_TIMEOUT, "socket_connect_timeout": PROBE_TIMEOUT}
        kwargs["retry"] = Retry(NoBackoff(), 0)
        probe = Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs))
    current_app.extensions["bullrq.redis_probe"] = (client, probe)
    return probe


def check_redis() -> dict:
    """{"ok": True, "latency_ms"} or {"ok": False, "error"}, within PROBE_TIMEOUT or so."""
    try:
        return {"ok": True, "latency_ms": round(connections.ping(_probe_redis()), 2)}
    except RedisError as exc:
        return {"ok": False, "error": str(exc) or type(exc).__name__}


def check_postgres() -> dict:
    """{"ok": True} or {"ok": False, "error"}: one connection borrowed for PROBE_TIMEOUT at most (a PostgreSQL
    refusing connections costs that, not the pool's whole timeout)."""
    try:
        with get_pool().connection(timeout=PROBE_TIMEOUT) as conn:
            conn.execute("SELECT 1")
        return {"ok": True}
    except (PsycopgError, PoolTimeout) as exc:
        return {"ok": False, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}


def check_scheduler() -> dict:
    """The scheduler's liveness (`app.scheduling.scheduler.liveness`), or {"ok": False, "error"} when Redis does not
    answer."""
    try:
        return liveness(_probe_redis())
    except RedisError as exc:
        return {"ok": False, "leader": None, "last_tick_age": None, "problem": f"Redis: {exc}"}


@bp.get("/readyz")
def readyz():
    """Redis and PostgreSQL both answer (503 naming the one that does not); the scheduler's liveness is reported
    in the details without making the web app unready."""
    checks = {"redis": check_redis(), "postgres": check_postgres()}
    failed = [name for name, check in checks.items() if not check["ok"]]
    checks["scheduler"] = check_scheduler() if checks["redis"]["ok"] else {"ok": False, "problem": "Redis is down"}
    if failed:
        logger.warning("not ready: %s unreachable", " and ".join(failed))
        body = {"status": "unavailable", "checks": checks, "error": {"code": "not_ready",
                "message": f"{' and '.join(failed)} unreachable", "details": {"failed": failed}}}
        return jsonify(body), 503
    return jsonify(status="ready", checks=checks)
