-- notifications: what each idempotency key was first used for, so a key reused for another message is refused
-- (NULL for rows written before this column: their content is unknown and not compared).
ALTER TABLE notification_outbox ADD COLUMN content_hash text;
