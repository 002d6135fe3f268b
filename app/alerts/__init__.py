"""Alerts: people are told when jobs fail, queues back up, or workers, the scheduler or history writes vanish.

Owns the alert conditions (`conditions`), their settings (`settings`: defaults per queue in queues.py, overridden
by environment), the state in PostgreSQL's `alerts` table (`store`), the messages (`messages`), their delivery
through the `notifications` queue (`delivery`) and the one evaluator at a time (`evaluator`, a Redis lease).

May import app's top-level modules (config, db, enqueue, stats, ...), the runtime modules, the store and
scheduling, queues.py, and workers._report_delivery's pure recipient parsing; never app.web or app.cli (they
import this package to show and test alerts).
"""
