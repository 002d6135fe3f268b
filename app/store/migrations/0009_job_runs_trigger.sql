-- What started each run of a schedule entry: its cron slot, or an operator's "run now".
-- trigger: 'cron' (the slot schedule_slot fired, on time or caught up at start-up), 'run_now' (outside the cron,
-- schedule_slot NULL), NULL for jobs no schedule created.
ALTER TABLE job_runs ADD COLUMN trigger text CONSTRAINT job_runs_trigger_check CHECK (trigger IN ('cron', 'run_now'));
ALTER TABLE job_runs ADD COLUMN schedule_slot timestamptz;
