-- One row per execution attempt of a job: the durable history that outlives Redis.
CREATE TABLE job_runs (
    id              bigserial PRIMARY KEY,
    job_id          text        NOT NULL,
    attempt         integer     NOT NULL DEFAULT 1,
    queue           text        NOT NULL,
    task            text        NOT NULL,
    schedule_id     text,
    worker          text,
    status          text        NOT NULL,
    enqueued_at     timestamptz,
    started_at      timestamptz,
    ended_at        timestamptz,
    duration_ms     double precision,
    items_processed integer,
    items_failed    integer,
    error_type      text,
    error_message   text,
    error_traceback text,
    result          jsonb,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT job_runs_status_check CHECK (status IN (
        'started', 'completed', 'failed', 'retried', 'canceled', 'abandoned', 'timed_out', 'skipped')),
    -- a replayed write (after a PostgreSQL outage) updates the row instead of adding a second one
    CONSTRAINT job_runs_job_attempt_key UNIQUE (job_id, attempt)
);

CREATE INDEX job_runs_queue_started_idx ON job_runs (queue, started_at DESC);
CREATE INDEX job_runs_task_started_idx ON job_runs (task, started_at DESC);
CREATE INDEX job_runs_status_started_idx ON job_runs (status, started_at DESC);
CREATE INDEX job_runs_schedule_started_idx ON job_runs (schedule_id, started_at DESC) WHERE schedule_id IS NOT NULL;
CREATE INDEX job_runs_started_idx ON job_runs (started_at DESC);
