"""The `embeddings` queue: embed harvested content that has no embedding yet, and store the vectors in PostgreSQL.

Task types:
    embeddings.generate   data: {"batchSize": 1-256 (32), "limit": items at most this run, 1-1,000,000 (10,000)}
        Embeds rows of `harvested_content` that have no row in `content_embeddings`, oldest id first, `batchSize`
        texts (title and content) per provider call. Each batch is written in one transaction with
        ON CONFLICT DO NOTHING: a retry, a re-run or two runs at once never embed an item twice, nor fail on one
        the other run stored first. Items with no text at all are counted as failed and left without a vector.

Environment:
    EMBEDDINGS_PROVIDER    hashing (default) | openai | sentence-transformers
    EMBEDDINGS_API_URL     openai: base URL of an OpenAI-compatible server; requests go to <url>/v1/embeddings
    EMBEDDINGS_API_KEY     openai: bearer token (optional for local servers); never logged or shown
    EMBEDDINGS_MODEL       openai: model name (text-embedding-3-small); sentence-transformers: a local model
                           directory (default: all-MiniLM-L6-v2 from the `embeddings-local` extra); hashing: unused
    EMBEDDINGS_MAX_CHARS   characters of each text sent to the provider (8000)
    EMBEDDINGS_TIMEOUT     seconds per HTTP request to the provider (60)

Changing the provider or model does not re-embed anything: only items without a vector are embedded, and each
vector keeps the provider and model that made it. Vectors of other models are counted in the result
(`other_model`) and logged; delete those rows (DELETE FROM content_embeddings WHERE model = '...') to have the
next run embed them again with the current model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.errors import InvalidJobError
from app.tasks import task

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
MAX_BATCH_SIZE = 256
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 1_000_000

_MISSING = """
    SELECT c.id, c.title, c.content
    FROM harvested_content c LEFT JOIN content_embeddings e ON e.content_id = c.id
    WHERE e.content_id IS NULL AND c.id > %s
    ORDER BY c.id
    LIMIT %s
"""
_COUNT_MISSING = """
    SELECT count(*) AS n
    FROM harvested_content c LEFT JOIN content_embeddings e ON e.content_id = c.id
    WHERE e.content_id IS NULL
"""
# vectors go over as array literals, one per row, so a whole batch is one statement; FOR KEY SHARE keeps the
# content rows from being deleted between the check and the insert (no foreign-key error mid-run)
_STORE = """
    WITH live AS (SELECT id FROM harvested_content WHERE id = ANY(%(ids)s) FOR KEY SHARE)
    INSERT INTO content_embeddings (content_id, provider, model, dimensions, embedding)
    SELECT v.id, %(provider)s, %(model)s, %(dimensions)s, v.embedding::real[]
    FROM unnest(%(ids)s::bigint[], %(vectors)s::text[]) AS v(id, embedding) JOIN live ON live.id = v.id
    ON CONFLICT (content_id) DO NOTHING
    RETURNING content_id
"""


def _whole_number(kwargs: dict, name: str, key: str, default: int, high: int) -> None:
    value = kwargs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InvalidJobError(f"embeddings.generate: {key} must be a whole number from 1 to {high:,}")


def _validate_generate(kwargs: dict) -> None:
    _whole_number(kwargs, "batch_size", "batchSize", DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE)
    _whole_number(kwargs, "limit", "limit", DEFAULT_LIMIT, MAX_LIMIT)


@dataclass
class _Tally:
    """What one run did so far."""

    planned: int
    seen: int = 0
    embedded: int = 0
    skipped: int = 0  #: stored meanwhile by another run
    failed: int = 0  #: no text to embed
    batches: int = 0
    dimensions: int | None = None


@task("embeddings.generate", queue="embeddings", validate=_validate_generate)
def generate(batch_size: int = DEFAULT_BATCH_SIZE, limit: int = DEFAULT_LIMIT) -> dict:
    """Embed harvested content that has no embedding yet, `batch_size` items per provider call, `limit` at most."""
    from app.runtime import progress, resources

    settings, provider = _configured()
    with resources.database() as conn:
        tally = _Tally(planned=min(limit, conn.execute(_COUNT_MISSING).fetchone()["n"]))
        tally.dimensions = _stored_dimensions(conn, provider)
        other_model = _other_model_count(conn, provider)
    if other_model:
        logger.warning("embeddings: %d stored vectors come from another provider or model than %s %s; they are "
                       "kept, not re-embedded", other_model, provider.name, provider.model)
    progress.report(percent=0, message=f"{tally.planned} items to embed", processed=0, failed=0)
    last_id = 0
    while tally.seen < tally.planned:
        with resources.database() as conn:
            rows = conn.execute(_MISSING, (last_id, min(batch_size, tally.planned - tally.seen))).fetchall()
        if not rows:
            break  # another run embedded the rest
        last_id = rows[-1]["id"]
        _embed_batch(provider, rows, tally, settings.max_chars)
        progress.report(percent=100 * tally.seen / tally.planned, message=f"embedded {tally.embedded} of "
                        f"{tally.planned}", processed=tally.embedded, failed=tally.failed)
    with resources.database() as conn:
        remaining = conn.execute(_COUNT_MISSING).fetchone()["n"]
    progress.report(percent=100, message=f"done: {tally.embedded} embedded, {remaining} left without a vector",
                    processed=tally.embedded, failed=tally.failed)
    logger.info("embeddings: %d embedded, %d skipped, %d failed with %s %s", tally.embedded, tally.skipped,
                tally.failed, provider.name, provider.model)
    return {"provider": provider.name, "model": provider.model, "dimensions": tally.dimensions,
            "embedded": tally.embedded, "skipped": tally.skipped, "failed": tally.failed, "batches": tally.batches,
            "remaining": remaining, "other_model": other_model}


def _configured():
    """The settings and the provider they choose; a bad setting fails the job at once (retrying cannot fix it)."""
    from app.errors import ConfigError, PermanentFailure
    from workers._embedding_providers import EmbeddingSettings, make_provider

    try:
        settings = EmbeddingSettings.from_env()
    except ConfigError as exc:
        raise PermanentFailure(str(exc)) from None
    return settings, make_provider(settings)


def _embed_batch(provider, rows: list[dict], tally: _Tally, max_chars: int) -> None:
    """Embed one batch of rows and store the vectors in one transaction."""
    from app.runtime import resources
    from workers._embedding_providers import check_vectors

    tally.seen += len(rows)
    items = [(row["id"], text[:max_chars]) for row in rows if (text := _text(row))]
    tally.failed += len(rows) - len(items)
    if not items:
        return
    vectors = provider.embed([text for _, text in items])
    tally.dimensions = check_vectors(provider, vectors, len(items), tally.dimensions)
    with resources.database() as conn:
        stored = conn.execute(_STORE, {
            "ids": [content_id for content_id, _ in items],
            "vectors": ["{" + ",".join(repr(float(x)) for x in vector) + "}" for vector in vectors],
            "provider": provider.name,
            "model": provider.model,
            "dimensions": tally.dimensions,
        }).fetchall()
    tally.batches += 1
    tally.embedded += len(stored)
    tally.skipped += len(items) - len(stored)


def _text(row: dict) -> str:
    """What is embedded for an item: its title, then its content; empty when both are blank."""
    parts = [part.strip() for part in (row["title"] or "", row["content"] or "")]
    return "\n\n".join(part for part in parts if part)


def _stored_dimensions(conn, provider) -> int | None:
    """The length of the vectors already stored for this provider and model, if any (new ones must match)."""
    row = conn.execute(
        "SELECT dimensions FROM content_embeddings WHERE provider = %s AND model = %s LIMIT 1",
        (provider.name, provider.model),
    ).fetchone()
    return row["dimensions"] if row else None


def _other_model_count(conn, provider) -> int:
    return conn.execute(
        "SELECT count(*) AS n FROM content_embeddings WHERE provider <> %s OR model <> %s",
        (provider.name, provider.model),
    ).fetchone()["n"]
