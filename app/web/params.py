"""Request inputs shared by the admin API: the query parameters each route accepts (read from its OpenAPI
document, so the two never disagree), a listing's page, optional query values, the JSON body."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml
from flask import request

from app.store.runs import MAX_LIMIT
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


@functools.cache
def openapi_document() -> dict:
    """The admin API's OpenAPI document (`app/web/openapi.yaml`)."""
    return yaml.safe_load((Path(__file__).parent / "openapi.yaml").read_text())


@functools.cache
def accepted_query(rule: str, method: str) -> tuple[str, ...]:
    """The query parameters the OpenAPI document lists for the route `rule` (Flask's form) and `method`."""
    document = openapi_document()
    item = document["paths"].get(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule), {})
    names = []
    for parameter in [*item.get("parameters", []), *item.get(method.lower(), {}).get("parameters", [])]:
        if "$ref" in parameter:
            parameter = document["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
        if parameter["in"] == "query":
            names.append(parameter["name"])
    return tuple(names)


def refuse_unknown_query() -> None:
    """A 400 naming the parameters the route accepts when the request has another (a misspelt filter must not
    silently answer with the default listing)."""
    if request.url_rule is None or request.method == "OPTIONS":
        return
    accepted = accepted_query(request.url_rule.rule, "GET" if request.method == "HEAD" else request.method)
    unknown = sorted(set(request.args) - set(accepted))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        takes = f"it accepts {', '.join(accepted)}" if accepted else "it takes no query parameter"
        raise ApiError(400, "invalid_request", f"unknown query parameter {names}: {takes}",
                       {"unknown": unknown, "accepted": list(accepted)})


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
