"""Security checks over the whole app: every protected route refuses a missing or wrong token, and nothing but
JSON is ever stored in Redis (no pickle, whatever ran)."""

from __future__ import annotations

import json
import re
import zlib
from urllib.parse import urlsplit

import pytest

from app.runtime.enqueue import enqueue
from app.runtime.jobs import describe_job, fetch_job
from app.runtime.worker import build_worker
from app.store.migrate import apply_migrations
from tests.conftest import TOKEN
from tests.waits import wait_status

#: routes anyone may call: probes, metrics for the scraper on the private network, signing in and out, the icon
PUBLIC = {"/", "/healthz", "/readyz", "/metrics", "/login", "/logout", "/static/<path:filename>", "/favicon.ico"}
WRONG = ["", "Bearer wrong-token-0000000000", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x", "Bearer "]
#: pickle's protocol 2-5 header followed by a frame or memo opcode: how every pickle of a dict or object starts
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture

PICKLE = re.compile(rb"\x80[\x02-\x05](\x95|\x7d|\x63|\x8c|\x5d)")


def _example(rule) -> str:
    """A concrete path for a URL rule (`<job_id>` becomes `x`, `<int:n>` 0)."""
    return re.sub(r"<(?:([^:<>]+):)?[^<>]+>", lambda m: "0" if m.group(1) == "int" else "x", rule.rule)


def _protected(app) -> list[tuple[str, str]]:
    found = []
    for rule in app.url_map.iter_rules():
        if rule.rule in PUBLIC or rule.endpoint.endswith(".static") or rule.endpoint == "static":
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((method, _example(rule)))
    return found


def test_every_protected_route_refuses_a_missing_or_wrong_token(app, client, database_url):
    apply_migrations(database_url)  # refused calls are audited too
    routes = _protected(app)
    assert len(routes) > 30 and any(path.startswith("/api/admin/queues") for _, path in routes)
    for method, rule_path in routes:
        for header in WRONG:
            headers = {"Authorization": header} if header else {}
            path = rule_path
            response = client.open(path, method=method, headers=headers, json={"action": "pause"})
            if response.status_code == 308:  # Werkzeug's trailing-slash redirect, before any view: follow it
                path = urlsplit(response.headers["Location"]).path
                response = client.open(path, method=method, headers=headers, json={"action": "pause"})
            if response.status_code == 302:  # pages and the dashboard send people without a session to sign in
                assert not header and path.startswith(("/admin", "/api/admin/queues")), (method, path, header)
                assert response.headers["Location"].startswith("/login"), (method, path)
            else:
                assert response.status_code == 401, (method, path, header, response.status_code)
            assert TOKEN.encode() not in response.data


def _stored_values(connection) -> list[tuple[str, bytes]]:
    values = []
    for key in connection.scan_iter(count=500):
        kind = connection.type(key).decode()
        name = key.decode()
        if kind == "string":
            values.append((name, connection.get(key)))
        elif kind == "hash":
            values += [(f"{name}.{field.decode()}", value) for field, value in connection.hgetall(key).items()]
        elif kind == "list":
            values += [(name, value) for value in connection.lrange(key, 0, -1)]
        elif kind == "stream":
            values += [(name, v) for _, entry in connection.xrange(key) for v in entry.values()]
    return values


def test_nothing_but_json_reaches_redis(redis_conn, database_url, monkeypatch):
    apply_migrations(database_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    enqueue(redis_conn, "system.ping", {"echo": {"nested": [1, "two", None]}}, {"queue": "harvest"})
    enqueue(redis_conn, "system.ping", {"sleep": 2}, {"queue": "harvest", "timeout": 1, "attempts": 1})
    enqueue(redis_conn, "system.ping", {"echo": "later"}, {"queue": "harvest", "delay": 600})
    build_worker(["harvest"], redis_conn, "pickle-check", database_url).work(burst=True)

    values = _stored_values(redis_conn)
    assert len(values) > 20
    for name, value in values:
        assert not PICKLE.search(value), f"{name} holds a pickle"
        if name.endswith(".data"):  # job data: JSON, zlib-compressed from COMPRESS_FROM bytes as RQ writes it
            assert (value if value.startswith(b"[") else zlib.decompress(value)).startswith(b"["), name


@pytest.mark.parametrize("stored", [b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.", b"not json", b""])
def test_a_worker_refuses_data_it_cannot_read_as_json(redis_conn, stored):
    """Job data planted in Redis that is not JSON (a pickle, garbage, nothing) fails that job with a clear error;
    the worker goes on with the next."""
    planted = enqueue(redis_conn, "system.ping", {"echo": 1}, {"queue": "harvest", "attempts": 3})
    after = enqueue(redis_conn, "system.ping", {"echo": "next"}, {"queue": "harvest"})
    redis_conn.hset(f"rq:job:{planted.id}", "data", zlib.compress(stored) if stored else b"")
    build_worker(["harvest"], redis_conn, "planted").work(burst=True)
    failed = describe_job(fetch_job(planted.id, redis_conn))
    assert failed["status"] == "failed" and failed["attempt"] == 1, failed  # no retry: retrying cannot fix it
    assert "stored job data is not a JSON job" in failed["error"], failed["error"]
    assert describe_job(fetch_job(after.id, redis_conn))["status"] == "completed"


@pytest.mark.parametrize("path", ["os.system", "subprocess.getoutput", "builtins.exec"])
def test_a_planted_function_path_never_runs_in_a_worker_process(redis_conn, workers, tmp_path, path):
    """A job rewritten in the real Redis to name a function path with arguments (RQ would import and call it) fails
    at once naming the unknown task type; the command never runs and the worker goes on."""
    marker = tmp_path / "pwned"
    command = f"import pathlib; pathlib.Path({str(marker)!r}).touch()" if path == "builtins.exec" else f"touch {marker}"
    planted = enqueue(redis_conn, "system.ping", {"echo": 1}, {"queue": "harvest", "attempts": 3})
    redis_conn.hset(f"rq:job:{planted.id}", mapping={
        "data": zlib.compress(json.dumps([path, None, [command], {}]).encode()), "description": f"{path}(...)",
    })  # fmt: skip
    after = enqueue(redis_conn, "system.ping", {"echo": "next"}, {"queue": "harvest"})
    workers.start("harvest", name="h-1")

    wait_status(redis_conn, after.id, "finished", timeout=60)
    failed = describe_job(fetch_job(planted.id, redis_conn))
    assert failed["status"] == "failed" and failed["attempt"] == 1, failed  # refused for good, never retried
    assert f"unknown task type '{path}'" in failed["error"], failed["error"]
    assert not marker.exists()
    assert workers.alive("h-1")
