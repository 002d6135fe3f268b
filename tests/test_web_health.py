"""The liveness and readiness probes, against the real servers and against closed ports."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from app.local.servers import free_port
from app.web import create_app

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

#: seconds a request waits for a PostgreSQL connection in these tests (the product waits longer)
POOL_TIMEOUT = 0.5
DEAD_PASSWORD = "hunter2-dead"


@pytest.fixture
def make_app(redis_url, database_url):
    """Build apps on the real servers, any of which a test may replace; their pools are closed afterwards."""
    apps = []

    def make(**overrides):
        config = {"TESTING": True, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "ADMIN_TOKEN": "t" * 20}
        config.update(DATABASE_POOL_TIMEOUT=POOL_TIMEOUT, **overrides)
        apps.append(create_app(config))
        return apps[-1]

    yield make
    for app in apps:
        pool = app.extensions.get("bullrq.db")
        if pool is not None:
            pool.close()


def _dead_redis() -> str:
    return f"redis://:{DEAD_PASSWORD}@127.0.0.1:{free_port()}/0"


def _dead_postgres() -> str:
    return f"postgresql://bullrq:{DEAD_PASSWORD}@127.0.0.1:{free_port()}/bullrq"


@pytest.fixture
def get(database_url):
    """GET a path of an app; no response body may carry a password, real or dead."""
    secrets = [DEAD_PASSWORD, urlsplit(database_url).password]
    assert all(secrets)

    def get(app, path: str):
        response = app.test_client().get(path)
        for secret in secrets:
            assert secret not in response.get_data(as_text=True)
        return response

    return get


def test_healthz_is_ok(make_app, get):
    response = get(make_app(), "/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_on_the_real_servers(make_app, get):
    response = get(make_app(), "/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["redis"]["ok"] is True and body["checks"]["redis"]["latency_ms"] >= 0
    assert body["checks"]["postgres"] == {"ok": True}


@pytest.mark.parametrize(
    ("dead", "failed"),
    [({"redis"}, ["redis"]), ({"postgres"}, ["postgres"]), ({"redis", "postgres"}, ["redis", "postgres"])],
)
def test_readyz_names_what_is_unreachable(make_app, get, dead, failed):
    overrides = {}
    if "redis" in dead:
        overrides["REDIS_URL"] = _dead_redis()
    if "postgres" in dead:
        overrides["DATABASE_URL"] = _dead_postgres()
    app = make_app(**overrides)

    response = get(app, "/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["error"] == {
        "code": "not_ready",
        "message": f"{' and '.join(failed)} unreachable",
        "details": {"failed": failed},
    }
    for name in ("redis", "postgres"):
        assert body["checks"][name]["ok"] is (name not in dead)
        if name in dead:
            assert body["checks"][name]["error"]
    assert get(app, "/healthz").status_code == 200  # liveness does not depend on the servers
