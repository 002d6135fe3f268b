"""The product's pages: Flask's client for routes, status codes and escaping; a real headless Chromium (Debian's,
driven by Playwright) against the real servers for what a person does with them."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import threading
import time

import pytest
from werkzeug.serving import make_server

from app.config import PROJECT_ROOT
from app.errors import PermanentFailure
from app.local.servers import free_port
from app.runtime.control import pause
from app.runtime.enqueue import enqueue
from app.runtime.flows import create_batch
from app.runtime.jobs import fetch_job
from app.runtime.worker import build_worker
from app.scheduling.schedule_store import sync_declared
from app.scheduling.schedules import load_schedules
from app.store.db import connect
from app.store.history import HistoryWriter, write_rows
from app.store.migrate import apply_migrations
from app.store.rows import run_row
from app.tasks import Task, queue_keys, registry
from queues import queue_names
from tests.conftest import IN_CI, TOKEN
from tests.fixtures import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip

#: screenshots kept for people to look at (CI keeps the folder)
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
ARTIFACTS.mkdir(exist_ok=True)
#: the Origin a browser sends with a form posted from our own pages (Flask's client serves http://localhost)
HERE = {"Origin": "http://localhost"}
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
SCHEDULES = 'schedules:\n  - id: nightly\n    task: system.ping\n    queue: harvest\n    cron: "0 3 * * *"\n'
PAGES = ("/admin/", "/admin/schedules", "/admin/history", "/admin/jobs")


def _refuse(message: str) -> None:
    raise PermanentFailure(message)


registry.register(Task("pages.refuse", _refuse, None))  # a job that fails at once, with the error text we choose


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def browser():
    if CHROMIUM is None:
        message = "needs Debian's chromium (.ci/run installs it as root)"
        if IN_CI:
            pytest.fail(f"{message}; in CI (CI=true) a missing browser is a failure, not a skip")
        pytest.skip(f"{message} (skipped outside CI only)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def site(app, database_url, tmp_path):
    """The app served over real HTTP on a free loopback port."""
    apply_migrations(database_url)
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(SCHEDULES)
    app.config["SETTINGS"] = dataclasses.replace(app.config["SETTINGS"], schedules_file=schedules)
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


@pytest.fixture
def db(database_url):
    apply_migrations(database_url)
    with connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def person(client, db):
    """Flask's client, signed in with the session cookie."""
    assert client.post("/login", data={"token": TOKEN}).status_code == 302
    return client


# ------------------------------------------------------------------------------------------------------- helpers


def _drain(redis_conn, database_url) -> None:
    writer = HistoryWriter(redis_conn, database_url, "pages-test")
    while writer.drain_once(block=0.05):
        pass
    writer.stop()


def _work(redis_conn, database_url, queue: str) -> None:
    """Run the queue's jobs to the end, then write their runs to PostgreSQL."""
    build_worker([queue], redis_conn, "pages-test", database_url).work(burst=True)
    _drain(redis_conn, database_url)


def _failing(redis_conn, message: str, queue: str = "sync"):
    return enqueue(redis_conn, "pages.refuse", {"message": message}, {"queue": queue, "attempts": 1})


def _seed_history(db) -> None:
    """harvest: two completed runs this hour, one failed three hours ago; sync: one completed three days ago."""
    now = time.time()
    rows = [("h1", "harvest", "completed", now - 5), ("h2", "harvest", "completed", now - 4),
            ("h3", "harvest", "failed", now - 3 * 3600), ("s1", "sync", "completed", now - 3 * 86400)]  # fmt: skip
    write_rows(db, [run_row(job_id=job, attempt=1, queue=queue, task="system.ping", status=status, started_at=at,
                            ended_at=at + 0.02) for job, queue, status, at in rows])  # fmt: skip


def _bars(html: str) -> dict[str, int]:
    """Bars drawn per chart of the history page: {chart key: count}."""
    figures = re.findall(r'<figure class="chart" data-queue="([^"]+)".*?</figure>', html, re.S)
    bodies = re.findall(r'<figure class="chart" data-queue="[^"]+".*?</figure>', html, re.S)
    return {key: body.count('<g class="bar"') for key, body in zip(figures, bodies, strict=True)}


def _post(client, path: str, data: dict | None = None, **kwargs):
    return client.post(path, data=data or {}, headers=HERE, **kwargs)


def _last_audit(db) -> dict:
    return db.execute("SELECT actor, method, path, request, status, result FROM audit_log ORDER BY id DESC").fetchone()


# ------------------------------------------------------------------------------------- routes (Flask's client)


def test_pages_send_people_to_sign_in_and_refuse_changes_without_a_session(client, db, redis_conn):
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 302 and "/login?next=" in response.headers["Location"], path
    root = client.get("/", follow_redirects=True)  # the address scripts/up prints leads to the sign-in, then pages
    assert root.status_code == 200 and root.request.path == "/login" and root.request.args["next"] == "/admin/"
    refused = _post(client, "/admin/queues/sync/pause")
    assert refused.status_code == 401 and refused.mimetype == "text/html" and b"sign in first" in refused.data
    assert not redis_conn.exists(queue_keys("sync").paused)
    assert _last_audit(db)["status"] == 401


def test_every_page_renders_with_the_navigation(person):
    for path in PAGES:
        response = person.get(path)
        html = response.get_data(as_text=True)
        assert response.status_code == 200 and response.mimetype == "text/html", path
        assert all(f'href="{page}"' in html for page in PAGES) and html.count('aria-current="page"') >= 1
        assert "https://" not in html and "http://" not in html  # every asset is ours, served locally
    overview = person.get("/admin/").get_data(as_text=True)
    assert re.findall(r'<tr data-queue="([^"]+)"', overview) == queue_names() and len(queue_names()) == 7
    assert "no active scheduler" in overview  # none runs in this test: said on the overview
    assert person.get("/", follow_redirects=True).request.path == "/admin/"
    assert person.get("/admin/static/admin.css").status_code == 200
    assert person.get("/admin/static/admin.js").status_code == 200


def test_a_queue_action_must_come_from_this_site_and_is_audited(person, db, redis_conn):
    for headers in ({}, {"Origin": "https://evil.example"}, {"Referer": "https://evil.example/x"}):
        refused = person.post("/admin/queues/sync/pause", headers=headers)
        assert refused.status_code == 403 and b"must come from this site" in refused.data
    assert not redis_conn.exists(queue_keys("sync").paused)
    assert _last_audit(db)["status"] == 403

    done = _post(person, "/admin/queues/sync/pause")
    assert done.status_code == 303 and done.headers["Location"] == "/admin/"
    assert redis_conn.exists(queue_keys("sync").paused)
    row = _last_audit(db)
    assert (row["method"], row["path"], row["status"]) == ("POST", "/admin/queues/sync/pause", 200)
    assert row["result"] == {"action": "pause", "queues": ["sync"]} and row["actor"] == "session"
    page = person.get("/admin/").get_data(as_text=True)
    assert "sync: paused" in page and re.search(r'data-queue="sync".*?class="paused"', page, re.S)
    assert "sync: paused" not in person.get("/admin/").get_data(as_text=True)  # a flash shows once

    _post(person, "/admin/queues/sync/resume")
    assert not redis_conn.exists(queue_keys("sync").paused)


def test_unknown_queues_schedules_and_actions_are_404_pages(person):
    for path in ("/admin/queues/nope/pause", "/admin/queues/sync/explode", "/admin/schedules/nope/run",
                 "/admin/queues/%3Cb%3E/pause"):  # fmt: skip
        response = _post(person, path)
        assert response.status_code == 404 and response.mimetype == "text/html", path
        assert b"<b>" not in response.data
    assert b"unknown queue &#39;nope&#39;" in _post(person, "/admin/queues/nope/pause").data
    assert person.get("/admin/queues/sync/pause").status_code == 405


def test_retry_failed_and_clean_change_the_counts(person, db, redis_conn, database_url):
    jobs = [_failing(redis_conn, "provider said no") for _ in range(2)]
    _work(redis_conn, database_url, "sync")
    assert redis_conn.zcard(queue_keys("sync").failed) == 2

    _post(person, "/admin/queues/sync/retry-failed")
    assert "sync: 2 failed job(s) requeued" in person.get("/admin/").get_data(as_text=True)
    assert redis_conn.zcard(queue_keys("sync").failed) == 0 and redis_conn.llen(queue_keys("sync").queue) == 2
    assert _last_audit(db)["result"] == {"action": "retry-failed", "requeued": {"sync": 2}}

    _work(redis_conn, database_url, "sync")
    for state, age in (("bogus", "0"), ("failed", "-1"), ("failed", "soon")):
        _post(person, "/admin/queues/sync/clean", {"state": state, "age": age})
        assert "clean needs a state" in person.get("/admin/").get_data(as_text=True)
        assert _last_audit(db)["status"] == 400
    _post(person, "/admin/queues/sync/clean", {"state": "failed", "age": "3600"})
    assert redis_conn.zcard(queue_keys("sync").failed) == 2  # younger than an hour: kept
    _post(person, "/admin/queues/sync/clean", {"state": "failed", "age": "0"})
    assert "sync: 2 failed job(s) older than 0 s removed" in person.get("/admin/").get_data(as_text=True)
    assert redis_conn.zcard(queue_keys("sync").failed) == 0
    assert not any(redis_conn.exists(f"rq:job:{job.id}") for job in jobs)


def test_schedule_actions_and_a_second_run_while_one_is_going(person, db, redis_conn, tmp_path):
    path = tmp_path / "schedules.yaml"
    path.write_text(SCHEDULES)
    sync_declared(db, load_schedules(path))
    assert 'data-schedule="nightly"' in person.get("/admin/schedules").get_data(as_text=True)

    assert _post(person, "/admin/schedules/nightly/run").headers["Location"] == "/admin/schedules"
    assert _last_audit(db)["status"] == 201 and redis_conn.llen(queue_keys("harvest").queue) == 1
    _post(person, "/admin/schedules/nightly/run")
    page = person.get("/admin/schedules").get_data(as_text=True)
    assert "nightly: a run is going already" in page and 'role="alert"' in page
    assert _last_audit(db)["status"] == 409 and redis_conn.llen(queue_keys("harvest").queue) == 1

    _post(person, "/admin/schedules/nightly/reset")
    assert "reset by an operator" in person.get("/admin/schedules").get_data(as_text=True)
    _post(person, "/admin/schedules/nightly/disable")
    assert db.execute("SELECT enabled_override FROM job_schedules").fetchone() == {"enabled_override": False}
    _post(person, "/admin/schedules/nightly/enable")
    assert db.execute("SELECT enabled_override FROM job_schedules").fetchone() == {"enabled_override": True}


def test_history_draws_a_bar_per_hour_with_runs_for_24_hours_and_7_days(person, db):
    _seed_history(db)
    day = person.get("/admin/history").get_data(as_text=True)
    assert _bars(day) == {"all": 2, **{name: 0 for name in queue_names()}, "harvest": 2}
    harvest = re.search(r'<figure class="chart" data-queue="harvest".*?</figure>', day, re.S).group(0)
    assert harvest.count('<rect class="failed"') == 1 and harvest.count('<rect class="completed"') == 1
    assert re.search(r"3 run\(s\), failure rate 33.3 %, p95 [\d.]+ ms", harvest)
    week = person.get("/admin/history?hours=168").get_data(as_text=True)
    assert _bars(week) == {"all": 3, **{name: 0 for name in queue_names()}, "harvest": 2, "sync": 1}
    for hours in ("5", "x", ""):
        assert person.get(f"/admin/history?hours={hours}").status_code == 400


def test_runs_search_pages_fifty_at_a_time_and_checks_its_parameters(person, db):
    now = time.time()
    write_rows(db, [run_row(job_id=f"r{n}", attempt=1, queue="sync", task="system.ping", status="completed",
                            started_at=now - n, ended_at=now - n + 0.01) for n in range(55)])  # fmt: skip
    first = person.get("/admin/jobs?name=system.ping").get_data(as_text=True)
    assert first.count("<tr data-job=") == 50 and 'rel="next"' in first and 'rel="prev"' not in first
    second = person.get("/admin/jobs?name=system.ping&offset=50").get_data(as_text=True)
    assert second.count("<tr data-job=") == 5 and 'rel="prev"' in second and 'rel="next"' not in second
    assert person.get("/admin/jobs?status=bogus").status_code == 400
    assert person.get("/admin/jobs?offset=-1").status_code == 400


def test_markup_in_job_ids_data_and_errors_stays_text(person, db, redis_conn, database_url):
    job = _failing(redis_conn, HOSTILE)
    _work(redis_conn, database_url, "sync")
    for path in (f"/admin/jobs?id={job.id}", "/admin/jobs?error=pwned", "/admin/jobs?id=%3Cscript%3Ex"):
        html = person.get(path).get_data(as_text=True)
        assert "<script>" not in html.split("</head>")[1] and "<img src=x" not in html, path
    shown = person.get(f"/admin/jobs?id={job.id}").get_data(as_text=True)
    assert "&lt;img src=x onerror=" in shown
    missing = person.get("/admin/jobs?id=%3Cscript%3Ex")
    assert missing.status_code == 404 and "No job &lt;script&gt;x" in missing.get_data(as_text=True)


def _flow(redis_conn) -> tuple[str, str, object]:
    """In harvest: a waiting parent, a child deferred until it completes, and a batch of two jobs whose
    onComplete callback is held (deferred) until both have ended. Returns (parent, child, batch)."""
    parent = enqueue(redis_conn, "system.ping", {"echo": "parent"}, {"queue": "harvest"}).id
    child = enqueue(redis_conn, "system.ping", {"echo": "child"}, {"queue": "harvest", "dependsOn": [parent]}).id
    batch = create_batch(redis_conn, [("system.ping", {"echo": n}, {"queue": "harvest"}) for n in range(2)],
                         on_complete=("system.ping", {"echo": "done"}, {"queue": "harvest"}))  # fmt: skip
    return parent, child, batch


def test_deferred_jobs_their_parents_and_batches_on_the_pages(person, db, redis_conn, database_url):
    parent, child, batch = _flow(redis_conn)
    held = batch.callbacks["onComplete"]
    overview = person.get("/admin/").get_data(as_text=True)
    harvest = re.search(r'<tr data-queue="harvest".*?</tr>', overview, re.S).group(0)
    assert re.search(r'<td class="n deferred"><a href="/admin/jobs\?state=deferred&amp;queue=harvest#by-state">2</a>',
                     harvest), harvest
    assert re.search(r'<td class="n waiting">3</td>', harvest)
    assert '<td class="n deferred">0</td>' in re.search(r'<tr data-queue="sync".*?</tr>', overview, re.S).group(0)

    listed = person.get("/admin/jobs?state=deferred&queue=harvest").get_data(as_text=True)
    assert re.findall(r'<tr data-job="([^"]+)"', listed.split('id="state-jobs"')[1].split("</table>")[0]) == [
        child, held]  # oldest first
    assert "2 deferred job(s) in harvest" in listed
    everywhere = person.get("/admin/jobs?state=deferred").get_data(as_text=True)
    assert "2 deferred job(s);" in everywhere and "<option selected>deferred</option>" in everywhere
    assert "No deferred job in sync" in person.get("/admin/jobs?state=deferred&queue=sync").get_data(as_text=True)
    waiting = person.get("/admin/jobs?state=waiting&queue=harvest").get_data(as_text=True)
    assert waiting.count("<tr data-job=") == 3 and f'data-job="{parent}"' in waiting

    shown = person.get(f"/admin/jobs?id={child}").get_data(as_text=True)
    parents = shown.split('id="job-parents"')[1].split("</ul>")[0]
    assert f'href="/admin/jobs?id={parent}"' in parents and 'class="status-waiting">waiting' in parents
    assert 'class="status-deferred">deferred' in shown
    assert f'href="/admin/jobs?id={child}"' in person.get(f"/admin/jobs?id={parent}").get_data(as_text=True).split(
        'id="job-dependents"')[1]  # fmt: skip
    member = person.get(f"/admin/jobs?id={batch.job_ids[0]}").get_data(as_text=True)
    assert f'<dd id="job-batch"><a href="/admin/batches/{batch.id}">' in member

    page = person.get(f"/admin/batches/{batch.id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'data-state="active"' in html
    assert re.search(r'<td class="n total">2</td>\s*<td class="n pending">2</td>', html)
    callback = html.split('data-callback="onComplete"')[1].split("</tr>")[0]
    assert f'href="/admin/jobs?id={held}"' in callback and ">deferred<" in callback and "not yet" in callback
    found = person.get(f"/admin/batches?id={batch.id}")
    assert found.status_code == 303 and found.headers["Location"] == f"/admin/batches/{batch.id}"

    _work(redis_conn, database_url, "harvest")
    html = person.get(f"/admin/batches/{batch.id}").get_data(as_text=True)
    assert 'data-state="completed"' in html and re.search(r'<td class="n completed">2</td>', html)
    callback = html.split('data-callback="onComplete"')[1].split("</tr>")[0]
    assert ">completed<" in callback and ">yes<" in callback
    assert '<td class="n deferred">0</td>' in re.search(r'<tr data-queue="harvest".*?</tr>',
                                                          person.get("/admin/").get_data(as_text=True), re.S).group(0)
    assert "No deferred job in harvest" in person.get("/admin/jobs?state=deferred&queue=harvest").get_data(
        as_text=True)  # fmt: skip


def test_bad_job_and_batch_inputs_are_clear_4xx_pages(person, db, redis_conn):
    cases = {
        "/admin/jobs?state=bogus": 400, "/admin/jobs?state=": 200, "/admin/jobs?queue=harvest": 400,
        "/admin/jobs?state=deferred&queue=nope": 400, "/admin/jobs?state=deferred&state_offset=x": 400,
        "/admin/jobs?state=deferred&state_offset=-1": 400, "/admin/jobs?state=deferred&state_offset=99999999": 200,
        "/admin/jobs?id=%00": 400, "/admin/jobs?id=" + "x" * 201: 400, "/admin/jobs?name=a%00b": 400,
        "/admin/jobs?error=%00": 400, "/admin/jobs?state=deferred%00": 400, "/admin/jobs?offset=" + "9" * 30: 400,
        "/admin/jobs?state=deferred&state_offset=" + "9" * 30: 400,
        "/admin/jobs?state=deferred&state_offset=%C2%B2": 400,
        "/admin/batches/nope": 404, "/admin/batches/%00": 400, "/admin/batches/" + "b" * 201: 400,
        "/admin/batches/a%0Ab": 400, "/admin/batches?id=": 400, "/admin/batches": 400,
        "/admin/batches/%C3%A9t%C3%A9": 404,
        "/admin/batches/%3Cscript%3Ex": 404, "/admin/batches/a/b": 404, "/admin/batches/%FF%FE": 404,
    }  # fmt: skip
    for path, expected in cases.items():
        response = person.get(path)
        assert (response.status_code, response.mimetype) == (expected, "text/html"), (path, response.status_code)
        if expected != 200:
            assert b'id="error"' in response.data and b"An unexpected error" not in response.data, path
    missing = person.get("/admin/batches/%3Cscript%3Ex").get_data(as_text=True)
    assert "no batch &#39;&lt;script&gt;x&#39;" in missing and "<script>x" not in missing
    assert "state must be one of waiting, delayed, deferred" in person.get("/admin/jobs?state=bogus").get_data(
        as_text=True)  # fmt: skip


def test_with_postgresql_down_the_overview_still_shows_the_queues(app, person):
    from app.local.servers import free_port

    pool = app.extensions.pop("bullrq.db", None)
    if pool is not None:
        pool.close()
    app.config.update(DATABASE_URL=f"postgresql://127.0.0.1:{free_port()}/nothing", DATABASE_POOL_TIMEOUT=0.5)
    overview = person.get("/admin/")
    html = overview.get_data(as_text=True)
    assert overview.status_code == 200 and "PostgreSQL is unreachable" in html
    assert re.findall(r'<tr data-queue="([^"]+)"', html) == queue_names()
    down = person.get("/admin/schedules")
    assert down.status_code == 503 and down.mimetype == "text/html" and b"PostgreSQL is unreachable" in down.data


# ------------------------------------------------------------------------------- in a real headless Chromium


def _sign_in(page, site: str) -> None:
    page.goto(f"{site}/admin/")
    assert "/login" in page.url
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("#queues")


def _flash(page) -> str:
    return page.locator("#messages").inner_text()


@pytest.mark.slow
def test_sign_in_see_seven_queues_pause_and_resume_one(browser, site, redis_conn):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{site}/admin/")
    page.fill("#token", "not-the-right-token-000")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text() == "That token is not valid."
    _sign_in(page, site)
    assert page.locator("#queues tbody tr").count() == len(queue_names()) == 7

    page.click("#queues tr[data-queue=sync] button.toggle")
    page.wait_for_selector("#queues tr[data-queue=sync] .paused")
    assert redis_conn.exists(queue_keys("sync").paused) and "sync: paused" in _flash(page)
    assert page.locator("#queues .paused").count() == 1
    page.screenshot(path=str(ARTIFACTS / "pages-overview.png"), full_page=True)
    page.click("#queues tr[data-queue=sync] button.toggle")
    page.wait_for_selector("#queues tr[data-queue=sync] .running")
    assert not redis_conn.exists(queue_keys("sync").paused) and "sync: resumed" in _flash(page)


@pytest.mark.slow
def test_run_a_schedule_now_see_its_run_then_reset_and_disable_it(browser, site, client, redis_conn, database_url):
    client.post("/api/admin/workers", headers={"Authorization": f"Bearer {TOKEN}"},
                json={"action": "setup-recurring"})  # fmt: skip
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    _sign_in(page, site)
    page.click("nav a:text('Schedules')")
    row = "#schedules tr[data-schedule=nightly]"
    page.click(f"{row} button:text('Run now')")
    page.wait_for_selector("#messages:has-text('nightly: started job')")
    assert redis_conn.llen(queue_keys("harvest").queue) == 1
    assert "running" in page.locator(f"{row} .last-status").inner_text()

    _work(redis_conn, database_url, "harvest")
    page.click("nav a:text('Jobs')")
    page.fill("#runs-name", "nightly")
    page.click("#runs-search button")
    page.wait_for_selector("#runs tbody[data-count='1']")
    assert "completed" in page.locator("#runs tbody").inner_text()
    page.screenshot(path=str(ARTIFACTS / "pages-jobs.png"), full_page=True)

    page.click("nav a:text('Schedules')")
    page.click(f"{row} button:text('Reset')")
    page.wait_for_selector("#messages:has-text('nightly: reset')")
    assert "reset by an operator" in page.locator(f"{row} .last-status").inner_text()
    page.click(f"{row} button:text('Disable')")
    page.wait_for_selector(f"{row} button:text('Enable')")
    assert "disabled" in page.locator(row).inner_text()
    page.screenshot(path=str(ARTIFACTS / "pages-schedules.png"), full_page=True)


@pytest.mark.slow
def test_the_history_page_draws_its_charts(browser, site, database_url):
    with connect(database_url, autocommit=True) as conn:
        _seed_history(conn)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    _sign_in(page, site)
    page.click("nav a:text('History')")
    page.wait_for_selector("#chart-all svg g.bar")
    assert page.locator("#chart-all g.bar").count() == 2
    assert page.locator("#chart-harvest rect.failed").count() == 1
    box = page.locator("#chart-all g.bar rect.completed").first.bounding_box()
    assert box["width"] > 0 and box["height"] > 0  # drawn, not only present
    page.click(".windows a:text('7 days')")
    page.wait_for_selector("#overall[data-hours='168']")
    assert page.locator("#chart-all g.bar").count() == 3 and page.locator("#chart-sync g.bar").count() == 1
    page.screenshot(path=str(ARTIFACTS / "pages-history.png"), full_page=True)


@pytest.mark.slow
def test_retry_failed_and_clean_from_the_overview_and_find_the_error(browser, site, redis_conn, database_url):
    job = _failing(redis_conn, "the provider said no")
    _work(redis_conn, database_url, "sync")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    _sign_in(page, site)
    page.click("nav a:text('Jobs')")
    page.fill("#job-id", job.id)
    page.click("#search button")
    page.wait_for_selector("#job-error")
    assert "the provider said no" in page.locator("#job-error").inner_text()
    page.screenshot(path=str(ARTIFACTS / "pages-job.png"), full_page=True)
    page.fill("#runs-error", "PROVIDER SAID")
    page.select_option("#runs-status", "failed")
    page.click("#runs-search button")
    page.wait_for_selector("#runs tbody[data-count='1']")
    assert job.id in page.locator("#runs tbody").inner_text()

    page.click("nav a:text('Overview')")
    sync = "#queues tr[data-queue=sync]"
    assert page.locator(f"{sync} td.failed").inner_text() == "1"
    page.click(f"{sync} button.retry")
    page.wait_for_selector("#messages:has-text('1 failed job(s) requeued')")
    assert page.locator(f"{sync} td.failed").inner_text() == "0"
    assert page.locator(f"{sync} td.waiting").inner_text() == "1"

    _work(redis_conn, database_url, "sync")
    page.reload()
    assert page.locator(f"{sync} td.failed").inner_text() == "1"
    page.select_option(f"{sync} form.clean select", "failed")
    page.fill(f"{sync} form.clean input[name=age]", "0")
    page.click(f"{sync} form.clean button")
    page.wait_for_selector("#messages:has-text('1 failed job(s) older than 0 s removed')")
    assert page.locator(f"{sync} td.failed").inner_text() == "0" and not redis_conn.exists(f"rq:job:{job.id}")


@pytest.mark.slow
def test_job_data_with_markup_renders_inert(browser, site, redis_conn, database_url):
    job = _failing(redis_conn, HOSTILE)
    _work(redis_conn, database_url, "sync")
    page = browser.new_page()
    _sign_in(page, site)
    page.goto(f"{site}/admin/jobs?id={job.id}&error=pwned")
    assert json.dumps(HOSTILE)[1:-1] in page.locator("#job-data").inner_text()  # shown as the JSON it is
    assert HOSTILE in page.locator("#job-error").inner_text() and HOSTILE in page.locator("#runs").inner_text()
    assert page.locator("main img").count() == 0 and page.evaluate("window.pwned") is None


@pytest.mark.slow
def test_job_data_with_markup_renders_inert_in_rq_dashboard(browser, site, redis_conn):
    job = enqueue(redis_conn, "system.ping", {"echo": HOSTILE}, {"queue": "sync"})
    page = browser.new_page()
    _sign_in(page, site)
    page.goto(f"{site}/api/admin/queues/0/view/job/{job.id}")
    # the view's scripts fetched the job and drew it (the id alone is in the URL and the heading, drawn or not)
    page.wait_for_selector("#job-data .description-scroll")
    drawn = page.locator("#job-data").inner_text()
    assert "sync" in drawn and "queued" in drawn, drawn
    assert HOSTILE in drawn  # the markup shown as text, not run
    assert page.evaluate("window.pwned") is None
    assert page.locator("img[src=x]").count() == 0


@pytest.mark.slow
def test_follow_a_deferred_job_to_its_parent_and_its_batch_in_chromium(browser, site, redis_conn, database_url):
    parent, child, batch = _flow(redis_conn)
    held = batch.callbacks["onComplete"]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    failures: list = []
    page.on("response", lambda r: failures.append((r.status, r.url)) if r.status >= 400 else None)
    _sign_in(page, site)
    harvest = "#queues tr[data-queue=harvest]"
    assert page.locator(f"{harvest} td.deferred").inner_text() == "2"

    page.click(f"{harvest} td.deferred a")
    page.wait_for_selector("#state-jobs tbody[data-count='2']")
    assert page.locator("#state-count").inner_text().startswith("2 deferred job(s) in harvest")
    assert [row.get_attribute("data-job") for row in page.locator("#state-jobs tbody tr").all()] == [child, held]
    page.screenshot(path=str(ARTIFACTS / "pages-deferred.png"), full_page=True)

    page.click(f"#state-jobs tr[data-job='{child}'] td:first-child a")
    page.wait_for_selector("#job-parents")
    assert "deferred" in page.locator("#job dd.status-deferred").inner_text()
    assert "waiting" in page.locator(f"#job-parents li[data-job='{parent}']").inner_text()
    page.click(f"#job-parents li[data-job='{parent}'] a")
    page.wait_for_selector(f"#job-dependents li[data-job='{child}']")
    assert page.locator("#job code").first.inner_text() == parent

    page.fill("#batch-id", batch.id)
    page.click("#batch-search button")
    page.wait_for_selector("#batch-counts")
    assert page.locator("#batch-state").inner_text() == "active"
    assert page.locator("#batch-counts td.pending").inner_text() == "2"
    assert "not yet" in page.locator("#batch-callbacks tr[data-callback=onComplete] .fired").inner_text()
    page.screenshot(path=str(ARTIFACTS / "pages-batch.png"), full_page=True)
    page.click("#batch-callbacks tr[data-callback=onComplete] a")
    page.wait_for_selector("#job-batch a")
    assert page.locator("#job code").first.inner_text() == held

    _work(redis_conn, database_url, "harvest")
    page.click("#job-batch a")
    page.wait_for_selector("#batch[data-state=completed]")
    assert page.locator("#batch-counts td.completed").inner_text() == "2"
    assert page.locator("#batch-callbacks tr[data-callback=onComplete] .fired").inner_text() == "yes"
    assert not failures, failures


@pytest.mark.slow
def test_rq_dashboard_counts_lists_and_shows_deferred_jobs_in_chromium(browser, site, redis_conn):
    parent, child, batch = _flow(redis_conn)
    held = batch.callbacks["onComplete"]
    dash = f"{site}/api/admin/queues"
    failures: list = []
    page = _dashboard_page(browser, site, failures)

    page.goto(f"{dash}/")
    deferred = "#queues tbody tr:has-text('harvest') a[href$='/harvest/deferred/8/asc/1']"
    page.wait_for_selector(deferred)
    assert page.locator(deferred).inner_text() == "2"
    page.click(deferred)
    page.wait_for_selector(f"tr[data-job-id='{held}']")
    assert {row.get_attribute("data-job-id") for row in page.locator("tr[data-role=job]").all()} == {child, held}
    page.screenshot(path=str(ARTIFACTS / "rq-dashboard-deferred.png"), full_page=True)

    page.goto(f"{dash}/0/view/job/{child}")
    page.wait_for_selector(f"#job-data a[href$='/view/job/{parent}']")
    drawn = page.locator("#job-data").inner_text()
    assert "deferred" in drawn and "harvest" in drawn and "(Expired)" not in drawn, drawn
    page.click(f"#job-data a[href$='/view/job/{parent}']")
    page.wait_for_selector(".description-scroll:has-text('system.ping')")
    assert "queued" in page.locator("#job-data").inner_text()
    page.goto(f"{dash}/0/view/job/{held}")
    page.wait_for_selector(".description-scroll:has-text('system.ping')")
    assert batch.id in page.locator("#job-data").inner_text()  # its metadata names its batch
    assert not failures, failures


def _dashboard_page(browser, site: str, failures: list):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.on("response", lambda r: failures.append((r.status, r.url)) if r.status >= 500 else None)
    page.on("pageerror", lambda exc: failures.append(("script error", str(exc))))
    _sign_in(page, site)
    return page


@pytest.mark.slow
def test_rq_dashboard_pages_in_chromium_show_every_job_once_escaped_and_never_fail(browser, site, redis_conn,
                                                                                    database_url):  # fmt: skip
    done = enqueue(redis_conn, "system.ping", {"echo": HOSTILE}, {"queue": "sync"})
    failed = _failing(redis_conn, HOSTILE)
    _work(redis_conn, database_url, "sync")
    build_worker(["sync"], redis_conn, "idle-after-a-job").register_birth()  # registered, idle, no current job
    high = enqueue(redis_conn, "system.ping", {"echo": "first"}, {"queue": "embeddings", "priority": "high"})
    low = enqueue(redis_conn, "system.ping", {"echo": "last"}, {"queue": "embeddings", "priority": "low"})
    later = enqueue(redis_conn, "system.ping", {}, {"queue": "embeddings", "delay": 600})
    enqueue(redis_conn, "notifications.send", {"channel": "webhook", "to": "https://example.com/h", "text": "x"})
    pause(redis_conn, "notifications")
    dash = f"{site}/api/admin/queues"
    failures: list = []
    page = _dashboard_page(browser, site, failures)

    page.goto(f"{dash}/")
    page.wait_for_selector("#queues tbody tr:has-text('embeddings')")
    rows = {row.locator("td").first.inner_text(): row.locator("td").nth(1).inner_text()
            for row in page.locator("#queues tbody tr").all()}  # fmt: skip
    assert set(rows) == {*queue_names(), "notifications (paused)"} - {"notifications"}
    assert rows["embeddings"] == "2" and rows["notifications (paused)"] == "1"  # every priority lane counted
    page.screenshot(path=str(ARTIFACTS / "rq-dashboard-queues.png"), full_page=True)

    page.goto(f"{dash}/0/view/workers")
    page.wait_for_selector("table tbody tr:has-text('idle-after-a-job')")
    assert "idle" in page.locator("table tbody tr:has-text('idle-after-a-job')").inner_text()

    page.goto(f"{dash}/0/view/jobs/embeddings/queued/8/asc/1")
    page.wait_for_selector(f"tr[data-job-id='{low.id}']")
    assert [row.get_attribute("data-job-id") for row in page.locator("tr[data-role=job]").all()] == [high.id, low.id]
    page.goto(f"{dash}/0/view/jobs/embeddings/scheduled/8/asc/1")
    page.wait_for_selector(f"tr[data-job-id='{later.id}']")

    page.goto(f"{dash}/0/view/jobs/sync/finished/8/asc/1")
    page.wait_for_selector(f"tr[data-job-id='{done.id}']")
    text = page.locator(f"tr[data-job-id='{done.id}'] .description").inner_text()
    assert text == f"system.ping(echo={HOSTILE!r})"  # shown as the text it is: no &lt; or &#x27; left over
    page.goto(f"{dash}/0/view/jobs/sync/failed/8/asc/1")
    page.wait_for_selector(f"tr[data-job-id='{failed.id}']")
    assert HOSTILE in page.locator(f"tr[data-job-id='{failed.id}'] .exc_info").inner_text()
    page.goto(f"{dash}/0/view/job/{done.id}")
    page.wait_for_selector(".description-scroll:has-text('system.ping')")
    assert page.locator(".description-scroll").inner_text() == f"system.ping(echo={HOSTILE!r})"
    assert HOSTILE in page.locator("pre").first.inner_text()  # the result
    assert page.locator("img[src=x]").count() == 0 and page.evaluate("window.pwned") is None

    # Requeue from the failed list: bullrq's retry-failed, its next try numbered 2
    page.goto(f"{dash}/0/view/jobs/sync/failed/8/asc/1")
    page.click(f"tr[data-job-id='{failed.id}'] [data-role=requeue-job-btn]")
    wait_for(lambda: redis_conn.hget(f"rq:job:{failed.id}", "status") == b"queued", message="the requeue")
    assert fetch_job(failed.id, redis_conn).attempt == 2

    # Empty the waiting jobs of embeddings from its page: every lane, the delayed job kept
    page.goto(f"{dash}/0/view/jobs/embeddings/queued/8/asc/1")
    page.wait_for_selector(f"tr[data-job-id='{low.id}']")
    page.click("#empty-btn")
    page.click("#confirmation-modal-yes")
    wait_for(lambda: not any(redis_conn.llen(lane) for lane in queue_keys("embeddings").lanes), message="empty")
    assert redis_conn.zscore(queue_keys("embeddings").scheduled, later.id) is not None

    missing = page.goto(f"{dash}/0/view/job/no-such-job")
    assert missing.status == 404 and missing.json()["error"]["code"] == "job_not_found"
    failures = [f for f in failures if f[0] != 404]
    assert not failures, failures


@pytest.mark.slow
def test_the_overview_fits_a_1366_pixel_screen_without_scrolling_sideways(browser, site, redis_conn, database_url):
    # the widest figures it shows: failures in the last 24 h, a paused queue, a concurrency cap, big counts
    with connect(database_url, autocommit=True) as conn:
        now = time.time()
        write_rows(conn, [run_row(job_id=f"fit-{queue}-{n}", attempt=1, queue=queue, task="system.ping",
                                  status="failed" if n % 3 else "completed", started_at=now - 60, ended_at=now - 59)
                          for n in range(30) for queue in queue_names()])
    for _ in range(3):
        enqueue(redis_conn, "system.ping", {}, {"queue": "sync", "delay": 3600})
    parent = enqueue(redis_conn, "system.ping", {}, {"queue": "sync"})
    for _ in range(120):  # a three-figure deferred count, drawn as a link
        enqueue(redis_conn, "system.ping", {}, {"queue": "sync", "dependsOn": [parent.id]})
    redis_conn.set(queue_keys("reports").paused, 1)
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    _sign_in(page, site)
    page.wait_for_selector("#queues tr[data-queue=reports] .paused")
    assert "failed)" in page.locator("#queues tr[data-queue=sync] .runs-day").inner_text()

    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    page.screenshot(path=str(ARTIFACTS / "pages-overview-1366.png"))
    assert widths[0] <= widths[1] == 1366, f"the overview is {widths[0]} px wide on a 1366 px screen"
    box = page.locator("#queues").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 1366
    for queue in queue_names():  # every action still there, on screen
        row = page.locator(f"#queues tr[data-queue={queue}]")
        assert row.locator("button.toggle").is_visible() and row.locator("form.clean button").is_visible()


def test_favicon_answers_with_a_small_icon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response.mimetype == "image/vnd.microsoft.icon"
    assert response.data[:4] == b"\x00\x00\x01\x00" and len(response.data) < 4096  # an ICO header, one small image
    assert "max-age" in response.headers["Cache-Control"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["/%09/evil.example", "/%0a/evil.example", "/%5c/evil.example"])
def test_signing_in_from_a_crafted_link_stays_on_this_site(browser, site, target):
    """A browser drops tab and newline from a URL and reads a backslash as a slash: `/\t/evil.example` would take it
    to another site after signing in."""
    page = browser.new_page()
    page.goto(f"{site}/login?next={target}")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("#queues")
    assert page.url == f"{site}/admin/"
