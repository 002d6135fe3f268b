"""The production web server (`bullrq web`) over real sockets: slow and idle clients cannot starve it, and what it
refuses before the app runs is answered in the API's JSON error shape."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.local.servers import free_port
from tests.conftest import TOKEN
from tests.fixtures import wait_for

PROJECT = Path(__file__).resolve().parent.parent
#: seconds: the product's promise for /readyz while slow clients hold connections
PROBE_BOUND = 1.0

pytestmark = pytest.mark.slow


class Web:
    def __init__(self, process: subprocess.Popen, port: int, log: Path):
        self.process, self.port, self.log = process, port, log

    def connect(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def exchange(self, raw: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
        """Send raw bytes on a new connection; the status, headers and body of the answer."""
        with self.connect(timeout) as sock:
            sock.sendall(raw)
            return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    reader = sock.makefile("rb")
    status = reader.readline()
    assert status.startswith(b"HTTP/1."), status
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", 0)))
    return int(status.split()[1]), headers, body


@pytest.fixture
def web(redis_url, database_url, tmp_path):
    """`bullrq web` with its production server and default concurrency, on a free loopback port."""
    port, log = free_port(), tmp_path / "web.log"
    env = {k: v for k, v in os.environ.items() if k != "DEBUG"}
    env.update(REDIS_URL=redis_url, DATABASE_URL=database_url, ADMIN_TOKEN=TOKEN, BULLRQ_HOME=str(tmp_path / "home"),
               BULLRQ_DOTENV=str(tmp_path / "no.env"), LOG_FORMAT="text", MAX_REQUEST_BYTES="65536",
               WEB_IDLE_TIMEOUT="3")  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "app.cli.main", "web", "--port", str(port)], cwd=PROJECT,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    server = Web(process, port, log)
    try:

        def ready():
            assert process.poll() is None, log.read_text()
            try:
                return server.exchange(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout=60, interval=0.2, message="the web server to be ready")
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def probe(web: Web) -> float:
    """Seconds /readyz took to answer 200 on a new connection (connect to last byte); fails past PROBE_BOUND."""
    started = time.monotonic()
    with web.connect(timeout=PROBE_BOUND) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, body = read_response(sock)
    took = time.monotonic() - started
    assert status == 200, body
    return took


def test_readyz_answers_within_a_second_while_idle_and_half_sent_requests_hold_connections(web):
    held = []
    try:
        for _ in range(200):  # connected, nothing sent
            held.append(web.connect())
        half_sent = []
        for _ in range(16):  # headers and 1 byte of a declared 100-byte body
            sock = web.connect()
            sock.sendall(b"POST /api/admin/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                         + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")  # fmt: skip
            half_sent.append(sock)
        held += half_sent
        time.sleep(1)  # the server has read what they sent
        took = [probe(web) for _ in range(5)]
        assert max(took) < PROBE_BOUND, took
        # a held request that completes is answered: it was buffered, not dropped
        rest = b'"type": "system.ping", "options": {"queue": "sync"}}'
        half_sent[0].sendall(rest.ljust(99))
        status, headers, body = read_response(half_sent[0])
        assert status == 201 and json.loads(body)["queue"] == "sync", body
    finally:
        for sock in held:
            sock.close()


def test_idle_connections_are_closed_after_the_idle_timeout(web):
    with web.connect(timeout=30) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""  # WEB_IDLE_TIMEOUT=3: closed by the server, not by our timeout
        assert time.monotonic() - started < 25


def error_of(status: int, headers: dict, body: bytes) -> dict:
    assert headers["content-type"].startswith("application/json"), (status, headers, body)
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "details"}
    return error


def test_refusals_before_the_app_runs_are_json(web):
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    # a control character in a header value
    bad_header = b"GET /api/admin/jobs HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n"
    status, headers, body = web.exchange(bad_header + auth + b"\r\n")
    assert status == 400 and error_of(status, headers, body)["code"] == "bad_request"
    # a malformed request line
    status, headers, body = web.exchange(b"GET\r\n\r\n")
    assert status == 400 and error_of(status, headers, body)
    # headers over the limit
    status, headers, body = web.exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert status == 431 and error_of(status, headers, body)
    # a path and query string over the limit
    status, headers, body = web.exchange(b"GET /api/admin/jobs?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n" + auth
                                         + b"\r\n")  # fmt: skip
    assert status == 414 and error_of(status, headers, body)["code"] == "uri_too_long"


def test_a_body_over_max_request_bytes_is_refused_413_before_it_is_read(web):
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    with web.connect() as sock:  # declared too large: answered without sending the body
        sock.sendall(b"POST /api/admin/jobs HTTP/1.1\r\nHost: x\r\n" + auth
                     + b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n")  # fmt: skip
        status, headers, body = read_response(sock)
    assert status == 413 and error_of(status, headers, body)
    chunk = b"a" * 40_000
    chunked = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    status, headers, body = web.exchange(b"POST /api/admin/jobs HTTP/1.1\r\nHost: x\r\n" + auth
                                         + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         + chunked * 2 + b"0\r\n\r\n")  # fmt: skip
    assert status == 413 and error_of(status, headers, body)
    assert "Traceback" not in web.log.read_text()


def test_job_creations_from_many_keep_alive_clients_at_once_all_succeed_and_are_audited(web, database_url):
    """More clients than the server's threads: requests queue behind busy threads. Every one is created and audited,
    the first requests of each worker share one PostgreSQL pool (a pool per thread was opened, then dropped with a
    traceback), and waitress's "Task queue depth" warning comes at most once per interval per worker, not per
    request."""
    import http.client
    import threading

    import psycopg

    clients, each = 16, 10
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    body = json.dumps({"type": "system.ping", "data": {}, "options": {"queue": "harvest"}})
    statuses: list[int] = []
    start = threading.Barrier(clients)

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
        start.wait(timeout=30)
        for _ in range(each):
            connection.request("POST", "/api/admin/jobs", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201] * clients * each
    with psycopg.connect(database_url) as conn:
        audited = conn.execute("SELECT count(*) FROM audit_log WHERE path = '/api/admin/jobs'").fetchone()[0]
    assert audited == clients * each
    log = web.log.read_text()
    assert "Traceback" not in log
    assert log.count("Task queue depth") <= 2 * 2  # a first warning per worker, a second past QUEUE_WARNING_INTERVAL


def test_once_per_interval_passes_one_record_per_interval_and_counts_those_held_back(monkeypatch):
    import logging

    from app.web import server

    now = [100.0]
    monkeypatch.setattr(server.time, "monotonic", lambda: now[0])
    once = server.OncePerInterval(10)

    def record():
        return logging.LogRecord("waitress.queue", logging.WARNING, __file__, 1, "Task queue depth is %d", (3,), None)

    first = record()
    assert once.filter(first) and first.getMessage() == "Task queue depth is 3"
    assert [once.filter(record()) for _ in range(5)] == [False] * 5
    now[0] += 10
    passed = record()
    assert once.filter(passed)
    assert passed.getMessage() == "Task queue depth is 3 (5 more such warnings in the last 10 s)"
