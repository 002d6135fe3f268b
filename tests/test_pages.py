"""The product's pages in a real headless Chromium (Debian's, driven by Playwright) against the real servers."""

from __future__ import annotations

import dataclasses
import shutil
import threading

import pytest
from werkzeug.serving import make_server

from app.config import PROJECT_ROOT
from app.enqueue import enqueue
from app.history import HistoryWriter
from app.migrate import apply_migrations
from app.servers import free_port
from app.worker import build_worker
from queues import queue_keys, queue_names
from tests.conftest import IN_CI, TOKEN

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip

pytestmark = pytest.mark.slow
#: screenshots kept for people to look at (CI keeps the folder)
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
ARTIFACTS.mkdir(exist_ok=True)


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
    schedules.write_text("schedules:\n  - id: nightly\n    task: system.ping\n    queue: harvest\n"
                         "    cron: \"0 3 * * *\"\n")  # fmt: skip
    app.config["SETTINGS"] = dataclasses.replace(app.config["SETTINGS"], schedules_file=schedules)
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


def _sign_in(page, site: str) -> None:
    page.goto(f"{site}/admin/")
    assert "/login" in page.url
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-loaded=true]")


def test_sign_in_then_pause_and_resume_a_queue(browser, site, redis_conn):
    page = browser.new_page()
    page.goto(f"{site}/admin/")
    page.fill("#token", "not-the-right-token-000")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text() == "That token is not valid."
    _sign_in(page, site)
    assert page.locator("#queues tbody tr").count() == len(queue_names())

    page.click("#queues tr[data-queue=sync] button")
    page.wait_for_selector("#queues tr[data-queue=sync] .paused")
    assert redis_conn.exists(queue_keys("sync").paused)
    assert "sync: paused" in page.locator("#status").inner_text()
    page.click("#queues tr[data-queue=sync] button")
    page.wait_for_function("!document.querySelector('#queues tr[data-queue=sync] .paused')")
    assert not redis_conn.exists(queue_keys("sync").paused)


def test_run_a_schedule_now_see_its_run_and_the_chart(browser, site, client, redis_conn, database_url):
    client.post("/api/admin/workers", headers={"Authorization": f"Bearer {TOKEN}"},
                json={"action": "setup-recurring"})  # fmt: skip
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    _sign_in(page, site)
    row = "#schedules tr[data-schedule=nightly]"
    page.wait_for_selector(row)
    page.click(f"{row} button:text('Run now')")
    page.wait_for_function("document.querySelector('#status').textContent.includes('started job')")
    assert len(redis_conn.lrange(queue_keys("harvest").queue, 0, -1)) == 1

    build_worker(["harvest"], redis_conn, "pages-test", database_url).work(burst=True)
    writer = HistoryWriter(redis_conn, database_url, "pages-test")
    while writer.drain_once(block=0.05):
        pass
    page.fill("#runs-name", "nightly")
    page.click("#runs-search button")
    page.wait_for_selector("#runs tbody[data-count='1']")
    assert "completed" in page.locator("#runs tbody").inner_text()
    page.reload()
    page.wait_for_selector("body[data-loaded=true]")
    assert int(page.get_attribute("#throughput", "data-hours")) >= 1  # the chart has its bar
    assert int(page.get_attribute("#queue-charts figure[data-queue=harvest] canvas", "data-hours")) >= 1
    assert page.locator("#queues tr[data-queue=harvest] td").nth(7).inner_text() == "1"  # runs in the last hour
    page.select_option("#window", "168")
    page.wait_for_selector("#durations tbody tr")
    page.screenshot(path=str(ARTIFACTS / "admin-overview.png"), full_page=True)

    page.click(f"{row} button:text('Disable')")
    page.wait_for_selector(f"{row} button:text('Enable')")
    assert "disabled" in page.locator(row).inner_text()


def test_retry_failed_from_the_overview_and_search_by_error(browser, site, redis_conn, database_url):
    job = enqueue(redis_conn, "system.ping", {"sleep": 2}, {"queue": "sync", "timeout": 1, "attempts": 1})
    build_worker(["sync"], redis_conn, "pages-test", database_url).work(burst=True)
    writer = HistoryWriter(redis_conn, database_url, "pages-test")
    while writer.drain_once(block=0.05):
        pass
    page = browser.new_page()
    _sign_in(page, site)
    page.fill("#runs-error", "timeout")
    page.select_option("#runs-status", "timed_out")
    page.click("#runs-search button")
    page.wait_for_selector("#runs tbody[data-count='1']")
    assert job.id in page.locator("#runs tbody").inner_text()
    page.click("#queues tr[data-queue=sync] button:text('Retry failed')")
    page.wait_for_function("document.querySelector('#status').textContent.includes('1 failed job(s) requeued')")
    assert redis_conn.hget(f"rq:job:{job.id}", "status") == b"queued"


def test_job_data_with_markup_renders_inert(browser, site, redis_conn):
    hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    job = enqueue(redis_conn, "system.ping", {"echo": hostile}, {"queue": "sync"})
    page = browser.new_page()
    _sign_in(page, site)
    page.fill("#job-id", job.id)
    page.click("#search button")
    page.wait_for_function("document.querySelector('#job').textContent.includes('onerror')")
    assert hostile.replace('"', '\\"') in page.locator("#job").inner_text()
    assert page.locator("#job img").count() == 0 and page.evaluate("window.pwned") is None


def test_job_data_with_markup_renders_inert_in_rq_dashboard(browser, site, redis_conn):
    hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    job = enqueue(redis_conn, "system.ping", {"echo": hostile}, {"queue": "sync"})
    page = browser.new_page()
    _sign_in(page, site)
    page.goto(f"{site}/api/admin/queues/0/view/job/{job.id}")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)  # let its scripts fill the view
    assert job.id in page.content()
    assert page.evaluate("window.pwned") is None
    assert page.locator("img[src=x]").count() == 0
