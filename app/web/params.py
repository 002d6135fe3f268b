"""Query parameters shared by the admin API's listings."""

from __future__ import annotations

from flask import request

from app.runs import MAX_LIMIT
from app.web.errors import ApiError


def page() -> tuple[int, int]:
    """`limit` (1 to 100, default 50) and `offset` (default 0) of the request; a 400 naming them otherwise."""
    try:
        limit = int(request.args.get("limit", 50))
        offset = int(request.args.get("offset", 0))
    except ValueError:
        raise ApiError(400, "invalid_request", "limit and offset must be whole numbers") from None
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise ApiError(400, "invalid_request", f"limit must be 1 to {MAX_LIMIT} and offset >= 0")
    return limit, offset
