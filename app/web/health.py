"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify
from psycopg import Error as PsycopgError
from psycopg_pool import PoolTimeout
from redis.exceptions import RedisError

from app import connections
from app.web.db import get_db

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is up and serving requests."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Redis and PostgreSQL both answer; 503 naming the one that does not."""
    checks, failed = {}, []
    try:
        checks["redis"] = {"ok": True, "latency_ms": round(connections.ping(current_app.extensions["bullrq.redis"]), 2)}
    except RedisError as exc:
        checks["redis"] = {"ok": False, "error": str(exc)}
        failed.append("redis")
    try:
        get_db().execute("SELECT 1")
        checks["postgres"] = {"ok": True}
    except (PsycopgError, PoolTimeout) as exc:
        checks["postgres"] = {"ok": False, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        failed.append("postgres")
    if failed:
        logger.warning("not ready: %s unreachable", " and ".join(failed))
        body = {"status": "unavailable", "checks": checks, "error": {"code": "not_ready",
                "message": f"{' and '.join(failed)} unreachable", "details": {"failed": failed}}}
        return jsonify(body), 503
    return jsonify(status="ready", checks=checks)
