"""Outgoing HTTP for handlers: one client per process with timeouts, and one rule for which failures to retry.

A connection error, a timeout, 408, 429 and any 5xx may pass: the job is retried under its queue's policy. Any other
4xx means the request itself is wrong (bad credentials, unknown id): retrying cannot help, so it is a permanent
failure naming the service and status.
"""

from __future__ import annotations

import os
import threading

import httpx

from app.errors import PermanentFailure, ServiceUnavailableError

#: seconds: connect and read limits for every outgoing request
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
USER_AGENT = "bullrq/0.1 (+https://github.com/bullrq/bullrq)"
#: statuses worth another try later
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

_clients: dict[int, httpx.Client] = {}
_lock = threading.Lock()  # handlers that fan out over threads may ask for the client at the same moment


def client() -> httpx.Client:
    """This process's client (connection pooling; safe to share between threads)."""
    pid = os.getpid()
    with _lock:
        if pid not in _clients:
            _clients.clear()  # a forked child must not reuse its parent's connections
            timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
            limits = httpx.Limits(max_connections=20, max_keepalive_connections=10)
            _clients[pid] = httpx.Client(timeout=timeout, limits=limits, headers={"User-Agent": USER_AGENT})
        return _clients[pid]


def request(method: str, url: str, *, service: str, **kwargs) -> httpx.Response:
    """Send a request and classify its failure.

    Args:
        service: a name for messages ("sync provider primary", "webhook"); never the URL's credentials.
        kwargs: passed to `httpx.Client.request` (json, headers, params, content, timeout).

    Returns:
        The response, whose status is 2xx or 3xx (304 included: callers that send validators handle it).

    Raises:
        ServiceUnavailableError: the service cannot be reached or answered 408, 429 or 5xx.
        PermanentFailure: the service answered another 4xx, or the URL is malformed.
    """
    try:
        response = client().request(method, url, **kwargs)
    except httpx.InvalidURL as exc:
        raise PermanentFailure(f"{service}: invalid URL: {exc}") from None
    except httpx.UnsupportedProtocol as exc:
        raise PermanentFailure(f"{service}: unsupported URL: {exc}") from None
    except httpx.TransportError as exc:
        raise ServiceUnavailableError(f"{service}: {type(exc).__name__}: {exc}") from None
    if response.status_code in TRANSIENT_STATUSES:
        raise ServiceUnavailableError(f"{service}: HTTP {response.status_code}")
    if response.status_code in (401, 403):  # the reply may echo the credentials sent: never repeat it
        raise PermanentFailure(f"{service}: HTTP {response.status_code}: the credentials were refused")
    if response.status_code >= 400:
        raise PermanentFailure(f"{service}: HTTP {response.status_code}: {_excerpt(response)}")
    return response


def _excerpt(response: httpx.Response, limit: int = 200) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "")
