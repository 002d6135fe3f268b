"""Limits every request meets before a route runs, answered in the API's JSON error shape."""

from __future__ import annotations

import json

#: bytes of a request's path and query string together (414 beyond); gunicorn allowed 4,094 for the request line
MAX_TARGET_BYTES = 8190


def _refuse(start_response, status: str, code: str, message: str) -> list[bytes]:
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def request_limits(application):
    """WSGI middleware: a request target over MAX_TARGET_BYTES is a 414, whichever server runs the app."""

    def limited(environ, start_response):
        if len(environ.get("PATH_INFO", "")) + len(environ.get("QUERY_STRING", "")) > MAX_TARGET_BYTES:
            return _refuse(start_response, "414 URI Too Long", "uri_too_long",
                           f"the request's path and query string exceed {MAX_TARGET_BYTES} bytes")  # fmt: skip
        return application(environ, start_response)

    return limited
