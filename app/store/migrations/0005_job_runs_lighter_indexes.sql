-- Fewer index updates per written run: the (started_at, status) index of 0002 serves what (started_at) did, and
-- error search only needs the rows that have an error.
DROP INDEX IF EXISTS job_runs_started_idx;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        DROP INDEX IF EXISTS job_runs_error_message_trgm_idx;
        EXECUTE 'CREATE INDEX job_runs_error_message_trgm_idx ON job_runs USING gin (error_message gin_trgm_ops) '
                'WHERE error_message IS NOT NULL';
    END IF;
END
$$;
