"""Fetching records for the `sync` queue: the providers' HTTP API, fallback from primary to secondary, the cache.

One request per item, `GET {base}/items/{external_id}` (the id path-encoded), answered by the record as a JSON
object. A batch is fetched with at most `MAX_CONCURRENT` requests in flight; answers are cached in Redis under
`bullrq:cache:sync:<sha256 of the request URL>` for the cache TTL, so a change of provider URL never serves the old
provider's answers. Only `workers.sync` uses this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import httpx

from app import http
from app.errors import BullrqError
from queues import key

if TYPE_CHECKING:
    import redis

    from workers._sync_settings import Provider

logger = logging.getLogger(__name__)

#: requests in flight at once while a batch is fetched (the original system's limit)
MAX_CONCURRENT = 5
#: the `source` of an answer served from the cache
CACHE = "cache"


class ProviderError(BullrqError):
    """Raised when one provider could not give one item's record (`transient`: it may give it later)."""

    def __init__(self, provider: str, reason: str, *, status: int | None = None, transient: bool = False):
        super().__init__(f"{provider}: {reason}")
        self.status = status
        self.transient = transient


@dataclass(frozen=True)
class Answer:
    """What the providers gave for one item: its record, or why neither could give it."""

    external_id: str
    data: dict | None = None
    source: str | None = None  #: primary, fallback or cache
    provider: str | None = None  #: primary or fallback: who gave the record, cached or not
    error: str | None = None
    transient: bool = False  #: the failure may pass (a provider was unreachable or answered 408/429/5xx)


def fetch_batch(
    providers: tuple[Provider, ...],
    external_ids: list[str],
    *,
    redis_client: redis.Redis,
    pool: Executor,
    use_cache: bool,
    cache_ttl: int,
) -> list[Answer]:
    """The answers for `external_ids`, in order: cached ones first (unless `use_cache` is off), the rest fetched
    through `pool` and cached."""
    cached = _cached(redis_client, providers, external_ids) if use_cache else {}
    misses = [external_id for external_id in external_ids if external_id not in cached]
    fresh = list(pool.map(partial(fetch_item, providers), misses))
    _cache(redis_client, providers, fresh, cache_ttl)
    answers = {**cached, **{answer.external_id: answer for answer in fresh}}
    return [answers[external_id] for external_id in external_ids]


def fetch_item(providers: Iterable[Provider], external_id: str) -> Answer:
    """One item's record from the first provider that gives it (runs in the pool's threads)."""
    failures: list[ProviderError] = []
    for provider in providers:
        try:
            data = _get(provider, external_id)
        except ProviderError as exc:
            failures.append(exc)
            continue
        if failures:
            logger.info("sync item %s: from %s after %s", external_id, provider.name, failures[-1])
        return Answer(external_id, data, source=provider.name, provider=provider.name)
    return Answer(external_id, error=_describe(failures), transient=any(f.transient for f in failures))


def cache_key(url: str) -> str:
    """The Redis key caching the answer to GET `url` (the cache-cleanup queue scans `bullrq:cache:*`)."""
    return key("cache", "sync", hashlib.sha256(url.encode()).hexdigest())


def _get(provider: Provider, external_id: str) -> dict:
    try:
        response = http.client().get(provider.item_url(external_id), headers=provider.headers())
    except httpx.TransportError as exc:  # refused, reset, timed out: the provider is down for now
        raise ProviderError(provider.name, f"unreachable ({type(exc).__name__}: {exc})", transient=True) from None
    except httpx.InvalidURL as exc:
        raise ProviderError(provider.name, f"invalid URL for item {external_id!r}: {exc}") from None
    status = response.status_code
    if status == 404:
        raise ProviderError(provider.name, "not found (HTTP 404)", status=status)
    if status in http.TRANSIENT_STATUSES:
        raise ProviderError(provider.name, f"unavailable (HTTP {status})", status=status, transient=True)
    if status != 200:
        raise ProviderError(provider.name, f"HTTP {status}", status=status)
    try:
        data = response.json()
    except ValueError:
        raise ProviderError(provider.name, "answer is not JSON", status=status) from None
    if not isinstance(data, dict):
        raise ProviderError(provider.name, f"answer is a JSON {type(data).__name__}, not an object", status=status)
    return data


def _describe(failures: list[ProviderError]) -> str:
    reasons = "; ".join(str(failure) for failure in failures)
    if failures and all(failure.status == 404 for failure in failures):
        return f"gone: no provider has this item any more ({reasons})"
    return reasons


def _cached(redis_client: redis.Redis, providers: tuple[Provider, ...], external_ids: list[str]) -> dict:
    """Cached answers by external id; a provider earlier in `providers` wins when both have one."""
    if not external_ids:
        return {}
    keys = [cache_key(p.item_url(external_id)) for external_id in external_ids for p in providers]
    values = iter(redis_client.mget(keys))
    found = {}
    for external_id in external_ids:
        for provider in providers:
            raw = next(values)
            if external_id in found or raw is None:
                continue
            try:
                data = json.loads(raw)
            except ValueError:
                continue  # an unreadable entry is a miss: the fetch overwrites it
            if isinstance(data, dict):
                found[external_id] = Answer(external_id, data, source=CACHE, provider=provider.name)
    return found


def _cache(redis_client: redis.Redis, providers: tuple[Provider, ...], answers: list[Answer], ttl: int) -> None:
    by_name = {provider.name: provider for provider in providers}
    pipe = redis_client.pipeline(transaction=False)
    for answer in answers:
        if answer.data is not None:
            url = by_name[answer.provider].item_url(answer.external_id)
            pipe.set(cache_key(url), json.dumps(answer.data, separators=(",", ":")), ex=ttl)
    pipe.execute()
