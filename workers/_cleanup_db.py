"""The database half of the cache cleanup: delete rows past their retention, a few thousand per statement.

Each batch is its own short transaction (`DELETE ... WHERE ctid = ANY(ARRAY(SELECT ctid ... LIMIT n))`, which
PostgreSQL runs as a TID scan), so a big backlog never holds long locks or one huge transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: rows per DELETE statement
DELETE_BATCH = 5000


@dataclass(frozen=True)
class RetentionRule:
    """Rows of `table` matching `where` (one `%s`: the retention in seconds) are past their retention."""

    table: str
    where: str
    setting: str  #: which retention applies: "logs" or "temporary"


#: fixed table names and conditions: nothing here comes from job data
RULES = (
    RetentionRule("sync_runs", "ended_at < now() - make_interval(secs => %s)", "logs"),
    RetentionRule(
        "notification_outbox",
        # created_at first so the index on it narrows the rows; sent_at, when set, is the delivery time
        "status IN ('sent', 'failed') AND created_at < now() - make_interval(secs => %s) "
        "AND coalesce(sent_at, created_at) < now() - make_interval(secs => %s)",
        "logs",
    ),
    RetentionRule("document_analyses", "temporary AND created_at < now() - make_interval(secs => %s)", "temporary"),
)


def purge(
    connection: Callable,
    retention: dict[str, float],
    dry_run: bool = False,
    on_table: Callable[[str, int], None] = lambda table, rows: None,
) -> tuple[dict[str, int], int]:
    """Delete (or, in a dry run, count) the rows of every rule past `retention[rule.setting]` seconds.

    Args:
        connection: a context manager factory giving a connection that commits when its block ends.
    Returns:
        rows per table, and how many statements ran.
    """
    rows: dict[str, int] = {}
    statements = 0
    for rule in RULES:
        seconds = retention[rule.setting]
        params = [seconds] * rule.where.count("%s")
        if dry_run:
            with connection() as conn:
                rows[rule.table] = conn.execute(f"SELECT count(*) AS n FROM {rule.table} WHERE {rule.where}",
                                                params).fetchone()["n"]
            statements += 1
        else:
            rows[rule.table], done = _delete(connection, rule, params)
            statements += done
        logger.info("cache cleanup: %s: %d rows past retention%s", rule.table, rows[rule.table],
                    " (dry run)" if dry_run else " deleted")
        on_table(rule.table, rows[rule.table])
    return rows, statements


def _delete(connection: Callable, rule: RetentionRule, params: list) -> tuple[int, int]:
    sql = (
        f"DELETE FROM {rule.table} WHERE ctid = ANY(ARRAY("
        f"SELECT ctid FROM {rule.table} WHERE {rule.where} LIMIT %s))"
    )
    deleted = statements = 0
    while True:
        with connection() as conn:  # one transaction per batch: short locks
            count = conn.execute(sql, [*params, DELETE_BATCH]).rowcount
        deleted += count
        statements += 1
        if count < DELETE_BATCH:
            return deleted, statements
