"""Scheduling: cron expressions, the entries of `schedules.yaml`, their state in PostgreSQL and the scheduler.

Owns when recurring jobs fire and that each slot fires once, whichever scheduler process is active.
May import the base of `app`, the store, the runtime and `queues.py`; never local, web or the CLI.
"""
