-- Search in error messages without scanning the table: a trigram index where pg_trgm can be installed.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'pg_trgm is not available (%): searching error text will scan job_runs', SQLERRM;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        EXECUTE 'CREATE INDEX job_runs_error_message_trgm_idx ON job_runs USING gin (error_message gin_trgm_ops)';
    END IF;
END
$$;

-- Job ids are looked up one at a time (a job's runs); the unique (job_id, attempt) index serves that already.
-- Windows over all queues (stats pages) read by time alone.
CREATE INDEX IF NOT EXISTS job_runs_started_status_idx ON job_runs (started_at DESC, status);
