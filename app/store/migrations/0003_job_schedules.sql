-- Recurring entries: what schedules.yaml declares, what operators changed at run time, and each entry's state.
CREATE TABLE job_schedules (
    id                 text PRIMARY KEY,
    task               text        NOT NULL,
    queue              text        NOT NULL,
    cron               text        NOT NULL,            -- as declared
    timezone           text        NOT NULL,            -- as declared
    args               jsonb       NOT NULL DEFAULT '{}'::jsonb,
    description        text        NOT NULL DEFAULT '',
    enabled            boolean     NOT NULL DEFAULT true, -- as declared
    max_runtime        integer     NOT NULL DEFAULT 7200, -- seconds
    catch_up           boolean     NOT NULL DEFAULT true,
    cron_override      text,                             -- run-time changes: win until cleared
    timezone_override  text,
    enabled_override   boolean,
    next_run_at        timestamptz,
    last_run_at        timestamptz,
    total_runs         bigint      NOT NULL DEFAULT 0,
    last_status        text        NOT NULL DEFAULT 'pending'
        CHECK (last_status IN ('pending', 'running', 'success', 'error')),
    last_duration_ms   double precision,
    last_result        jsonb,
    last_error         text,
    current_job_id     text,
    current_started_at timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
