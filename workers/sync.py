"""The `sync` queue: keep the records each workspace tracks (table `sync_items`) in step with external providers.

Task types:
    sync.manual     data `{"workspaceId": str (1-200 characters), "forceUpdate": bool = false}`: sync one workspace
                    now; `forceUpdate` skips the response cache (fresh answers still refill it). A workspace that
                    tracks no items completes with zero counts. Its group (app.runtime.groups) is its workspace:
                    workers take the queue's syncs in turns across workspaces, one of each at a time.
    sync.scheduled  no data; every 6 h (`sync-scheduled` in schedules.yaml): creates a batch (app.runtime.flows)
                    of one `sync.manual` per workspace that tracks items, with `sync.scheduled-done` as its
                    onComplete callback; once per scheduled job even when that job is retried (the batch ids are
                    kept under `queues.sync_fanout_key(<job id>)` for a day). Over FANOUT_BATCH workspaces, one
                    batch per FANOUT_BATCH, each with its callback (`part` of `parts`). Returns the batch ids and
                    how many syncs it enqueued.
    sync.scheduled-done  data `{"batchId", "scheduledJobId", "part": 1, "parts": 1}` (given by sync.scheduled):
                    runs once when every sync of its batch has ended and sums the run up: workspaces, completed,
                    failed, canceled, and each failed or canceled workspace with its job id and error (the first
                    100). Completes with that summary as its result when no workspace failed; otherwise fails for
                    good (PermanentFailure) with the counts and the failed workspaces in its error, so the `failed`
                    alert condition opens `failed:sync:sync.scheduled-done` (canceled workspaces alone raise none).

Provider API (the same for both providers): `GET {base}/items/{external_id}` (the id path-encoded) with
`Authorization: Bearer <token>` when a token is set, answered by 200 and the record as a JSON object. 404 means the
provider does not have the item; 408, 429, 5xx or no connection mean it is unavailable for now; anything else (e.g.
401, or an answer that is not a JSON object) is an error of that provider. An item the primary cannot give is asked
of the fallback.

A run pages through the workspace's items by external id in batches of 50; each batch is fetched with at most 5
requests in flight and written in one transaction. Answers are cached in Redis for 6 h under
`bullrq:cache:sync:<sha256 of the URL>`. Change detection compares the sha256 of the record's canonical JSON:
    new        never fetched before (data was NULL): data, hash, changed_at and synced_at written
    updated    the hash changed: data, hash, changed_at and synced_at written
    unchanged  same hash: only synced_at (and provider, last_error cleared); the record is not rewritten
    failed     no provider gave it: last_error written, the record kept
A run whose items ALL failed because the providers are unavailable raises ServiceUnavailableError, so the queue's
policy retries it (3 attempts, 30 s apart); it stops after the first batch that shows this instead of knocking on
every item. Other failures (404 from both: the item is gone) complete the job with `failed` > 0.
Progress after each batch: percent, items processed (synced) and failed.

Environment:
    SYNC_PRIMARY_URL      base URL of the primary provider (http or https); required
    SYNC_PRIMARY_TOKEN    bearer token for the primary (optional)
    SYNC_FALLBACK_URL     base URL of the fallback provider (optional: no fallback without it)
    SYNC_FALLBACK_TOKEN   bearer token for the fallback (optional)
    SAVE_SYNC_STATS       keep one `sync_runs` row per run (new, updated, unchanged, failed, sources); default true
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime

from app.errors import ConfigError, InvalidJobError, PermanentFailure, ServiceUnavailableError
from app.tasks import task
from workers._sync_settings import SyncSettings

logger = logging.getLogger(__name__)

#: items fetched and written per batch (the original system's batch size)
BATCH_SIZE = 50
#: seconds a provider's answer stays in the cache
CACHE_TTL = 6 * 3600
#: workspaces per batch of a scheduled sync (app.runtime.flows.MAX_BATCH_JOBS: the most a batch holds)
FANOUT_BATCH = 10_000
#: longest workspace id accepted
MAX_WORKSPACE_ID = 200


def _check_workspace(workspace_id: object) -> None:
    if (
        not isinstance(workspace_id, str)
        or not workspace_id.strip()
        or len(workspace_id) > MAX_WORKSPACE_ID
        or "\x00" in workspace_id
    ):
        raise InvalidJobError(f"sync.manual: workspaceId must be a non-empty string of at most {MAX_WORKSPACE_ID} "
                              "characters")


def _validate_manual(kwargs: dict) -> None:
    _check_workspace(kwargs.get("workspace_id"))
    if not isinstance(kwargs.get("force_update", False), bool):
        raise InvalidJobError("sync.manual: forceUpdate must be true or false")


@task("sync.manual", queue="sync", validate=_validate_manual, group_by="workspace_id")
def manual(workspace_id: str, force_update: bool = False) -> dict:
    """Sync the items workspace `workspace_id` tracks from the providers (`force_update`: bypass the cache)."""
    from app.runtime import progress

    try:
        settings = SyncSettings.from_env()
    except ConfigError as exc:
        raise PermanentFailure(str(exc)) from None
    job = progress.current_job()
    return _sync_workspace(settings, workspace_id, force_update, job.id if job else None)


@task("sync.scheduled", queue="sync")
def scheduled() -> dict:
    """Create a batch of one sync.manual per workspace that tracks items, once per scheduled job even when retried."""
    from app.runtime import progress
    from workers import _sync_store as store
    from workers._sync_fanout import fan_out

    job_id = progress.current_job().id
    found = store.workspaces()
    valid = [workspace for workspace in found if _is_valid_workspace(workspace)]
    invalid = len(found) - len(valid)
    if invalid:
        logger.warning("job %s: skipped %d workspace ids not valid for sync.manual", job_id, invalid)

    def on_part(done: int, total: int) -> None:
        progress.report(percent=100 * done / total, message=f"{done} of {total} syncs in batches",
                        processed=done, failed=invalid)

    run = fan_out(progress.current_connection(), job_id, valid, FANOUT_BATCH, on_part)
    progress.report(percent=100, message=f"{len(valid)} workspaces in {len(run['batches'])} batch(es), "
                    f"{run['enqueued']} enqueued by this attempt", processed=len(valid), failed=invalid)
    logger.info("job %s: enqueued %d syncs for %d workspaces", job_id, run["enqueued"], len(valid))
    return {"workspaces": len(found), "enqueued": run["enqueued"], "already_enqueued": len(valid) - run["enqueued"],
            "invalid": invalid, "batches": run["batches"]}


def _validate_done(kwargs: dict) -> None:
    for name, key in (("batch_id", "batchId"), ("scheduled_job_id", "scheduledJobId")):
        value = kwargs.get(name)
        if not isinstance(value, str) or not 1 <= len(value) <= 200:
            raise InvalidJobError(f"sync.scheduled-done: {key} must be a job id (1 to 200 characters)")
    part, parts = kwargs.get("part", 1), kwargs.get("parts", 1)
    if any(isinstance(n, bool) or not isinstance(n, int) for n in (part, parts)) or not 1 <= part <= parts:
        raise InvalidJobError("sync.scheduled-done: part and parts must be whole numbers, 1 <= part <= parts")


@task("sync.scheduled-done", queue="sync", validate=_validate_done)
def scheduled_done(batch_id: str, scheduled_job_id: str, part: int = 1, parts: int = 1) -> dict:
    """Sum up a scheduled sync's batch once it ended; fail for good, naming them, when workspaces failed."""
    from app.runtime import progress
    from workers._sync_fanout import failure_message, summarize

    summary = summarize(progress.current_connection(), batch_id, scheduled_job_id, part, parts)
    progress.report(percent=100, message=f"{summary['completed']} of {summary['workspaces']} workspaces synced, "
                    f"{summary['failed']} failed, {summary['canceled']} canceled",
                    processed=summary["completed"], failed=summary["failed"] + summary["canceled"])
    if summary["failed"]:
        logger.warning("scheduled sync %s: %d of %d workspaces failed", scheduled_job_id, summary["failed"],
                       summary["workspaces"])
        raise PermanentFailure(failure_message(summary))
    logger.info("scheduled sync %s: batch %s: %d of %d workspaces synced, %d canceled", scheduled_job_id, batch_id,
                summary["completed"], summary["workspaces"], summary["canceled"])
    return summary


def _is_valid_workspace(workspace_id: str) -> bool:
    try:
        _check_workspace(workspace_id)
    except InvalidJobError:
        return False
    return True


class _Run:
    """The figures of one run of a workspace."""

    def __init__(self) -> None:
        self.counts = {"new": 0, "updated": 0, "unchanged": 0, "failed": 0}
        self.sources = Counter({"primary": 0, "fallback": 0, "cache": 0})
        self.transient = 0  #: failed items whose providers were unavailable
        self.last_error: str | None = None

    @property
    def seen(self) -> int:
        return sum(self.counts.values())

    @property
    def synced(self) -> int:
        return self.seen - self.counts["failed"]

    @property
    def providers_down(self) -> bool:
        """Every item so far failed because the providers are unavailable."""
        return self.seen > 0 and self.transient == self.counts["failed"] == self.seen

    def classify(self, page: list[dict], answers: list) -> tuple[list, list, list]:
        """Count one batch; returns its rows to write: changed, unchanged, failed (see `_sync_store.write_batch`)."""
        from workers._sync_store import content_hash

        changed, unchanged, failed = [], [], []
        for item, answer in zip(page, answers, strict=True):
            if answer.data is None:
                self.counts["failed"] += 1
                self.transient += answer.transient
                self.last_error = answer.error
                failed.append((answer.external_id, answer.error))
                continue
            self.sources[answer.source] += 1
            digest = content_hash(answer.data)
            if item["is_new"]:
                self.counts["new"] += 1
            elif digest != item["content_hash"]:
                self.counts["updated"] += 1
            else:
                self.counts["unchanged"] += 1
                unchanged.append((answer.external_id, answer.provider))
                continue
            changed.append((answer.external_id, answer.data, digest, answer.provider))
        return changed, unchanged, failed

    def summary(self) -> str:
        return ", ".join(f"{n} {name}" for name, n in self.counts.items())


def _sync_workspace(settings: SyncSettings, workspace_id: str, force_update: bool, job_id: str | None) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from app.runtime import progress, resources
    from workers import _sync_store as store
    from workers._sync_providers import MAX_CONCURRENT, fetch_batch

    started_at = datetime.now(UTC)
    total = store.count_items(workspace_id)
    batches = -(-total // BATCH_SIZE)
    run = _Run()
    if total == 0:
        progress.report(percent=100, message=f"workspace {workspace_id!r} tracks no items: nothing to sync",
                        processed=0, failed=0)
    pool = ThreadPoolExecutor(MAX_CONCURRENT, thread_name_prefix="sync-fetch")
    try:
        for number, page in enumerate(store.item_pages(workspace_id, BATCH_SIZE), 1):
            answers = fetch_batch(
                settings.providers, [item["external_id"] for item in page], redis_client=resources.redis_client(),
                pool=pool, use_cache=not force_update, cache_ttl=CACHE_TTL,
            )  # fmt: skip
            store.write_batch(workspace_id, *run.classify(page, answers))
            progress.report(percent=100 * min(run.seen, total) / max(total, 1),
                            message=f"batch {number} of {batches}: {run.summary()}",
                            processed=run.synced, failed=run.counts["failed"])
            if run.providers_down:
                break  # every item so far found the providers down: the rest would too
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if settings.save_stats and job_id is not None:
        store.save_run(job_id, workspace_id, started_at, datetime.now(UTC), run.counts, dict(run.sources))
    logger.info("sync %s: %d items: %s", workspace_id, total, run.summary())
    if run.providers_down:
        raise ServiceUnavailableError(f"sync of workspace {workspace_id!r}: all {run.seen} items fetched failed, "
                                      f"the providers are unavailable ({run.last_error})")
    return {"workspace_id": workspace_id, "items": total, **run.counts, "sources": dict(run.sources),
            "force_update": force_update}
