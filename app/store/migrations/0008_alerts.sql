-- Alerts (app.alerts): one row per time a condition was seen, from pending (seen, not yet for long enough) through
-- open to cleared. A condition has at most one live (pending or open) row; its history is the cleared rows.
CREATE TABLE alerts (
    id            bigserial PRIMARY KEY,
    key           text        NOT NULL,            -- the condition and its subject, e.g. backlog:sync
    condition     text        NOT NULL,            -- failed, failure_rate, backlog, no_worker, no_scheduler, ...
    queue         text,
    task          text,
    schedule_id   text,
    status        text        NOT NULL CHECK (status IN ('pending', 'open', 'cleared')),
    summary       text        NOT NULL,            -- one line for people: what is wrong, with figures
    details       jsonb       NOT NULL DEFAULT '{}'::jsonb, -- figures and top errors as last seen
    count         bigint      NOT NULL DEFAULT 0,  -- the condition's count (failures, waiting jobs, ...)
    first_seen_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    opened_at     timestamptz,
    cleared_at    timestamptz,
    open_sent     boolean     NOT NULL DEFAULT false, -- the message saying it opened went out
    clear_sent    boolean     NOT NULL DEFAULT false,
    messages_sent integer     NOT NULL DEFAULT 0,  -- messages about this alert, all channels counted once
    last_sent_at  timestamptz
);
CREATE UNIQUE INDEX alerts_one_live ON alerts (key) WHERE status <> 'cleared';
CREATE INDEX alerts_key_sent ON alerts (key, last_sent_at DESC);
CREATE INDEX alerts_cleared ON alerts (cleared_at DESC) WHERE status = 'cleared';
