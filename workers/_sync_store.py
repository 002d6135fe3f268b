"""The `sync` queue's tables (migration 0007): tracked items per workspace in `sync_items`, one row per run in
`sync_runs`. Only `workers.sync` uses this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from app.runtime import resources

_WRITE_CHANGED = (
    "UPDATE sync_items SET data = %s, content_hash = %s, provider = %s, last_error = NULL, synced_at = now(), "
    "changed_at = now() WHERE workspace_id = %s AND external_id = %s"
)
# an unchanged record is not written again: only when and from where it was last fetched
_WRITE_UNCHANGED = (
    "UPDATE sync_items SET synced_at = now(), provider = %s, last_error = NULL "
    "WHERE workspace_id = %s AND external_id = %s"
)
# a failed fetch keeps the record as it was: only why it failed
_WRITE_FAILED = "UPDATE sync_items SET last_error = %s WHERE workspace_id = %s AND external_id = %s"


def content_hash(data: dict) -> str:
    """sha256 of the record's canonical JSON (sorted keys, no spaces): equal records, equal hashes."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def workspaces() -> list[str]:
    """Every workspace that tracks at least one item."""
    with resources.database() as conn:
        return [row["workspace_id"] for row in conn.execute(
            "SELECT DISTINCT workspace_id FROM sync_items ORDER BY workspace_id"
        )]  # fmt: skip


def count_items(workspace_id: str) -> int:
    with resources.database() as conn:
        row = conn.execute("SELECT count(*) AS n FROM sync_items WHERE workspace_id = %s", (workspace_id,)).fetchone()
    return row["n"]


def item_pages(workspace_id: str, size: int) -> Iterator[list[dict]]:
    """The workspace's items in pages of `size`, by external id (keyset paging: rows added meanwhile are safe):
    dicts of external_id, content_hash and is_new (never fetched yet)."""
    after = ""
    while True:
        with resources.database() as conn:
            page = conn.execute(
                "SELECT external_id, content_hash, data IS NULL AS is_new FROM sync_items "
                "WHERE workspace_id = %s AND external_id > %s ORDER BY external_id LIMIT %s",
                (workspace_id, after, size),
            ).fetchall()
        if not page:
            return
        yield page
        after = page[-1]["external_id"]


def write_batch(workspace_id: str, changed: list[tuple], unchanged: list[tuple], failed: list[tuple]) -> None:
    """Write one batch in one transaction.

    Args:
        changed: (external_id, data, content_hash, provider) of new and updated records.
        unchanged: (external_id, provider) of records fetched again with the same hash.
        failed: (external_id, error) of items no provider gave.
    """
    with resources.database() as conn, conn.cursor() as cur:
        _many(cur, _WRITE_CHANGED, [(Jsonb(d), h, p, workspace_id, i) for i, d, h, p in changed])
        _many(cur, _WRITE_UNCHANGED, [(p, workspace_id, i) for i, p in unchanged])
        _many(cur, _WRITE_FAILED, [(e, workspace_id, i) for i, e in failed])


def save_run(job_id: str, workspace_id: str, started_at: datetime, ended_at: datetime, counts: dict,
             sources: dict) -> None:
    """Record a run's figures; a retried job (same id) replaces its row."""
    with resources.database() as conn:
        conn.execute(
            "INSERT INTO sync_runs (job_id, workspace_id, started_at, ended_at, new_count, updated_count, "
            "unchanged_count, failed_count, sources) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (job_id) DO UPDATE SET workspace_id = EXCLUDED.workspace_id, "
            "started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at, new_count = EXCLUDED.new_count, "
            "updated_count = EXCLUDED.updated_count, unchanged_count = EXCLUDED.unchanged_count, "
            "failed_count = EXCLUDED.failed_count, sources = EXCLUDED.sources",
            (job_id, workspace_id, started_at, ended_at, counts["new"], counts["updated"], counts["unchanged"],
             counts["failed"], Jsonb(sources)),
        )  # fmt: skip


def _many(cur: psycopg.Cursor, sql: str, rows: list[tuple]) -> None:
    if rows:
        cur.executemany(sql, rows)
