"""bullrq: Bull-style background jobs on Redis and RQ (config, connections, store, scheduler, CLI, web)."""
