"""The admin token: every admin route requires `Authorization: Bearer <ADMIN_TOKEN>`, compared in constant time."""

from __future__ import annotations

import hmac

from flask import current_app, request

from app.web.errors import ApiError


def require_token() -> None:
    """A `before_request` hook for the admin blueprints."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    expected = current_app.config["ADMIN_TOKEN"]
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "unauthorized", "send the admin token as 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "the admin token is not valid")
