"""Query parameters shared by the admin API's listings."""

from __future__ import annotations

from flask import request

from app.store.runs import MAX_LIMIT
from app.web.errors import ApiError

#: far past any listing, and offset + limit stays inside the 64-bit integers PostgreSQL and Redis count with
MAX_OFFSET = 2**62


def page() -> tuple[int, int]:
    """`limit` (1 to 100, default 50) and `offset` (default 0) of the request; a 400 naming them otherwise."""
    try:
        limit = int(request.args.get("limit", 50))
        offset = int(request.args.get("offset", 0))
    except ValueError:
        raise ApiError(400, "invalid_request", "limit and offset must be whole numbers") from None
    if not 1 <= limit <= MAX_LIMIT or not 0 <= offset <= MAX_OFFSET:
        raise ApiError(400, "invalid_request", f"limit must be 1 to {MAX_LIMIT} and offset 0 to {MAX_OFFSET}")
    return limit, offset
