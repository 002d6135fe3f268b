"""Shared fixtures: settings isolated per test, fakeredis for unit tests, the real servers of `scripts/test`.

Real servers: `scripts/test` runs pytest under `python -m app.local.servers exec --fresh`, which starts a throwaway
redis-server and PostgreSQL and sets REDIS_URL, DATABASE_URL and BULLRQ_THROWAWAY_SERVERS=1. Without that flag a
test needing a real server skips locally (so a user's own servers are never flushed) and fails in CI (CI=true).
"""

from __future__ import annotations

import os
import uuid

import fakeredis
import psycopg
import pytest
import redis
from click.testing import CliRunner

from app.local.servers import THROWAWAY_FLAG

#: the admin token of the `app` fixture
TOKEN = "test-token-0123456789abcdef"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_REAL_REDIS_URL = os.environ.get("REDIS_URL") if os.environ.get(THROWAWAY_FLAG) else None
_REAL_DATABASE_URL = os.environ.get("DATABASE_URL") if os.environ.get(THROWAWAY_FLAG) else None


def _missing(what: str):
    message = f"needs the throwaway {what} that scripts/test starts"
    if IN_CI:
        pytest.fail(f"{message}; in CI (CI=true) a missing server is a failure, not a skip")
    pytest.skip(f"{message} (skipped outside CI only; CI=true fails instead)")


#: the suite's layers (README: "How the suite is organised"), each a pytest marker given to every test of the layer
LAYERS = {
    "drills": {"test_drills.py"},  # the fault drills' quick forms: their own servers and fleets of processes
    "fuzz": {"test_web_fuzz.py", "test_fuzz_script.py"},  # schemathesis against the admin API
}
#: fixtures that mean a test runs on the real servers (and often real processes)
REAL_SERVERS = {"redis_url", "redis_conn", "database_url", "app", "client", "workers", "handlers"}


def pytest_collection_modifyitems(items):
    """Mark each test with its layer: unit (fakeredis or nothing), integration (real servers and processes),
    browser (Chromium through Playwright), drills, fuzz; `-m unit` runs one layer."""
    for item in items:
        filename = item.path.name
        layer = next((name for name, files in LAYERS.items() if filename in files), None)
        if layer is None:
            fixtures = set(getattr(item, "fixturenames", ()))
            layer = "browser" if "browser" in fixtures else "integration" if fixtures & REAL_SERVERS else "unit"
        item.add_marker(layer)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Each test gets its own run directory, no `.env`, and no admin token from the outside."""
    home = tmp_path / "home"
    monkeypatch.setenv("BULLRQ_HOME", str(home))
    monkeypatch.setenv("BULLRQ_DOTENV", str(tmp_path / "no.env"))
    for name in (
        "ADMIN_TOKEN", "BULL_BOARD_ACCESS_TOKEN", "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB",
        "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD", "TZ",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def fake_redis():
    """An in-memory Redis (with Lua) for unit tests."""
    return fakeredis.FakeRedis()


@pytest.fixture
def redis_url():
    """URL of the real throwaway redis-server, flushed before and after the test."""
    if not _REAL_REDIS_URL:
        _missing("redis-server")
    client = redis.Redis.from_url(_REAL_REDIS_URL)
    client.flushall()
    yield _REAL_REDIS_URL
    client.flushall()
    client.close()


@pytest.fixture
def redis_conn(redis_url):
    """A client of the real throwaway redis-server."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def database_url():
    """URL of a database created for this test on the real throwaway PostgreSQL, dropped afterwards."""
    if not _REAL_DATABASE_URL:
        _missing("PostgreSQL")
    name = f"test_{uuid.uuid4().hex[:12]}"
    base, _ = _REAL_DATABASE_URL.rsplit("/", 1)
    with psycopg.connect(_REAL_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{base}/{name}"
    with psycopg.connect(_REAL_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def app(redis_url, database_url):
    from app.web import create_app

    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN})
    yield app
    pool = app.extensions.get("bullrq.db")
    if pool is not None:
        pool.close()  # before the test's database is dropped


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner():
    return CliRunner()
