"""Alerts end to end on real processes: scheduler and web processes evaluate, a real notifications worker delivers
to a loopback SMTP server (aiosmtpd) and a webhook receiver that checks signatures.

Every condition fires once and clears once; a burst of failures is a handful of grouped messages; two evaluators,
or one restarted, never send a message twice nor forget an open alert.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

import tests.handlers  # noqa: F401 - the test task types this process enqueues
from app.alerts.evaluator import AlertEvaluator
from app.alerts.settings import load_alert_settings
from app.errors import ConfigError
from app.runtime.enqueue import enqueue, enqueue_many
from app.scheduling.schedule_store import fire, get_schedule, sync_declared
from app.scheduling.schedules import load_schedules
from app.store.db import connect
from app.store.history import WRITE_LOCK
from app.store.migrate import apply_migrations
from app.tasks import queue_keys
from queues import ALERTS_LEASE_KEY, SCHEDULER_LEADER_KEY
from tests.conftest import TOKEN
from tests.fixtures import run_cli, wait_for
from tests.test_workers_notifications import SmtpServers, free_port, verified
from tests.waits import stays

pytest_plugins = ["tests.worker_processes", "tests.http_service"]

PROJECT = Path(__file__).resolve().parent.parent
SECRET = "whsec-alerts-0123456789abcdef"
OPS = "ops@example.com"
PUBLIC = "https://bullrq.example.com"
#: processes that may enqueue the test task types load them first (as tests/worker_processes.py does)
LAUNCHER = "import tests.handlers; from app.cli.main import cli; cli()"
#: every condition off, evaluation fast: each test switches on what it is about
QUIET = {
    "ALERT_INTERVAL": "0.3",
    "ALERT_CLEAR_AFTER": "1",
    "ALERT_COOLDOWN": "0",
    "ALERT_FAILED": "0",
    "ALERT_FAILURE_RATE": "0",
    "ALERT_BACKLOG_WAITING": "0",
    "ALERT_BACKLOG_AGE": "0",
    "ALERT_NO_WORKER_AFTER": "0",
    "ALERT_NO_SCHEDULER_AFTER": "0",
    "ALERT_SCHEDULE_LATE_AFTER": "0",
    "ALERT_SCHEDULE_FAILED": "0",
    "ALERT_HISTORY_BEHIND_AFTER": "0",
}
SCHEDULES = """
schedules:
  - id: yearly
    task: system.ping
    queue: sync
    cron: "0 0 1 1 *"
    args: {echo: new year}
  - id: fragile
    task: semantics.fail-while
    queue: harvest
    cron: "0 0 1 1 *"
    args: {tag: fragile}
    max_runtime: 2
  - id: slow
    task: semantics.gated
    queue: harvest
    cron: "0 0 1 1 *"
    args: {tag: slow, wait: 60}
    max_runtime: 1
"""


class Alerting:
    """The test's alert deployment: channels, settings, and the processes that evaluate and deliver."""

    def __init__(self, workers, redis_conn, database_url, http_service, inbox, tmp_path, monkeypatch):
        self.workers, self.redis, self.database_url = workers, redis_conn, database_url
        self.http, self.inbox, self.tmp, self.monkeypatch = http_service, inbox, tmp_path, monkeypatch
        self.procs: list[subprocess.Popen] = []
        self.web_port: int | None = None

    def configure(self, **env: str) -> None:
        """Set alert variables for the processes started from now on."""
        for name, value in env.items():
            self.monkeypatch.setenv(name, str(value))

    def start_notifier(self) -> None:
        self.workers.start("notifications", name="notify")

    def start(self, *argv: str, name: str) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *argv], cwd=PROJECT, stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        self.procs.append(proc)
        return proc

    def start_scheduler(self, name: str = "scheduler") -> subprocess.Popen:
        """A scheduler process, returned once an evaluator holds the lease (this one, unless another does)."""
        proc = self.start("scheduler", name=name)
        wait_for(lambda: self.redis.get(ALERTS_LEASE_KEY) or proc.poll() is not None, timeout=60,
                 message="an alert evaluator")  # fmt: skip
        return proc

    def start_web(self) -> subprocess.Popen:
        """`bullrq web` under gunicorn: each of its two worker processes is a candidate evaluator."""
        self.web_port = free_port()
        self.configure(WEB_CONCURRENCY="2", WEB_THREADS="2")
        proc = self.start("web", "--port", str(self.web_port), name="web")
        wait_for(lambda: self.log("web").count("candidate evaluator") >= 2, timeout=90,
                 message=f"both gunicorn workers to be candidates\n{self.log('web')}")  # fmt: skip
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        """What the processes logged, the alerts recorded and the runs written: for a failing test's message."""
        paths = [*self.tmp.glob("*.log"), *self.tmp.glob("worker-logs/*.log")]
        text = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in paths)
        with connect(self.database_url, autocommit=True) as conn:
            runs = conn.execute("SELECT queue, task, status, count(*) FROM job_runs GROUP BY 1, 2, 3").fetchall()
        exits = [(p.args[3:], p.poll()) for p in self.procs]
        return f"{text}\n--- processes: {exits}\n--- alerts: {self.alerts()}\n--- runs: {runs}"

    # -- what was received ----------------------------------------------------------------------------------------

    def webhooks(self) -> list[dict]:
        """Every webhook received (signature checked), in order: its payload and Idempotency-Key."""
        found = []
        for request in self.http.received("POST", "/hook"):
            assert verified(SECRET, request), "a webhook arrived with a bad signature"
            found.append({**request.json(), "_key": request.headers.get("idempotency-key")})
        return found

    def events(self) -> list[tuple[str, str]]:
        """(event, alert key) of each alert webhook received, in order."""
        return [(m["event"], m["alert"]["key"]) for m in self.webhooks() if m["event"] != "alert.test"]

    def wait_events(self, wanted: list[tuple[str, str]], timeout: float = 60) -> None:
        try:
            wait_for(lambda: self.events() == wanted, timeout=timeout, message=f"messages {wanted}")
        except AssertionError:
            raise AssertionError(f"received {self.events()}, wanted {wanted}\n{self.logs()}") from None

    def alerts(self) -> list[dict]:
        with connect(self.database_url, autocommit=True) as conn:
            return conn.execute("SELECT * FROM alerts ORDER BY id").fetchall()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def alerting(workers, redis_conn, redis_url, database_url, http_service, tmp_path, monkeypatch):
    """Channels (SMTP server and webhook receiver), settings for fast rounds with every condition off, and the
    processes the test starts (stopped at the end)."""
    apply_migrations(database_url)
    smtp = SmtpServers()
    inbox, port = smtp.start()
    http_service.route("POST", "/hook", lambda request: (200, {}, {"ok": True}))
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(SCHEDULES)
    env = {
        "REDIS_URL": redis_url, "DATABASE_URL": database_url, "BULLRQ_SCHEDULES": str(schedules),
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "SMTP_SECURITY": "none", "SMTP_FROM": "bullrq@example.com",
        "SMTP_TIMEOUT": "15", "WEBHOOK_SIGNING_SECRET": SECRET, "ADMIN_TOKEN": TOKEN, "BULLRQ_PUBLIC_URL": PUBLIC,
        "ALERT_CHANNELS": f"webhook:{http_service.url}/hook", **QUIET,
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    deployment = Alerting(workers, redis_conn, database_url, http_service, inbox, tmp_path, monkeypatch)
    yield deployment
    deployment.close()
    for controller in smtp.controllers:
        controller.stop()


def _sync_schedules(database_url: str, path: Path) -> None:
    with connect(database_url, autocommit=True) as conn:
        sync_declared(conn, load_schedules(path))


def _fire(database_url: str, redis_conn, schedule_id: str) -> str:
    """Run an entry now, as `bullrq schedules run` does."""
    with connect(database_url, autocommit=True) as conn:
        return fire(conn, redis_conn, get_schedule(conn, schedule_id), slot=None, next_run_at=None)


def _failures(redis_conn, count: int, tag: str = "boom", task: str = "semantics.fail", queue: str = "harvest"):
    """Enqueue `count` jobs that fail for good (one attempt each)."""
    options = {"queue": queue, "attempts": 1}
    for start in range(0, count, 500):
        batch = range(start, min(count, start + 500))
        enqueue_many(redis_conn, [(task, {"tag": f"{tag}-{i}"}, options) for i in batch])


# -- each condition fires once and clears once ---------------------------------------------------------------------


def test_failed_jobs_open_one_alert_by_email_and_webhook_and_clear_once_quiet(alerting, redis_conn):
    alerting.configure(ALERT_FAILED="1", ALERT_FAILED_WINDOW="3",
                       ALERT_CHANNELS=f"email:{OPS},webhook:{alerting.http.url}/hook")  # fmt: skip
    alerting.start_notifier()
    alerting.workers.start("harvest", name="harvest")
    alerting.start_scheduler()
    _failures(redis_conn, 3)
    key = "failed:harvest:semantics.fail"
    alerting.wait_events([("alert.opened", key), ("alert.cleared", key)])
    opened, cleared = alerting.webhooks()
    assert 1 <= opened["alert"]["count"] <= 3
    assert cleared["alert"]["count"] == 3
    assert cleared["alert"]["details"]["top_errors"][0]["error"].startswith("RuntimeError: boom boom-")
    assert cleared["url"] == f"{PUBLIC}/admin/jobs?name=semantics.fail&status=failed"
    # the same two messages by e-mail, with what, where, since, counts, top errors and the link
    wait_for(lambda: len(alerting.inbox.messages()) == 2, timeout=30, message="two e-mails")
    first, second = alerting.inbox.messages()
    assert first["To"] == OPS and str(first["Subject"]).strip().startswith("[bullrq] ALERT: ")
    text = first.get_body(("plain",)).get_content()
    for part in ("semantics.fail on queue harvest failed for good", "Where: queue harvest, task semantics.fail",
                 "Since: ", "Top errors:", "RuntimeError: boom", f"See: {PUBLIC}/admin/jobs?name=semantics.fail"):
        assert part in text, text
    assert str(second["Subject"]).strip().startswith("[bullrq] RESOLVED after ")
    assert "Count (last seen): 3" in second.get_body(("plain",)).get_content()
    [row] = alerting.alerts()
    assert (row["status"], row["open_sent"], row["clear_sent"], row["messages_sent"]) == ("cleared", True, True, 2)


def test_a_scheduled_sync_in_which_a_workspace_failed_opens_an_alert_naming_it(alerting, redis_conn, monkeypatch):
    alerting.configure(ALERT_FAILED="1", ALERT_FAILED_WINDOW="120")
    monkeypatch.delenv("SYNC_PRIMARY_URL", raising=False)  # the syncs fail for good at once (no provider)
    with connect(alerting.database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO sync_items (workspace_id, external_id) VALUES ('acme', 'a'), ('globex', 'b')")
    alerting.start_notifier()
    alerting.workers.start("sync", name="sync")
    alerting.start_scheduler()
    scheduled = enqueue(redis_conn, "sync.scheduled", {}, None).id
    key = "failed:sync:sync.scheduled-done"
    wait_for(lambda: ("alert.opened", key) in alerting.events(), timeout=60,
             message=f"the run's alert\n{alerting.logs()}")  # fmt: skip
    [row] = [alert for alert in alerting.alerts() if alert["key"] == key]
    assert (row["status"], row["task"], row["queue"], row["count"]) == ("open", "sync.scheduled-done", "sync", 1)
    [error] = [e["error"] for e in row["details"]["top_errors"]]
    assert error.startswith(f"PermanentFailure: 2 of 2 workspaces failed for good: 'acme', 'globex'; scheduled "
                            f"sync {scheduled}, batch "), error
    [opened] = [m for m in alerting.webhooks() if m["event"] == "alert.opened" and m["alert"]["key"] == key]
    assert "sync.scheduled-done on queue sync failed for good" in opened["alert"]["summary"]


def test_switched_off_task_type_raises_no_alert(alerting, redis_conn):
    alerting.configure(ALERT_FAILED="1", ALERT_FAILED_WINDOW="3", ALERT_QUIET_TASKS="semantics.permanent")
    alerting.start_notifier()
    alerting.workers.start("harvest", name="harvest")
    alerting.start_scheduler()
    _failures(redis_conn, 2, task="semantics.permanent")
    _failures(redis_conn, 1)
    key = "failed:harvest:semantics.fail"
    alerting.wait_events([("alert.opened", key), ("alert.cleared", key)])
    assert [row["key"] for row in alerting.alerts()] == [key]


def test_failure_rate_over_its_window(alerting, redis_conn):
    alerting.configure(ALERT_FAILURE_RATE="0.5", ALERT_FAILURE_MIN_RUNS="4", ALERT_FAILURE_WINDOW="4")
    alerting.start_notifier()
    alerting.workers.start("harvest", name="harvest")
    alerting.start_scheduler()
    _failures(redis_conn, 3)
    enqueue(redis_conn, "system.ping", {}, {"queue": "harvest"})
    key = "failure_rate:harvest"
    alerting.wait_events([("alert.opened", key), ("alert.cleared", key)])
    opened = alerting.webhooks()[0]
    assert opened["alert"]["details"]["failed"] == 3 and opened["alert"]["details"]["total"] == 4
    assert "75% of attempts failed" in opened["alert"]["summary"]


def test_backlog_by_count_and_by_age(alerting, redis_conn):
    alerting.configure(ALERT_BACKLOG_WAITING_EMBEDDINGS="2", ALERT_BACKLOG_AGE_REPORTS="2")
    alerting.start_notifier()
    alerting.start_scheduler()
    for n in range(3):  # jobs of groups wait in their groups' lists: counted as waiting all the same
        enqueue(redis_conn, "system.ping", {}, {"queue": "embeddings", "group": f"w{n}" if n else None})
    enqueue(redis_conn, "system.ping", {}, {"queue": "reports", "group": "w1"})
    wait_for(lambda: {k for _, k in alerting.events()} == {"backlog:embeddings", "backlog:reports"}, timeout=60,
             message="both backlog alerts")  # fmt: skip
    by_key = {m["alert"]["key"]: m for m in alerting.webhooks()}
    assert "3 jobs waiting (threshold 2)" in by_key["backlog:embeddings"]["alert"]["summary"]
    assert "the oldest has waited" in by_key["backlog:reports"]["alert"]["summary"]
    assert by_key["backlog:reports"]["url"] == f"{PUBLIC}/admin/#queue-reports"
    alerting.workers.start("embeddings", "reports", name="drain")
    wait_for(lambda: len(alerting.events()) == 4, timeout=60, message="both cleared")
    events = alerting.events()
    assert sorted(events[2:]) == [("alert.cleared", "backlog:embeddings"), ("alert.cleared", "backlog:reports")]


def test_queue_without_a_live_worker_for_a_while(alerting, redis_conn):
    alerting.configure(ALERT_NO_WORKER_AFTER_HARVEST="2")
    alerting.start_notifier()
    alerting.start_scheduler()
    key = "no_worker:harvest"
    alerting.wait_events([("alert.opened", key)])
    with connect(alerting.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT * FROM alerts WHERE key = %s", (key,)).fetchone()
    assert (row["opened_at"] - row["first_seen_at"]).total_seconds() >= 2  # held for T before it opened
    alerting.workers.start("harvest", name="harvest")
    alerting.wait_events([("alert.opened", key), ("alert.cleared", key)])
    alerting.workers.stop("harvest")  # a clean stop deregisters at once: the condition holds again
    alerting.wait_events([("alert.opened", key), ("alert.cleared", key), ("alert.opened", key)])


def test_no_scheduler_leader_is_told_by_the_web_process_when_the_scheduler_dies(alerting, redis_conn):
    alerting.configure(ALERT_NO_SCHEDULER_AFTER="2")
    alerting.start_notifier()
    scheduler = alerting.start_scheduler()
    wait_for(lambda: redis_conn.get(ALERTS_LEASE_KEY), timeout=60, message="the scheduler to evaluate alerts")
    wait_for(lambda: redis_conn.get(SCHEDULER_LEADER_KEY), timeout=60, message="a scheduler leader")
    alerting.start_web()
    assert redis_conn.get(ALERTS_LEASE_KEY).startswith(b"scheduler@")
    scheduler.kill()  # SIGKILL: neither lease is handed over; both run out
    scheduler.wait(10)
    key = "no_scheduler"
    alerting.wait_events([("alert.opened", key)])
    assert redis_conn.get(ALERTS_LEASE_KEY).startswith(b"web@")
    assert alerting.webhooks()[0]["url"] == f"{PUBLIC}/admin/schedules"
    alerting.start_scheduler("scheduler-2")
    alerting.wait_events([("alert.opened", key), ("alert.cleared", key)])


def test_schedule_entry_missed_its_run(alerting, redis_conn):
    alerting.configure(ALERT_SCHEDULE_LATE_AFTER="2")
    alerting.start_notifier()
    _sync_schedules(alerting.database_url, alerting.tmp / "schedules.yaml")
    with connect(alerting.database_url, autocommit=True) as conn:  # everything was down over its slot
        conn.execute("UPDATE job_schedules SET next_run_at = now() - interval '10 minutes' WHERE id = 'yearly'")
    alerting.start_web()  # evaluates; no scheduler runs, so the slot stays missed
    key = "schedule_late:yearly"
    alerting.wait_events([("alert.opened", key)])
    alerting.start_scheduler()  # fires the missed slot once (catch_up): the entry is on time again
    alerting.wait_events([("alert.opened", key), ("alert.cleared", key)])


def test_schedule_entry_whose_run_failed(alerting, redis_conn):
    alerting.configure(ALERT_SCHEDULE_FAILED="1")
    alerting.start_notifier()
    alerting.workers.start("harvest", name="harvest")
    alerting.start_scheduler()
    wait_for(lambda: redis_conn.get(SCHEDULER_LEADER_KEY), timeout=60, message="a scheduler leader")
    wait_for(lambda: _has_schedules(alerting.database_url), timeout=30, message="the entries in PostgreSQL")
    redis_conn.set("test:broken:fragile", 1)
    _fire(alerting.database_url, redis_conn, "fragile")
    key = "schedule_failed:fragile"
    alerting.wait_events([("alert.opened", key)])
    assert "fragile is broken" in alerting.webhooks()[0]["alert"]["summary"]
    redis_conn.delete("test:broken:fragile")  # repaired: the next run succeeds
    _fire(alerting.database_url, redis_conn, "fragile")
    alerting.wait_events([("alert.opened", key), ("alert.cleared", key)])


def test_schedule_entry_stuck_past_its_max_runtime(alerting, redis_conn):
    from tests.handlers import open_gate

    alerting.configure(ALERT_SCHEDULE_FAILED="1")
    alerting.start_notifier()
    alerting.workers.start("harvest", name="harvest")
    alerting.start_scheduler()
    wait_for(lambda: _has_schedules(alerting.database_url), timeout=60, message="the entries in PostgreSQL")
    _fire(alerting.database_url, redis_conn, "slow")
    key = "schedule_stuck:slow"
    alerting.wait_events([("alert.opened", key)])
    open_gate(redis_conn, "slow")
    alerting.wait_events([("alert.opened", key), ("alert.cleared", key)])


def test_history_writer_behind(alerting, redis_conn):
    alerting.configure(ALERT_HISTORY_BEHIND_AFTER="2")
    alerting.start_notifier()
    alerting.workers.start("harvest", name="harvest")
    alerting.start_scheduler()
    # PostgreSQL stops taking history: the writers wait on the lock their writes take, rows wait in Redis
    blocker = psycopg.connect(alerting.database_url, autocommit=True)
    try:
        blocker.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
        enqueue(redis_conn, "system.ping", {}, {"queue": "harvest"})
        key = "history_behind"
        alerting.wait_events([("alert.opened", key)])
        assert "row(s) wait in Redis" in alerting.webhooks()[0]["alert"]["summary"]
        blocker.execute("SELECT pg_advisory_unlock(%s)", (WRITE_LOCK,))
        alerting.wait_events([("alert.opened", key), ("alert.cleared", key)])
    finally:
        blocker.close()


def _has_schedules(database_url: str) -> bool:
    with connect(database_url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) AS n FROM job_schedules").fetchone()["n"] == 3


# -- grouping, duplicates, restarts ------------------------------------------------------------------------------


def test_a_thousand_failures_in_a_minute_send_a_handful_of_grouped_messages(alerting, redis_conn):
    alerting.configure(ALERT_FAILED="1", ALERT_FAILED_WINDOW="10", ALERT_COOLDOWN="900")
    alerting.start_notifier()
    alerting.start_scheduler()
    _failures(redis_conn, 600, tag="storm")
    _failures(redis_conn, 400, tag="storm", task="semantics.permanent")
    alerting.workers.start("harvest", name="harvest-1")
    alerting.workers.start("harvest", name="harvest-2")
    keys = {"failed:harvest:semantics.fail", "failed:harvest:semantics.permanent"}
    wait_for(lambda: sorted(alerting.events()).count(("alert.cleared", "failed:harvest:semantics.fail")) == 1
             and len([e for e in alerting.events() if e[0] == "alert.cleared"]) == 2, timeout=180,
             message="both groups cleared")  # fmt: skip
    messages = alerting.webhooks()
    assert len(messages) == 4, [m["subject"] for m in messages]  # one opened and one cleared per task
    assert {m["alert"]["key"] for m in messages} == keys
    cleared = {m["alert"]["task"]: m for m in messages if m["event"] == "alert.cleared"}
    assert cleared["semantics.fail"]["alert"]["count"] == 600
    assert cleared["semantics.permanent"]["alert"]["count"] == 400
    top = cleared["semantics.permanent"]["alert"]["details"]["top_errors"]
    assert len(top) == 3 and all(e["error"].startswith("PermanentFailure: cannot ever work: storm-") for e in top)
    assert "Count (last seen): 600" in cleared["semantics.fail"]["text"]
    stays(lambda: len(alerting.webhooks()) == 4, 2)


def test_a_flapping_condition_is_told_at_most_once_per_cooldown(alerting, redis_conn):
    alerting.configure(ALERT_NO_WORKER_AFTER_HARVEST="1", ALERT_COOLDOWN="600")
    alerting.start_notifier()
    alerting.start_scheduler()
    key = "no_worker:harvest"
    alerting.wait_events([("alert.opened", key)])
    for round_ in range(3):  # a worker that comes and goes
        alerting.workers.start("harvest", name=f"harvest-{round_}")
        wait_for(lambda: not [a for a in alerting.alerts() if a["status"] == "open"], timeout=60,
                 message="the alert to clear")  # fmt: skip
        alerting.workers.stop(f"harvest-{round_}")
        wait_for(lambda: [a for a in alerting.alerts() if a["status"] == "open"], timeout=60,
                 message="the alert to open again")  # fmt: skip
    assert len(alerting.alerts()) == 4
    stays(lambda: alerting.events() == [("alert.opened", key), ("alert.cleared", key)], 2)


def test_two_evaluators_send_no_duplicate_even_when_the_lease_holder_dies(alerting, redis_conn):
    alerting.configure(ALERT_BACKLOG_WAITING_EMBEDDINGS="1",
                       ALERT_CHANNELS=f"email:{OPS},webhook:{alerting.http.url}/hook")  # fmt: skip
    alerting.start_notifier()
    first = alerting.start_scheduler("scheduler-1")
    alerting.start_scheduler("scheduler-2")
    wait_for(lambda: redis_conn.get(ALERTS_LEASE_KEY), timeout=60, message="an evaluator")
    enqueue_many(redis_conn, [("system.ping", {}, {"queue": "embeddings"})] * 2)
    key = "backlog:embeddings"
    alerting.wait_events([("alert.opened", key)])
    holder = redis_conn.get(ALERTS_LEASE_KEY).decode()
    victim = first if str(first.pid) in holder.split(".") else alerting.procs[1]
    victim.kill()  # the other takes over once the lease runs out, with the alert open
    wait_for(lambda: (redis_conn.get(ALERTS_LEASE_KEY) or b"").decode() not in ("", holder), timeout=60,
             message="the other scheduler to take over")  # fmt: skip
    alerting.workers.start("embeddings", name="drain")
    alerting.wait_events([("alert.opened", key), ("alert.cleared", key)])
    wait_for(lambda: len(alerting.inbox.messages()) == 2, timeout=30, message="two e-mails")
    stays(lambda: len(alerting.webhooks()) == 2 and len(alerting.inbox.messages()) == 2, 3)
    keys = [m["_key"] for m in alerting.webhooks()]
    assert len(set(keys)) == 2


def test_two_evaluators_racing_in_one_round_enqueue_each_message_once(alerting, redis_conn):
    """Past the lease (two processes that both believe they hold it): the rounds take turns in PostgreSQL."""
    alerting.configure(ALERT_BACKLOG_WAITING="1", ALERT_BACKLOG_WAITING_NOTIFICATIONS="0")  # the messages wait there
    for queue in ("sync", "reports", "harvest"):
        enqueue_many(redis_conn, [("system.ping", {}, {"queue": queue})] * 2)
    settings = load_alert_settings()
    evaluators = [AlertEvaluator(redis_conn, alerting.database_url, settings) for _ in range(4)]
    results, barrier = [], threading.Barrier(len(evaluators))

    def race(evaluator):
        barrier.wait()
        results.append(evaluator.evaluate_once())

    threads = [threading.Thread(target=race, args=(e,)) for e in evaluators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    sent = sorted(alert["key"] for events in results for alert, _ in events)
    assert sent == ["backlog:harvest", "backlog:reports", "backlog:sync"]
    assert sum(redis_conn.llen(lane) for lane in queue_keys("notifications").lanes) == 3


def test_a_restart_neither_resends_an_open_alert_nor_forgets_it(alerting, redis_conn):
    alerting.configure(ALERT_BACKLOG_WAITING_EMBEDDINGS="1")
    alerting.start_notifier()
    first = alerting.start_scheduler("scheduler-1")
    enqueue_many(redis_conn, [("system.ping", {}, {"queue": "embeddings"})] * 2)
    key = "backlog:embeddings"
    alerting.wait_events([("alert.opened", key)])
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    [before] = alerting.alerts()
    alerting.start_scheduler("scheduler-2")
    wait_for(lambda: alerting.alerts()[0]["last_seen_at"] > before["last_seen_at"], timeout=60,
             message="the new evaluator to see the alert")  # fmt: skip
    stays(lambda: alerting.events() == [("alert.opened", key)], 3)
    [after] = alerting.alerts()
    assert (after["id"], after["status"], after["opened_at"]) == (before["id"], "open", before["opened_at"])
    alerting.workers.start("embeddings", name="drain")
    alerting.wait_events([("alert.opened", key), ("alert.cleared", key)])
    assert alerting.webhooks()[1]["alert"]["id"] == before["id"]


def test_settings_default_per_queue_and_overridden_for_all_or_one_queue():
    defaults = load_alert_settings({})
    assert defaults.queues["notifications"].backlog_waiting == 1000
    assert defaults.queues["sync"].backlog_waiting == 10_000
    assert defaults.channels == () and defaults.public_url is None and defaults.link("/admin/") == "/admin/"
    env = {"ALERT_BACKLOG_WAITING": "50", "ALERT_BACKLOG_WAITING_CACHE_CLEANUP": "0", "ALERT_FAILED_HARVEST": "no",
           "ALERT_QUIET_TASKS": "sync.manual, harvest.source", "BULLRQ_PUBLIC_URL": "https://jobs.example.com/",
           "ALERT_CHANNELS": "email:ops@example.com, webhook:https://hooks.example.com/x?token=1"}  # fmt: skip
    settings = load_alert_settings(env)
    assert [s.backlog_waiting for s in settings.queues.values()] == [50, 50, 0, 50, 50, 50, 50]
    assert not settings.queues["harvest"].failed and settings.queues["sync"].failed
    assert settings.queues["sync"].quiet_tasks == {"sync.manual", "harvest.source"}
    assert settings.link("/admin/schedules") == "https://jobs.example.com/admin/schedules"
    assert [r.channel for r in settings.channels] == ["email", "webhook"]
    for name, value in (("ALERT_FAILURE_RATE", "1.5"), ("ALERT_INTERVAL", "0"), ("ALERT_FAILED", "maybe"),
                        ("BULLRQ_PUBLIC_URL", "ftp://x"), ("ALERT_CHANNELS", "pager:123")):  # fmt: skip
        with pytest.raises(ConfigError, match=name):
            load_alert_settings({name: value})


# -- visible: API, page, metrics, CLI ------------------------------------------------------------------------------


def test_api_page_metrics_and_cli_show_the_open_alert_and_test_reaches_every_channel(alerting, redis_conn):
    alerting.configure(ALERT_BACKLOG_WAITING_EMBEDDINGS="1",
                       ALERT_CHANNELS=f"email:{OPS},webhook:{alerting.http.url}/hook")  # fmt: skip
    enqueue_many(redis_conn, [("system.ping", {}, {"queue": "embeddings"})] * 2)
    AlertEvaluator(redis_conn, alerting.database_url, load_alert_settings()).evaluate_once()
    from app.web import create_app

    app = create_app({"TESTING": True, "REDIS_URL": os.environ["REDIS_URL"], "DATABASE_URL": alerting.database_url,
                      "ADMIN_TOKEN": TOKEN})  # fmt: skip
    try:
        client = app.test_client()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        body = client.get("/api/admin/alerts", headers=auth).get_json()
        [alert] = body["open"]
        assert alert["key"] == "backlog:embeddings" and alert["count"] == 2 and alert["notified"] is True
        assert body["recent"] == [] and body["pending"] == []
        bad = client.get("/api/admin/alerts?limit=lots", headers=auth)
        assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_request"
        assert client.get("/api/admin/alerts").status_code == 401
        page = client.get("/admin/", headers=auth).get_data(as_text=True)
        assert 'id="open-alerts"' in page and "queue embeddings is backed up" in page
        metrics = client.get("/metrics", headers=auth).get_data(as_text=True)
        assert 'bullrq_alerts_open{condition="backlog"} 1.0' in metrics
        assert 'bullrq_alerts_open{condition="no_worker"} 0.0' in metrics
        assert 'bullrq_alert_open{condition="backlog",key="backlog:embeddings"} 1.0' in metrics
    finally:
        app.extensions["bullrq.db"].close()

    listed = run_cli("bullrq", "alerts", "list")
    assert listed.returncode == 0 and "backlog:embeddings" in listed.stdout and "open: 1" in listed.stdout
    as_json = json.loads(run_cli("bullrq", "alerts", "list", "--json").stdout)
    assert as_json["open"][0]["key"] == "backlog:embeddings"

    alerting.start_notifier()
    tested = run_cli("bullrq", "alerts", "test")
    assert tested.returncode == 0, tested.stderr
    assert f"email:{OPS}" in tested.stdout and "webhook:" in tested.stdout
    wait_for(lambda: [m for m in alerting.webhooks() if m["event"] == "alert.test"], timeout=60, message="test hook")
    wait_for(lambda: [m for m in alerting.inbox.messages() if "Test alert" in str(m["Subject"])], timeout=60,
             message="test e-mail")  # fmt: skip


def test_bad_alert_settings_stop_with_one_line_naming_the_variable(alerting):
    env = {**os.environ, "ALERT_CHANNELS": "email:not-an-address"}
    result = run_cli("bullrq", "alerts", "test", env=env)
    assert result.returncode == 2 and "ALERT_CHANNELS: entry 1" in result.stderr and "Traceback" not in result.stderr
    env = {k: v for k, v in os.environ.items() if k != "BULLRQ_SCHEDULES"} | {"ALERT_BACKLOG_WAITING_SYNC": "many"}
    result = run_cli("bullrq", "scheduler", env=env, timeout=60)
    assert result.returncode == 2 and "ALERT_BACKLOG_WAITING_SYNC='many'" in result.stderr
    env = {**os.environ, "ALERT_CHANNELS": ""}
    result = run_cli("bullrq", "alerts", "test", env=env)
    assert result.returncode == 2 and "ALERT_CHANNELS is empty" in result.stderr
