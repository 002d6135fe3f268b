"""The runtime: a job's path on Redis under Bull's semantics.

Owns enqueueing, the worker loop and its maintenance thread, leases and recovery, the Lua scripts (`lua/`), the
job model on RQ's data, controls (pause, cancel, retry, clean), queue stats and job lists, flows (dependencies
and batches: `flows`) and groups within a queue (`groups`), and what handlers see of their run (progress,
per-process resources).
May import the base of `app`, the store and `queues.py`; never scheduling, local, web or the CLI.
"""
