"""The liveness and readiness probes, against the real servers and against closed ports."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from app.local.servers import free_port
from app.scheduling.scheduler import Scheduler
from app.web import create_app
from tests.fixtures import wait_for

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
        config.update({"DATABASE_POOL_TIMEOUT": POOL_TIMEOUT, **overrides})
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


#: seconds a probe may take with a server down; before, a refusing PostgreSQL cost the pool's 5 s and a Redis that
#: accepts but never answers held the probe forever (the product's probes wait 0.5 s per server)
PROBE_BOUND = 4


@pytest.fixture
def silent_port():
    """A port that accepts connections and never answers (a hung server, a half-open network)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()[1]
    listener.close()


def test_probes_answer_quickly_whatever_is_down(make_app, get, silent_port, redis_url):
    cases = {
        "postgres refusing": make_app(DATABASE_URL=_dead_postgres(), DATABASE_POOL_TIMEOUT=5),
        "redis silent": make_app(REDIS_URL=f"redis://127.0.0.1:{silent_port}/0", DATABASE_POOL_TIMEOUT=5),
    }
    auth = {"Authorization": "Bearer " + "t" * 20}
    for case, app in cases.items():
        for path in ("/readyz", "/api/admin/workers?action=health-check"):
            started = time.monotonic()
            response = app.test_client().get(path, headers=auth)
            took = time.monotonic() - started
            assert response.status_code == 503, (case, path)
            assert took < PROBE_BOUND, (case, path, took)


def test_scheduler_liveness_is_in_readyz_health_check_and_metrics(make_app, get, redis_conn, database_url):
    from app.store.migrate import apply_migrations

    apply_migrations(database_url)
    app = make_app()
    auth = {"Authorization": "Bearer " + "t" * 20}
    client = app.test_client()
    ready = get(app, "/readyz")
    assert ready.status_code == 200  # the web app is ready without a scheduler; the details say it is missing
    assert ready.get_json()["checks"]["scheduler"]["ok"] is False
    assert "no active scheduler" in ready.get_json()["checks"]["scheduler"]["problem"]
    health = client.get("/api/admin/workers?action=health-check", headers=auth).get_json()
    assert health["status"] == "degraded" and any(p.startswith("scheduler:") for p in health["problems"])
    assert "bullrq_scheduler_up 0" in client.get("/metrics", headers=auth).get_data(as_text=True)

    scheduler = Scheduler(redis_conn, database_url, [])
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: get(app, "/readyz").get_json()["checks"]["scheduler"]["ok"], message="the scheduler to lead")
        checks = get(app, "/readyz").get_json()["checks"]["scheduler"]
        assert checks["leader"] == scheduler.identity and checks["last_tick_age"] < 30
        health = client.get("/api/admin/workers?action=health-check", headers=auth).get_json()
        assert health["checks"]["scheduler"]["ok"] and not any(p.startswith("scheduler:") for p in health["problems"])
        metrics = client.get("/metrics", headers=auth).get_data(as_text=True)
        assert "bullrq_scheduler_up 1" in metrics and "bullrq_scheduler_last_tick_age_seconds " in metrics
    finally:
        scheduler.stop()
        thread.join(10)
