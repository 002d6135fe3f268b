"""The harvest queue's SQL: reading sources, storing new items once, and recording how each fetch went."""

from __future__ import annotations

from app.errors import PermanentFailure

#: characters of an error message kept in harvest_sources.last_error
MAX_ERROR_CHARS = 2000

_SOURCE_COLUMNS = "id, name, url, kind, config, enabled, etag, last_modified"
_INSERT = """
    INSERT INTO harvested_content (source_id, content_hash, url, title, content, published_at, metadata)
    VALUES (%s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (content_hash) DO NOTHING
    RETURNING id
"""
# the validators are replaced on a 200 (an answer without them clears the old ones: they no longer apply) and kept
# on a 304 unless it carries new ones
_RECORD_OK = """
    UPDATE harvest_sources
    SET last_status = %(status)s, last_error = NULL, last_fetched_at = now(),
        etag = CASE WHEN %(status)s = 'ok' THEN %(etag)s ELSE coalesce(%(etag)s, etag) END,
        last_modified = CASE WHEN %(status)s = 'ok' THEN %(last_modified)s
                             ELSE coalesce(%(last_modified)s, last_modified) END
    WHERE id = %(id)s
"""
_RECORD_ERROR = """
    UPDATE harvest_sources SET last_status = 'error', last_error = %s, last_fetched_at = now() WHERE id = %s
"""


def load_source(conn, source_id: int) -> dict:
    """The source `source_id`, enabled.

    Raises:
        PermanentFailure: no such source, or it is disabled.
    """
    row = conn.execute(f"SELECT {_SOURCE_COLUMNS} FROM harvest_sources WHERE id = %s", (source_id,)).fetchone()
    if row is None:
        raise PermanentFailure(f"harvest source {source_id} does not exist")
    if not row["enabled"]:
        raise PermanentFailure(f"harvest source {source_id} ({row['name']}) is disabled")
    return row


def enabled_sources(conn) -> list[dict]:
    """Every enabled source, oldest first."""
    return conn.execute(f"SELECT {_SOURCE_COLUMNS} FROM harvest_sources WHERE enabled ORDER BY id").fetchall()


def store_items(conn, source_id: int, items) -> tuple[int, int]:
    """Insert the items whose content hash is new; returns (new, duplicates).

    Raises:
        PermanentFailure: the source was deleted meanwhile.
    """
    import psycopg
    from psycopg.types.json import Jsonb

    new = duplicates = 0
    seen: set[str] = set()
    for item in items:
        digest = item.content_hash
        if digest in seen:
            duplicates += 1
            continue
        seen.add(digest)
        try:
            row = conn.execute(_INSERT, (source_id, digest, item.url, item.title, item.content, item.published_at,
                                         Jsonb(item.metadata))).fetchone()
        except psycopg.errors.ForeignKeyViolation:
            raise PermanentFailure(f"harvest source {source_id} was deleted while it was harvested") from None
        if row is None:
            duplicates += 1
        else:
            new += 1
    return new, duplicates


def record_ok(conn, source_id: int, status: str, etag: str | None, last_modified: str | None) -> None:
    """Record a successful fetch (`ok` or `not-modified`) and the validators to send next time."""
    conn.execute(_RECORD_OK, {"id": source_id, "status": status, "etag": etag, "last_modified": last_modified})


def record_error(conn, source_id: int, message: str) -> None:
    """Record a failed fetch; the validators stay, so the next fetch can still be conditional."""
    text = message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 3] + "..."
    conn.execute(_RECORD_ERROR, (text, source_id))
