"""PostgreSQL through psycopg 3: a connection pool and one-off connections, built from a URL."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

#: seconds to wait for PostgreSQL to accept a connection
CONNECT_TIMEOUT = 5


def connect(url: str, **kwargs) -> psycopg.Connection:
    """A single connection (rows as dicts), for scripts, migrations and the CLI."""
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
    return psycopg.connect(url, row_factory=dict_row, **kwargs)


class KeptConnection:
    """One connection a long-running loop keeps (autocommit, rows as dicts): opened on first use and again after
    `drop()`, which the loop calls when PostgreSQL failed it."""

    def __init__(self, url: str):
        self.url = url
        self._conn: psycopg.Connection | None = None

    def get(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, autocommit=True)
        return self._conn

    def drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def open_pool(
    url: str, min_size: int = 1, max_size: int = 10, name: str = "bullrq", timeout: float = CONNECT_TIMEOUT
) -> ConnectionPool:
    """A pool of connections (rows as dicts); it connects in the background, so opening never fails.

    Callers borrow with `with pool.connection() as conn:`; a request waits at most `timeout` seconds.
    """
    return ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        timeout=timeout,
        kwargs={"row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT},
        open=True,
        check=ConnectionPool.check_connection,
    )
