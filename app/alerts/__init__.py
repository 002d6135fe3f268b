"""Alerts: people are told when jobs fail, queues back up, or workers, the scheduler or history writes vanish.

Owns the alert conditions (`conditions`), their settings (`settings`: defaults per queue in queues.py, overridden
by environment), the state in PostgreSQL's `alerts` table (`store`), the messages (`messages`), their delivery
through the `notifications` queue (`delivery`) and the one evaluator at a time (`evaluator`, a Redis lease).

May import the base of `app` (recipients among it), the store, the runtime, scheduling and queues.py; never local,
web or the CLI (the web and the CLI import this package to show and test alerts).
"""
