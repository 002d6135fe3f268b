"""The store: PostgreSQL connections, migrations, the history writer, run queries and the hourly rollup.

Owns `job_runs` and every other table (`migrations/`), and carries run rows from the Redis stream into them.
May import the base of `app` (config, errors, ...) and `queues.py`; never the runtime, scheduling, web or CLI.
"""
