"""The store's pool (app.store.db): a connection is checked with a round trip only when its socket says the server
may have ended it, and one the server ended is never lent."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from app.store.db import open_pool

pytestmark = pytest.mark.postgres


@pytest.fixture
def pool(database_url):
    pool = open_pool(database_url, min_size=1, max_size=1, name="test", autocommit=True)
    pool.wait()
    yield pool
    pool.close()


def _backend(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        return conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]


def test_a_connection_the_server_ended_is_replaced_before_it_is_lent(pool, database_url):
    first = _backend(pool)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first,))
    time.sleep(0.2)  # the server's notice and the close reach the pool's socket
    assert _backend(pool) != first  # lent a new connection, and the request did not fail


def test_a_quiet_connection_is_lent_without_a_round_trip(pool, monkeypatch):
    first = _backend(pool)
    checks = []
    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(lambda conn: checks.append(conn)))
    assert _backend(pool) == first
    assert checks == []


def test_an_autocommit_pool_commits_each_statement_as_it_runs(pool, database_url):
    with pool.connection() as conn, psycopg.connect(database_url, autocommit=True) as other:
        conn.execute("CREATE TABLE IF NOT EXISTS pool_probe (x int)")
        conn.execute("INSERT INTO pool_probe VALUES (1)")
        assert other.execute("SELECT count(*) FROM pool_probe").fetchone()[0] == 1  # seen before the loan ends
        conn.execute("DROP TABLE pool_probe")
