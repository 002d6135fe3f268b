"""The audit trail: every state-changing admin request is recorded (who, when, what, result) in `audit_log`."""

from __future__ import annotations

import hashlib
import json
import logging

import psycopg
from flask import Response, current_app, request, session
from psycopg_pool import PoolTimeout
from werkzeug.exceptions import RequestEntityTooLarge

from app.store.rows import storable_json
from app.web.db import get_db
from app.web.json import strict_loads

logger = logging.getLogger(__name__)

_CHANGES = {"POST", "PATCH", "PUT", "DELETE"}
#: characters of a request or response body kept
MAX_BODY = 4000


def actor() -> str:
    """Who is calling: a fingerprint of the token they sent (the token itself is never stored or logged), or a
    person signed in with the session cookie."""
    given = request.headers.get("Authorization", "").partition(" ")[2].strip()
    if given:
        return "token:" + hashlib.sha256(given.encode()).hexdigest()[:12]
    return "session" if session.get("admin") else "anonymous"


def _json_or_text(raw: bytes) -> str | None:
    """A body as JSON for the `jsonb` columns: itself when it is JSON, else wrapped as {"text": ...}."""
    if not raw:
        return None
    text = raw[:MAX_BODY].decode(errors="replace")
    try:
        strict_loads(text)  # what jsonb takes: no NaN, no nesting past Python's recursion limit
    except ValueError:
        text = json.dumps({"text": text})  # escapes any raw NUL, which storable_json then replaces
    return storable_json(text)


def _storable(text: str) -> str:
    """Text PostgreSQL can store: a NUL (in a path, say) becomes U+FFFD."""
    return text.replace("\x00", "\ufffd")


def record(response: Response) -> Response:
    """An `after_request` hook of the admin blueprint: state-changing calls are written to the audit log."""
    if request.method not in _CHANGES or current_app.config.get("AUDIT") is False:
        return response
    try:
        body = request.get_data()
    except RequestEntityTooLarge:  # refused unread: the row says what was asked, not what was sent
        body = b""
    try:
        get_db().execute(
            "INSERT INTO audit_log (actor, method, path, request, status, result) VALUES (%s, %s, %s, %s, %s, %s)",
            (actor(), request.method, _storable(request.full_path.rstrip("?")), _json_or_text(body),
             response.status_code, _json_or_text(response.get_data())),
        )
    except (psycopg.Error, PoolTimeout) as exc:  # the action happened: losing its audit row must not undo it
        # the path quoted: a newline in it must not start a log line of its own
        logger.error("audit: could not record %s %r by %s: %s", request.method, request.path, actor(), exc)
    return response
