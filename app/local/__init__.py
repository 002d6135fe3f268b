"""Local operation: embedded Redis, PostgreSQL and Sentinel servers, daemon processes, and `scripts/up`.

Owns the run directory (`var/` or BULLRQ_HOME): its servers, pid files and logs.
May import the base of `app`, the store, the runtime, scheduling and `queues.py`; never web or the CLI (it starts
them as processes).
"""
