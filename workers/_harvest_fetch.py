"""Fetching one harvest source over HTTP: conditional requests, a size cap and a time cap, and the settings.

The request goes through `app.http`'s per-process client and follows its failure rule (connection errors, timeouts,
408/425/429/5xx may pass: ServiceUnavailableError; any other 4xx: PermanentFailure). The body is streamed so that an
answer larger than HARVEST_MAX_BYTES is cut off instead of read into memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.config import env_bool, env_number, environment
from app.errors import PermanentFailure, ServiceUnavailableError

#: bytes: the largest answer read from a source (5 MB)
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
#: items stored at most per fetch of one source
DEFAULT_MAX_ITEMS = 500
#: seconds: limit for one fetch, connecting to the last byte
DEFAULT_TIMEOUT = 30.0
#: sources fetched at once by harvest.run
DEFAULT_CONCURRENCY = 4
ACCEPT = {
    "feed": "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5",
    "json": "application/json, */*;q=0.5",
    "html": "text/html, application/xhtml+xml;q=0.9, */*;q=0.5",
}


@dataclass(frozen=True)
class HarvestSettings:
    """The harvest queue's settings, from the environment."""

    max_bytes: int = DEFAULT_MAX_BYTES  #: HARVEST_MAX_BYTES
    max_items: int = DEFAULT_MAX_ITEMS  #: HARVEST_MAX_ITEMS
    timeout: float = DEFAULT_TIMEOUT  #: HARVEST_TIMEOUT: seconds
    concurrency: int = DEFAULT_CONCURRENCY  #: HARVEST_CONCURRENCY
    embed_after: bool = True  #: HARVEST_EMBED_AFTER: harvest.run queues embeddings.generate for what it stored

    @classmethod
    def from_env(cls, env: dict | None = None) -> HarvestSettings:
        """Read and check the HARVEST_* variables.

        Raises:
            ConfigError: a variable holds an invalid value; the message names it.
        """
        env = environment(env)
        return cls(
            max_bytes=int(env_number(env, "HARVEST_MAX_BYTES", DEFAULT_MAX_BYTES, 1024, 100 * 1024 * 1024, "bytes")),
            max_items=int(env_number(env, "HARVEST_MAX_ITEMS", DEFAULT_MAX_ITEMS, 1, 10_000, "items")),
            timeout=env_number(env, "HARVEST_TIMEOUT", DEFAULT_TIMEOUT, 1, 600, "seconds"),
            concurrency=int(env_number(env, "HARVEST_CONCURRENCY", DEFAULT_CONCURRENCY, 1, 16, "sources")),
            embed_after=env_bool(env, "HARVEST_EMBED_AFTER", True),
        )


@dataclass(frozen=True)
class Fetched:
    """A source's answer: 200 with a body, or 304 (not modified) without one."""

    status: int
    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None
    content_type: str = ""
    url: str = ""  #: where the body came from, after redirects

    @property
    def not_modified(self) -> bool:
        return self.status == 304


def fetch(url: str, kind: str, *, etag: str | None, last_modified: str | None, settings: HarvestSettings,
          service: str) -> Fetched:
    """GET `url`, sending the stored validators; a 304 comes back as a `Fetched` with `not_modified`.

    Args:
        service: the source as named in messages (never its URL, which may hold credentials).

    Raises:
        ServiceUnavailableError: the source cannot be reached, is too slow, or answered 408, 425, 429 or 5xx.
        PermanentFailure: another 4xx, an unusable URL, too many redirects, or an answer over the size cap.
    """
    import httpx

    from app import http

    headers = {"Accept": ACCEPT.get(kind, "*/*")}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    with http.failures(service), http.client().stream("GET", url, headers=headers, follow_redirects=True,
                                                      timeout=httpx.Timeout(settings.timeout)) as response:
        status = http.check(response, service).status_code
        if status != 304 and not 200 <= status < 300:
            raise PermanentFailure(f"{service}: unexpected HTTP {status} (a redirect without a Location?)")
        body = b"" if status == 304 else _read(response, settings, service)
        return Fetched(
            status=status, body=body, etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
            content_type=response.headers.get("content-type", ""), url=str(response.url),
        )


def _read(response, settings: HarvestSettings, service: str) -> bytes:
    """The body, refusing more than `max_bytes` and more than `timeout` seconds in all (a slow drip included)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_bytes:
        raise PermanentFailure(f"{service}: the answer of {int(declared):,} bytes is over HARVEST_MAX_BYTES "
                               f"({settings.max_bytes:,})")
    deadline = time.monotonic() + settings.timeout
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > settings.max_bytes:
            raise PermanentFailure(f"{service}: the answer is over HARVEST_MAX_BYTES ({settings.max_bytes:,} bytes)")
        if time.monotonic() > deadline:
            raise ServiceUnavailableError(f"{service}: the answer took over {settings.timeout:g} s")
        chunks.append(chunk)
    return b"".join(chunks)
