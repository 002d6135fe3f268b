-- Hourly rollup of finished runs, kept by the history writer in the same transaction as the runs themselves,
-- so stats over any window read a few hundred rows instead of scanning job_runs.
CREATE TABLE job_runs_hourly (
    hour        timestamptz NOT NULL,
    queue       text        NOT NULL,
    task        text        NOT NULL,
    completed   bigint      NOT NULL DEFAULT 0,
    failed      bigint      NOT NULL DEFAULT 0, -- failed, timed out or abandoned for good or for this attempt
    total       bigint      NOT NULL DEFAULT 0, -- every finished attempt (also retried, canceled, skipped)
    duration_ms double precision NOT NULL DEFAULT 0, -- sum over completed runs
    buckets     bigint[]    NOT NULL,               -- completed runs per duration bucket (app/rollup.py)
    PRIMARY KEY (hour, queue, task)
);
CREATE INDEX job_runs_hourly_queue_hour_idx ON job_runs_hourly (queue, hour);
