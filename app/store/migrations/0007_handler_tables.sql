-- The data of the handlers in workers/: one block per queue. Tables that two queues share (harvested content and
-- embeddings, document analyses and their cleanup, sync items and the reports) are declared here once.

-- sync: the records tracked per workspace, as the providers last returned them
CREATE TABLE sync_items (
    workspace_id  text NOT NULL,
    external_id   text NOT NULL,               -- the record's id at the providers
    data          jsonb,                       -- the record as last fetched (NULL before the first sync)
    content_hash  text,                        -- sha256 of the canonical JSON of data: change detection
    provider      text,                        -- which provider answered last (primary, fallback)
    last_error    text,                        -- why the last fetch of this item failed, if it did
    created_at    timestamptz NOT NULL DEFAULT now(),
    synced_at     timestamptz,                 -- last successful fetch, changed or not
    changed_at    timestamptz,                 -- last time data changed
    PRIMARY KEY (workspace_id, external_id)
);

-- sync: one row per run of a workspace (kept when SAVE_SYNC_STATS is on)
CREATE TABLE sync_runs (
    id              bigserial PRIMARY KEY,
    job_id          text NOT NULL UNIQUE,      -- a retried job updates its row
    workspace_id    text NOT NULL,
    started_at      timestamptz NOT NULL,
    ended_at        timestamptz NOT NULL,
    new_count       integer NOT NULL DEFAULT 0,
    updated_count   integer NOT NULL DEFAULT 0,
    unchanged_count integer NOT NULL DEFAULT 0,
    failed_count    integer NOT NULL DEFAULT 0,
    sources         jsonb NOT NULL DEFAULT '{}' -- answers by source: {"primary": n, "fallback": n, "cache": n}
);
CREATE INDEX sync_runs_workspace ON sync_runs (workspace_id, started_at DESC);
CREATE INDEX sync_runs_ended ON sync_runs (ended_at);

-- reports: recurring report schedules and the reports built
CREATE TABLE report_schedules (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    cron          text NOT NULL,
    timezone      text NOT NULL DEFAULT 'UTC',
    recipients    jsonb NOT NULL DEFAULT '[]', -- [{"channel": "email" | "webhook" | "whatsapp", "to": "..."}]
    formats       text[] NOT NULL DEFAULT '{html}', -- html, csv, pdf
    enabled       boolean NOT NULL DEFAULT true,
    last_run_at   timestamptz,
    next_run_at   timestamptz,                 -- computed from cron after each run
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX report_schedules_due ON report_schedules (next_run_at) WHERE enabled;

CREATE TABLE reports (
    id            bigserial PRIMARY KEY,
    job_id        text NOT NULL UNIQUE,        -- a retried job replaces its report, never adds a second
    schedule_id   text REFERENCES report_schedules (id) ON DELETE SET NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    summary       jsonb NOT NULL,
    html          text,
    csv           text,
    pdf           bytea,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reports_schedule ON reports (schedule_id, created_at DESC);

-- system.update_stats: the weekly figures per queue and task, from the run history
CREATE TABLE job_stats_weekly (
    week_start    date NOT NULL,               -- Monday of the ISO week, UTC
    queue         text NOT NULL,
    task          text NOT NULL,
    runs          integer NOT NULL,
    failed        integer NOT NULL,
    p50_ms        double precision,
    p95_ms        double precision,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (week_start, queue, task)
);

-- documents: uploaded PDFs, what was extracted from them, and their analyses
CREATE TABLE documents (
    id            text PRIMARY KEY,
    filename      text NOT NULL,
    content       bytea NOT NULL,              -- the PDF as uploaded
    status        text NOT NULL DEFAULT 'pending', -- pending, processing, processed, failed
    page_count    integer,
    metadata      jsonb,
    text          text,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz
);

CREATE TABLE document_analyses (
    id            bigserial PRIMARY KEY,
    document_id   text NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    analysis_type text NOT NULL,
    provider      text NOT NULL,
    result        jsonb NOT NULL,              -- e.g. {"summary": "...", "keywords": [...]}
    temporary     boolean NOT NULL DEFAULT false, -- previews: deleted by cache-cleanup after 48 h
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (document_id, analysis_type, temporary)
);
CREATE INDEX document_analyses_temporary ON document_analyses (created_at) WHERE temporary;

-- notifications: one row per message, keyed so a retried job never sends it twice
CREATE TABLE notification_outbox (
    idempotency_key     text PRIMARY KEY,
    channel             text NOT NULL,         -- email, webhook, whatsapp
    recipient           text NOT NULL,
    job_id              text NOT NULL,
    status              text NOT NULL,         -- sending, sent, failed
    attempts            integer NOT NULL DEFAULT 0,
    provider_message_id text,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz
);
CREATE INDEX notification_outbox_created ON notification_outbox (created_at);

-- harvest: where content comes from, and what came
CREATE TABLE harvest_sources (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL,
    url             text NOT NULL UNIQUE,
    kind            text NOT NULL CHECK (kind IN ('feed', 'json', 'html')), -- feed: RSS or Atom
    config          jsonb NOT NULL DEFAULT '{}', -- per kind, e.g. where the items are in a JSON answer
    enabled         boolean NOT NULL DEFAULT true,
    etag            text,                      -- validators of the last answer, sent back next time
    last_modified   text,
    last_fetched_at timestamptz,
    last_status     text,                      -- ok, not-modified, error
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE harvested_content (
    id            bigserial PRIMARY KEY,
    source_id     bigint NOT NULL REFERENCES harvest_sources (id) ON DELETE CASCADE,
    content_hash  text NOT NULL UNIQUE,        -- sha256 of the normalised title and text: dedup across sources
    url           text,
    title         text,
    content       text NOT NULL,
    published_at  timestamptz,
    metadata      jsonb NOT NULL DEFAULT '{}',
    harvested_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX harvested_content_source ON harvested_content (source_id, harvested_at DESC);

-- embeddings: one vector per harvested item (PostgreSQL arrays: no extension needed)
CREATE TABLE content_embeddings (
    content_id    bigint PRIMARY KEY REFERENCES harvested_content (id) ON DELETE CASCADE,
    provider      text NOT NULL,
    model         text NOT NULL,
    dimensions    integer NOT NULL,
    embedding     real[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
