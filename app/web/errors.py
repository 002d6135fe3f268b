"""Every error of the web app as JSON: `{"error": {"code", "message", "details"}}`, never an HTML page."""

from __future__ import annotations

import logging

import psycopg
from flask import Flask, jsonify
from psycopg_pool import PoolTimeout
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from app.errors import BullrqError, InvalidJobError, JobDataTooLargeError, UnknownQueueError, UnknownTaskError
from app.scheduling.cron import CronError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by a route to answer with an error status and a JSON body."""

    def __init__(self, status: int, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}


def error_response(status: int, code: str, message: str, details: dict | None = None):
    return jsonify(error={"code": code, "message": message, "details": details or {}}), status


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(UnknownQueueError)
    def unknown_queue(exc: UnknownQueueError):
        return error_response(400, "unknown_queue", str(exc), {"queue": exc.name, "valid": exc.valid})

    @app.errorhandler(UnknownTaskError)
    def unknown_task(exc: UnknownTaskError):
        return error_response(400, "unknown_task", str(exc), {"type": exc.name, "valid": exc.valid})

    @app.errorhandler(JobDataTooLargeError)
    def job_too_large(exc: JobDataTooLargeError):
        return error_response(413, "job_data_too_large", str(exc), {"size": exc.size, "limit": exc.limit})

    @app.errorhandler(InvalidJobError)
    @app.errorhandler(CronError)
    def invalid(exc: BullrqError):
        return error_response(400, "invalid_request", str(exc))

    @app.errorhandler(RedisError)
    def redis_down(exc: RedisError):
        logger.warning("request failed: Redis unavailable: %s", exc)
        return error_response(503, "redis_unavailable", "Redis is unreachable; try again shortly")

    @app.errorhandler(psycopg.OperationalError)
    @app.errorhandler(PoolTimeout)
    def postgres_down(exc: Exception):
        logger.warning("request failed: PostgreSQL unavailable: %s", exc)
        return error_response(503, "postgres_unavailable", "PostgreSQL is unreachable; try again shortly")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response, status = error_response(exc.code or 500, code, exc.description or exc.name)
        for name, value in exc.get_headers():  # a 405's Allow, say
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        logger.exception("request failed")
        return error_response(500, "internal_error", "an unexpected error occurred; it has been logged")
