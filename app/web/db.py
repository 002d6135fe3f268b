"""The web app's PostgreSQL pool: opened on first use, one connection per request through `get_db()`.

Its connections autocommit: a request's single write (its audit row, say) is one round trip instead of three
(BEGIN, the statement, COMMIT), and the store's functions group the writes that belong together in
`conn.transaction()`, as they do on the scheduler's autocommit connection.

Config `DATABASE_POOL_TIMEOUT` (seconds, default `app.store.db.CONNECT_TIMEOUT`) bounds how long a request waits for a
connection, so a probe answers 503 in that time while PostgreSQL is down.
"""

from __future__ import annotations

import threading

from flask import Flask, current_app, g
from psycopg_pool import ConnectionPool

from app.store.db import CONNECT_TIMEOUT, open_pool

#: held while a pool is opened: the first requests arrive together on a server's threads, and each opened its own pool
#: (all but one then dropped, their connections left to the garbage collector and its "cannot join" tracebacks)
_opening = threading.Lock()


def get_pool() -> ConnectionPool:
    """The app's pool, opened on first use so the app starts even while PostgreSQL is down."""
    pool = current_app.extensions.get("bullrq.db")
    if pool is None:
        with _opening:
            pool = current_app.extensions.get("bullrq.db")
            if pool is None:
                timeout = current_app.config.get("DATABASE_POOL_TIMEOUT", CONNECT_TIMEOUT)
                pool = current_app.extensions["bullrq.db"] = open_pool(
                    current_app.config["DATABASE_URL"], name="web", timeout=timeout, autocommit=True
                )
    return pool


def get_db():
    """The request's connection, borrowed from the pool and returned when the request ends."""
    if "db" not in g:
        context = get_pool().connection()
        g.db = context.__enter__()
        g.db_context = context
    return g.db


def _release(exc: BaseException | None) -> None:
    context = g.pop("db_context", None)
    g.pop("db", None)
    if context is not None:
        context.__exit__(type(exc) if exc else None, exc, None)


def init_app(app: Flask) -> None:
    app.teardown_appcontext(_release)
