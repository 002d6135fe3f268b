"""PostgreSQL through psycopg 3: a connection pool and one-off connections, built from a URL."""

from __future__ import annotations

import select

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


def check_quiet(conn: psycopg.Connection) -> None:
    """The pool's check of a connection before lending it: a round trip only when its socket has something to read.

    An idle connection receives nothing unless the server ended it (PostgreSQL sends the reason, then closes: a
    restart, `pg_terminate_backend`), so a quiet socket is lent as is: psycopg's own check makes a round trip on every
    loan, one of the four a web request made to write its audit row.

    Raises:
        psycopg.OperationalError: the connection is closed or broken (the pool then discards it and lends another).
    """
    if not conn.closed:
        poller = select.poll()  # not select(): a web worker may hold descriptors past 1,024
        poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
        if not poller.poll(0):
            return
    ConnectionPool.check_connection(conn)


def open_pool(
    url: str,
    min_size: int = 1,
    max_size: int = 10,
    name: str = "bullrq",
    timeout: float = CONNECT_TIMEOUT,
    autocommit: bool = False,
) -> ConnectionPool:
    """A pool of connections (rows as dicts); it connects in the background, so opening never fails.

    Callers borrow with `with pool.connection() as conn:`; a request waits at most `timeout` seconds. With
    `autocommit`, each statement commits on its own and `conn.transaction()` groups those that must commit together.
    """
    return ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        timeout=timeout,
        kwargs={"row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT, "autocommit": autocommit},
        open=True,
        check=check_quiet,
    )
