"""bullrq: Bull-style background jobs on Redis and RQ, with durable run history in PostgreSQL.

The modules directly in `app/` are the base every part shares: settings (`config`, `sentinel`), Redis connections,
errors, logging setup, the task registry (task types and queue lookups), outgoing HTTP, notification recipients and
leadership (a role one process holds at a time). They import only each other and `queues.py`.

The parts, from the bottom up; each imports only the parts listed before it (and the base):

    store       PostgreSQL: connections, migrations, the history writer, run queries, the hourly rollup
    runtime     the job path on Redis: enqueue, the worker loop, leases, Lua scripts, controls, stats
    scheduling  cron, schedules.yaml, schedule state in PostgreSQL, the scheduler process
    alerts      conditions watched by one evaluator at a time, their state, messages through notifications
    local       local Redis/PostgreSQL/Sentinel servers, daemon processes, `scripts/up`
    web         the Flask app: admin API, pages, health, metrics, rq-dashboard
    cli         the `bullrq` and `workers` commands (may import every part)

Handlers in `workers/` may import the base, store, runtime and scheduling (report schedules read cron); never
local, web or the CLI.
`app.enqueue` is the earlier import path of `app.runtime.enqueue`, kept for code written against it (it re-exports,
nothing more). `tests/test_layout.py` holds the direction and finds import cycles.
"""
