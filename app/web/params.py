"""Request inputs shared by the admin API: a listing's page, optional query values, the JSON body."""

from __future__ import annotations

from flask import request

from app.runs import MAX_LIMIT
from app.web.errors import ApiError
from app.web.json import strict_loads

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


def optional(name: str) -> str | None:
    """A query value that may be left out (None), but never given empty: `?queueName=` does not mean "all"."""
    value = request.args.get(name)
    if value == "":
        raise ApiError(400, "invalid_request", f"{name} is empty: leave it out, or give a value")
    return value


def json_body(required: bool = False) -> dict:
    """The request's JSON object ({} when there is no body and none is required).

    A body that is not `application/json` is a 415; one that is not a JSON object (NaN, Infinity and nesting past
    app.web.json.MAX_DEPTH included) a 400 saying so.
    """
    if not request.get_data():
        if required:
            raise ApiError(400, "invalid_json", "send a JSON object")
        return {}
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as JSON, with Content-Type: application/json",
                       {"contentType": request.mimetype or None})  # fmt: skip
    try:
        body = strict_loads(request.get_data())
    except ValueError as exc:  # UnicodeDecodeError included
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return body
