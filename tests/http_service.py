"""A real HTTP server on loopback that plays an outside service (sync provider, feed, webhook receiver, AI API).

Use the `http_service` fixture (`pytest_plugins = ["tests.http_service"]` in the test module):

    http_service.route("GET", "/items/7", {"id": 7})                    # a fixed JSON answer (200)
    http_service.route("GET", "/feed.xml", (200, {"ETag": '"v1"'}, xml))  # status, headers, body
    http_service.route("POST", "/hook", lambda request: (204, {}, b""))  # computed per request
    url = http_service.url + "/items/7"
    http_service.requests  # every request received, in order: method, path, query, headers, body

Routes match the exact path (query string excluded); an unrouted path answers 404. A route may be replaced at any
time, e.g. to make a provider start failing. Worker processes reach it like any service: by URL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  #: names lower-cased
    body: bytes = b""

    def json(self):
        return json.loads(self.body)


Answer = dict | list | str | bytes | tuple
Route = Answer | Callable[[Request], Answer]


@dataclass
class HttpService:
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    _routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def route(self, method: str, path: str, answer: Route) -> None:
        """Answer `method path` with `answer`: a JSON-able value, bytes/str, (status, headers, body) or a callable."""
        with self._lock:
            self._routes[(method.upper(), path)] = answer

    def received(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """The requests received so far (of `method` and `path`, when given)."""
        with self._lock:
            return [
                r for r in self.requests if (method is None or r.method == method) and (path is None or r.path == path)
            ]

    def _answer(self, request: Request) -> tuple[int, dict, bytes]:
        with self._lock:
            self.requests.append(request)
            route = self._routes.get((request.method, request.path))
        if route is None:
            return 404, {"Content-Type": "application/json"}, b'{"error": "no such route"}'
        answer = route(request) if callable(route) else route
        status, headers, body = answer if isinstance(answer, tuple) else (200, {}, answer)
        headers = dict(headers)
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        return status, headers, body


def _handler_class(service: HttpService):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self):
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=self.rfile.read(length) if length else b"",
            )
            try:
                status, headers, body = service._answer(request)
            except Exception as exc:  # a broken test route shows up as a 599, not a hung client
                status, headers, body = 599, {}, repr(exc).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        def log_message(self, format, *args):  # keep pytest output clean
            pass

    return Handler


@pytest.fixture
def http_service():
    """A loopback HTTP server for the test; stopped at its end."""
    service = HttpService()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(service))
    server.daemon_threads = True
    service.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="http-service", daemon=True)
    thread.start()
    yield service
    server.shutdown()
    server.server_close()
