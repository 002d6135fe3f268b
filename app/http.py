"""Outgoing HTTP for handlers: one client per process with timeouts, and one rule for which failures to retry.

A connection error, a timeout, 408, 429 and any 5xx may pass: the job is retried under its queue's policy. Any other
4xx means the request itself is wrong (bad credentials, unknown id): retrying cannot help, so it is a permanent
failure naming the service and status.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

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


def request(
    method: str, url: str, *, service: str, secret: str | None = None, secret_name: str | None = None, **kwargs
) -> httpx.Response:
    """Send a request and classify its failure.

    Args:
        service: a name for messages ("sync provider primary", "webhook"); never the URL's credentials.
        secret: a credential sent with the request: blanked out of any message (some servers echo it back).
        secret_name: the variable holding it, named when the service refuses it.
        kwargs: passed to `httpx.Client.request` (json, headers, params, content, timeout).

    Returns:
        The response, whose status is 2xx or 3xx (304 included: callers that send validators handle it).

    Raises:
        ServiceUnavailableError: the service cannot be reached or answered 408, 429 or 5xx.
        PermanentFailure: the service answered another 4xx, or the URL is malformed.
    """
    with failures(service):
        response = client().request(method, url, **kwargs)
    return check(response, service, secret=secret, secret_name=secret_name)


@contextmanager
def failures(service: str) -> Iterator[None]:
    """Turn httpx's request errors inside the block into the product's: a service that cannot be reached may answer
    later; a URL that cannot be used, endless redirects or an undecodable body will not."""
    try:
        yield
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise PermanentFailure(f"{service}: unusable URL: {exc}") from None
    except httpx.TooManyRedirects:
        raise PermanentFailure(f"{service}: too many redirects") from None
    except httpx.DecodingError as exc:
        raise PermanentFailure(f"{service}: the answer cannot be decoded: {exc}") from None
    except httpx.TransportError as exc:
        raise ServiceUnavailableError(f"{service}: {type(exc).__name__}: {exc}") from None


def check(
    response: httpx.Response, service: str, *, secret: str | None = None, secret_name: str | None = None
) -> httpx.Response:
    """The response, if its status is not a failure; else the failure, carrying the status as `.status`."""
    status = response.status_code
    if status in TRANSIENT_STATUSES:
        raise _with_status(ServiceUnavailableError(f"{service}: HTTP {status}"), status)
    if status in (401, 403):  # the reply may echo the credentials sent: never repeat it
        named = f" ({secret_name})" if secret_name else ""
        raise _with_status(PermanentFailure(f"{service}: HTTP {status}: the credentials were refused{named}"), status)
    if status >= 400:
        excerpt = _excerpt(response)
        if secret:
            excerpt = excerpt.replace(secret, "***")
        raise _with_status(PermanentFailure(f"{service}: HTTP {status}" + (f": {excerpt}" if excerpt else "")), status)
    return response


def _with_status(error: Exception, status: int) -> Exception:
    error.status = status
    return error


def _excerpt(response: httpx.Response, limit: int = 200) -> str:
    """The start of the body, for messages ("" for a streamed body not read yet)."""
    try:
        text = response.text.strip().replace("\n", " ")
    except httpx.ResponseNotRead:
        return ""
    return text[:limit] + ("..." if len(text) > limit else "")
