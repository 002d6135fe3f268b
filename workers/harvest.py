"""The `harvest` queue: fetch the sources of `harvest_sources` (RSS/Atom feeds, JSON APIs, HTML pages) and store
their new items, as plain text, in `harvested_content`, deduplicated by content hash.

Task types:
    harvest.run      data: {}   (daily 02:00: schedule entry `harvest-daily`)
        Harvests every enabled source, HARVEST_CONCURRENCY at a time. A source that fails is recorded
        (last_status `error`, last_error) and counted in `failed`; the others go on and the job completes.
        Only when every source failed and every failure may pass (unreachable, timeout, 408/429/5xx) does the job
        fail with ServiceUnavailableError, so the queue retries it; a source that fails for good (404, malformed
        answer, bad config) waits for the next daily run. Progress: processed = sources harvested, failed =
        sources that failed.
    harvest.source   data: {"sourceId": id of an enabled harvest source}   (on demand)
        Harvests one source. An unknown or disabled source, a 4xx other than 408/429, a malformed answer or a bad
        config fails at once (no retry); transient failures are retried under the queue's policy. Progress:
        processed = items stored or found already stored, failed = items with neither a title nor any text.

Each fetch sends the stored validators (If-None-Match from `etag`, If-Modified-Since from `last_modified`); a 304
stores nothing and records `not-modified`. On a 200 the items and the new validators are committed together, so a
retry after a failure refetches in full. Items are inserted with ON CONFLICT (content_hash) DO NOTHING: the same
words fetched again, or from another source, are counted as duplicates, never stored twice (see
`workers/_harvest_parse.py` for the hash and each kind's `config`).

Environment:
    HARVEST_MAX_BYTES     largest answer read from a source, bytes (5242880 = 5 MB; 1024 to 104857600)
    HARVEST_MAX_ITEMS     items taken per fetch of one source, the first in the document (500; 1 to 10000)
    HARVEST_TIMEOUT       seconds for one fetch, connecting to the last byte (30; 1 to 600)
    HARVEST_CONCURRENCY   sources fetched at once by harvest.run (4; 1 to 16)
    HARVEST_EMBED_AFTER   1 (default): harvest.run queues `embeddings.generate` when it stored new items, as a job
                          that depends on the harvest job (`dependsOn`): it waits "deferred" and runs only once the
                          harvest completed, and is canceled if the harvest fails for good; 0 switches this off
                          (1/0, true/false, yes/no, on/off)

The embeddings job embeds every item still without a vector, what this run stored included (`limit`: the items
stored, at least embeddings.generate's default). A retried harvest.run queues it once: its job option jobId is
`harvest-embed:<harvest job id>`, and it waits for the same harvest job whichever attempt completes it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum

from app.errors import InvalidJobError
from app.tasks import task

logger = logging.getLogger(__name__)

#: the largest bigserial id
MAX_SOURCE_ID = 2**63 - 1
#: what the enqueue helper accepts as a jobId (dedup key)
_DEDUP_KEY = re.compile(r"^[A-Za-z0-9._:/@-]{1,200}$")


class SourceStatus(StrEnum):
    """Values of harvest_sources.last_status."""

    OK = "ok"
    NOT_MODIFIED = "not-modified"
    ERROR = "error"


@dataclass
class Outcome:
    """What harvesting one source did."""

    source_id: int
    name: str
    status: str
    new: int = 0
    duplicates: int = 0
    skipped: int = 0  #: entries with nothing to store
    truncated: int = 0  #: entries past HARVEST_MAX_ITEMS
    error: str | None = None
    transient: bool = False  #: the failure may pass (retrying could help)


def _validate_source(kwargs: dict) -> None:
    value = kwargs.get("source_id")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SOURCE_ID:
        raise InvalidJobError(f"harvest.source: sourceId must be a positive whole number (a harvest_sources id), "
                              f"not {value!r}"[:200])


@task("harvest.source", queue="harvest", validate=_validate_source)
def harvest_source(source_id: int) -> dict:
    """Fetch one harvest source and store its new items."""
    from app.runtime import progress, resources
    from workers._harvest_store import load_source

    settings = _settings()
    with resources.database() as conn:
        source = load_source(conn, source_id)
    progress.report(percent=0, message=f"fetching {source['name']}", processed=0, failed=0)
    outcome = harvest_one(source, settings, on_step=lambda percent, message: progress.report(percent, message))
    progress.report(percent=100, message=_summary(outcome), processed=outcome.new + outcome.duplicates,
                    failed=outcome.skipped)
    return _public(outcome)


@task("harvest.run", queue="harvest")
def harvest_run() -> dict:
    """Harvest every enabled source, recording each failure on its source without stopping the others."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from app.runtime import progress, resources
    from workers._harvest_store import enabled_sources

    settings = _settings()
    with resources.database() as conn:
        sources = enabled_sources(conn)
    progress.report(percent=0 if sources else 100, message=f"{len(sources)} sources to harvest", processed=0,
                    failed=0)
    outcomes: list[Outcome] = []
    pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="harvest")
    try:
        futures = [pool.submit(_harvest_guarded, source, settings) for source in sources]
        for future in as_completed(futures):
            outcomes.append(future.result())
            failed = sum(1 for outcome in outcomes if outcome.status == SourceStatus.ERROR)
            progress.report(percent=100 * len(outcomes) / len(sources), message=_summary(outcomes[-1]),
                            processed=len(outcomes) - failed, failed=failed)
    finally:
        # a timeout or cancel raised here must not wait for fetches still running
        pool.shutdown(wait=False, cancel_futures=True)
    outcomes.sort(key=lambda outcome: outcome.source_id)
    _check_all_failed(outcomes)
    result = _run_result(outcomes)
    result["embeddings_job_id"] = _queue_embeddings(result["new"]) if settings.embed_after else None
    return result


def _queue_embeddings(new: int) -> str | None:
    """Queue embeddings.generate to run once the running harvest job has completed; returns its id (None: nothing
    new was stored)."""
    import hashlib

    from app.runtime import progress
    from app.runtime.enqueue import enqueue
    from workers.embeddings import DEFAULT_LIMIT, MAX_LIMIT

    if new <= 0:
        return None
    job_id = progress.current_job().id
    dedup = f"harvest-embed:{job_id}"
    if not _DEDUP_KEY.match(dedup):  # an id with characters a dedup key cannot hold: a digest keeps it unique
        dedup = "harvest-embed:" + hashlib.sha256(job_id.encode()).hexdigest()
    options = {"dependsOn": [job_id], "onParentFailure": "cancel", "jobId": dedup}
    queued = enqueue(progress.current_connection(), "embeddings.generate",
                     {"limit": min(MAX_LIMIT, max(DEFAULT_LIMIT, new))}, options)  # fmt: skip
    logger.info("job %s: embeddings job %s %s for %d new items", job_id, queued.id,
                "queued" if queued.created else "already queued", new)
    return queued.id


def harvest_one(source: dict, settings, on_step: Callable[[float, str], object] | None = None) -> Outcome:
    """Fetch `source`, parse the answer by its kind and store the new items; a failure is recorded on the source.

    Raises:
        PermanentFailure: the source answered a 4xx, the answer is malformed or too large, or its config is wrong.
        ServiceUnavailableError: the source cannot be reached now (retrying may help).
    """
    from app.runtime import resources
    from workers._harvest_store import record_error

    try:
        return _harvest(source, settings, on_step or (lambda percent, message: None))
    except Exception as exc:
        message = str(exc) if _named(exc, source) else f"{_service(source)}: {type(exc).__name__}: {exc}"
        with resources.database() as conn:
            record_error(conn, source["id"], message)
        logger.warning("harvest: %s failed: %s", _service(source), message)
        raise


def _harvest(source: dict, settings, on_step: Callable[[float, str], object]) -> Outcome:
    from app.errors import PermanentFailure
    from app.runtime import resources
    from workers._harvest_fetch import fetch
    from workers._harvest_parse import parse
    from workers._harvest_store import record_ok, store_items

    service = _service(source)
    fetched = fetch(source["url"], source["kind"], etag=source["etag"], last_modified=source["last_modified"],
                    settings=settings, service=service)
    outcome = Outcome(source["id"], source["name"], SourceStatus.NOT_MODIFIED if fetched.not_modified else
                      SourceStatus.OK)
    if not fetched.not_modified:
        on_step(40, f"parsing {len(fetched.body):,} bytes from {source['name']}")
        try:
            parsed = parse(source["kind"], fetched.body, config=source["config"], max_items=settings.max_items,
                           url=fetched.url, content_type=fetched.content_type)
        except PermanentFailure as exc:
            raise PermanentFailure(f"{service}: {exc}") from None
        outcome.skipped, outcome.truncated = parsed.skipped, parsed.truncated
        on_step(70, f"storing {len(parsed.items)} items from {source['name']}")
    with resources.database() as conn:  # items and validators commit together
        if not fetched.not_modified:
            outcome.new, outcome.duplicates = store_items(conn, source["id"], parsed.items)
        record_ok(conn, source["id"], str(outcome.status), fetched.etag, fetched.last_modified)
    logger.info("harvest: %s: %s", service, _summary(outcome))
    return outcome


def _harvest_guarded(source: dict, settings) -> Outcome:
    """`harvest_one` for harvest.run: a failure becomes an outcome (already recorded on the source)."""
    from app.errors import RetryLater, ServiceUnavailableError

    try:
        return harvest_one(source, settings)
    except Exception as exc:
        if not isinstance(exc, ServiceUnavailableError | RetryLater) and not _named(exc, source):
            logger.exception("harvest: %s failed unexpectedly", _service(source))
        return Outcome(source["id"], source["name"], SourceStatus.ERROR, error=str(exc)[:500],
                       transient=isinstance(exc, ServiceUnavailableError | RetryLater))


def _check_all_failed(outcomes: list[Outcome]) -> None:
    """Fail the run, so it is retried, when every source failed and every failure may pass.

    Raises:
        ServiceUnavailableError: every source failed transiently.
    """
    from app.errors import ServiceUnavailableError

    if outcomes and all(outcome.status == SourceStatus.ERROR and outcome.transient for outcome in outcomes):
        first = outcomes[0].error
        raise ServiceUnavailableError(f"all {len(outcomes)} harvest sources failed transiently (first: {first})")


def _run_result(outcomes: list[Outcome]) -> dict:
    by_status = {status: sum(1 for o in outcomes if o.status == status)
                 for status in (SourceStatus.OK, SourceStatus.NOT_MODIFIED, SourceStatus.ERROR)}
    return {
        "sources": len(outcomes), "ok": by_status[SourceStatus.OK],
        "not_modified": by_status[SourceStatus.NOT_MODIFIED], "failed": by_status[SourceStatus.ERROR],
        "new": sum(o.new for o in outcomes), "duplicates": sum(o.duplicates for o in outcomes),
        "by_source": [_public(o) for o in outcomes],
    }


def _public(outcome: Outcome) -> dict:
    values = asdict(outcome)
    values["status"] = str(outcome.status)
    if outcome.status != SourceStatus.ERROR:
        del values["error"], values["transient"]
    return values


def _summary(outcome: Outcome) -> str:
    if outcome.status == SourceStatus.ERROR:
        return f"{outcome.name}: failed: {outcome.error}"
    if outcome.status == SourceStatus.NOT_MODIFIED:
        return f"{outcome.name}: not modified"
    extra = f", {outcome.truncated} left past HARVEST_MAX_ITEMS" if outcome.truncated else ""
    return f"{outcome.name}: {outcome.new} new, {outcome.duplicates} duplicates, {outcome.skipped} empty{extra}"


def _service(source: dict) -> str:
    """The source as messages name it: id and name, never the URL (it may carry credentials)."""
    return f"harvest source {source['id']} ({source['name']})"


def _named(exc: Exception, source: dict) -> bool:
    """Whether the message of `exc` already names the source."""
    return str(exc).startswith(f"harvest source {source['id']}")


def _settings():
    """The HARVEST_* settings; a bad value fails the job at once (retrying cannot fix it)."""
    from app.errors import ConfigError, PermanentFailure
    from workers._harvest_fetch import HarvestSettings

    try:
        return HarvestSettings.from_env()
    except ConfigError as exc:
        raise PermanentFailure(str(exc)) from None
