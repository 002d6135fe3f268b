-- Hourly rollup of finished attempts, kept by the history writer in the same transaction as the runs themselves,
-- so stats over any window read a few hundred rows instead of scanning job_runs.
CREATE TABLE job_runs_hourly (
    hour        timestamptz NOT NULL,
    queue       text        NOT NULL,
    task        text        NOT NULL,
    completed   bigint      NOT NULL DEFAULT 0,
    failed      bigint      NOT NULL DEFAULT 0, -- failed, timed out or abandoned
    total       bigint      NOT NULL DEFAULT 0, -- every finished attempt (also retried and canceled)
    duration_ms double precision NOT NULL DEFAULT 0, -- sum over completed attempts
    PRIMARY KEY (hour, queue, task)
);
CREATE INDEX job_runs_hourly_queue_hour_idx ON job_runs_hourly (queue, hour);

-- Completed attempts per duration bucket (bucket boundaries: app/rollup.py), for percentiles.
CREATE TABLE job_runs_hourly_buckets (
    hour   timestamptz NOT NULL,
    queue  text        NOT NULL,
    task   text        NOT NULL,
    bucket smallint    NOT NULL,
    runs   bigint      NOT NULL,
    PRIMARY KEY (hour, queue, task, bucket)
);
