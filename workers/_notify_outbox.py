"""The notification outbox: one row per idempotency key in `notification_outbox`, claimed under an advisory lock.

A claim holds a session-level PostgreSQL advisory lock on the key for the whole send, so two jobs with the same key
never send at once: the second waits (at most LOCK_WAIT seconds) and then finds the row `sent`. The lock belongs to
the connection, so a worker that dies mid-send frees it with its connection. Every status change is committed at
once: `sending` must be durable before the provider is called, or a crash could hide an attempt.

A key names one message: the row keeps a digest of the message's content (channel, recipient, subject, texts,
attachments, payload), and a key reused for another content is a conflict (`KeyConflict`, a permanent failure),
never an "already sent" for a message nobody received.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from app.errors import PermanentFailure, ServiceUnavailableError

logger = logging.getLogger(__name__)

#: advisory lock namespace (first key of the two-int form): "noti" in ASCII, apart from other bullrq locks
LOCK_NAMESPACE = 0x6E6F7469
#: seconds a job waits for another job that is sending the same key (below the queue's 60 s timeout)
LOCK_WAIT = 40
#: characters of an error kept in the row
MAX_ERROR = 2000


def lock_id(key: str) -> int:
    """The 32-bit advisory lock id of an idempotency key (a collision only makes two keys wait for each other)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big", signed=True)


class KeyConflict(PermanentFailure):
    """Raised when an idempotency key already names a message with another content."""


class Claim:
    """The outbox row of one key, held by this job while it sends."""

    def __init__(self, conn, key: str, row: dict | None, content_hash: str | None = None):
        self.conn = conn
        self.key = key
        self.row = row or {}
        self.content_hash = content_hash
        earlier = self.row.get("content_hash")
        if earlier and content_hash and earlier != content_hash:
            raise KeyConflict(
                f"idempotency key {key!r} was already used for another message (job {self.row.get('job_id')}, "
                f"{self.row.get('channel')} to {self.row.get('recipient')}, {self.row.get('status')}): a key names "
                "one message; use a new key for new content"
            )
        self.already_sent = bool(row) and row["status"] == "sent"
        #: an earlier attempt started sending and never recorded how it ended (the crash window)
        self.previous_outcome_unknown = bool(row) and row["status"] == "sending"

    def start(self, channel: str, recipient: str, job_id: str) -> None:
        """Record `sending` (committed) before anything leaves."""
        self.row = self.conn.execute(
            """
            INSERT INTO notification_outbox (idempotency_key, channel, recipient, job_id, status, attempts,
                                             content_hash)
            VALUES (%s, %s, %s, %s, 'sending', 1, %s)
            ON CONFLICT (idempotency_key) DO UPDATE
               SET channel = EXCLUDED.channel, recipient = EXCLUDED.recipient, job_id = EXCLUDED.job_id,
                   status = 'sending', attempts = notification_outbox.attempts + 1, error = NULL,
                   content_hash = coalesce(notification_outbox.content_hash, EXCLUDED.content_hash)
            RETURNING *
            """,
            (self.key, channel, recipient, job_id, self.content_hash),
        ).fetchone()
        self.conn.commit()

    def sent(self, provider_message_id: str | None) -> dict:
        """Record that the provider accepted the message; returns the row."""
        self.row = self.conn.execute(
            """
            UPDATE notification_outbox
               SET status = 'sent', provider_message_id = %s, error = NULL, sent_at = now()
             WHERE idempotency_key = %s
            RETURNING *
            """,
            (provider_message_id, self.key),
        ).fetchone()
        self.conn.commit()
        return self.row

    def failed(self, error: str) -> None:
        """Record why this attempt failed (a retry of the job may still send it)."""
        try:
            self.conn.execute(
                "UPDATE notification_outbox SET status = 'failed', error = %s WHERE idempotency_key = %s",
                (error[:MAX_ERROR], self.key),
            )
            self.conn.commit()
        except Exception:  # the send's own error matters more: keep it, log this one
            logger.exception("notification %s: could not record the failure in the outbox", self.key)


@contextmanager
def claim(key: str, channel: str, recipient: str, job_id: str, content_hash: str | None = None) -> Iterator[Claim]:
    """Lock `key`, read its row and, unless it was sent already, record `sending`; unlock at the end.

    Raises:
        KeyConflict: the key's row holds a message with another `content_hash`.
    """
    import psycopg

    from app.runtime import resources

    with resources.database() as conn:
        lock = (LOCK_NAMESPACE, lock_id(key))
        try:
            # transaction-local: the pooled connection keeps its default once this commits
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{LOCK_WAIT * 1000}",))
            conn.execute("SELECT pg_advisory_lock(%s, %s)", lock)
            conn.commit()
        except psycopg.errors.LockNotAvailable:
            conn.rollback()
            raise ServiceUnavailableError(f"notification {key}: another job is still sending it") from None
        try:
            row = conn.execute("SELECT * FROM notification_outbox WHERE idempotency_key = %s", (key,)).fetchone()
            held = Claim(conn, key, row, content_hash)
            if not held.already_sent:
                held.start(channel, recipient, job_id)
            yield held
        finally:
            conn.rollback()  # a statement that failed mid-way must not block the unlock
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", lock)
            conn.commit()
