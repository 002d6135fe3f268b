"""The web path under load: `bullrq web` (the real server, its default processes and threads) answering
`POST /api/admin/jobs` to several clients at once, each on its own keep-alive connection, as a web tier in front
of bullrq would call it. Measures creations/s and the latency each client saw; every answer must be 201.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app.local.servers import free_port

#: concurrent clients, creations/s and p99 milliseconds the web path must reach (issue 18)
CLIENTS = 8
RATE_TARGET = 1_500
P99_TARGET_MS = 20.0
START_TIMEOUT = 60
BODY = json.dumps({"type": "system.ping", "data": {}, "options": {"queue": "harvest"}})


class WebLoadError(Exception):
    """The web server did not start, or answered something but 201."""


@dataclass
class WebLoad:
    clients: int
    requests: int
    seconds: float
    rate: float
    p50: float  #: milliseconds
    p99: float
    max: float


class _Server:
    def __init__(self, logs: Path):
        self.port, self.token, self.log = free_port(), secrets.token_urlsafe(24), logs / "web.log"
        self.home = logs / "web-home"

    def __enter__(self) -> _Server:
        env = {**os.environ, "ADMIN_TOKEN": self.token, "BULLRQ_HOME": str(self.home)}
        env.pop("DEBUG", None)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli.main", "web", "--port", str(self.port)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise WebLoadError(f"bullrq web did not answer /healthz: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def _healthy(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(requests: int, logs: Path, clients: int = CLIENTS) -> WebLoad:
    """`requests` job creations spread over `clients` threads, after a warm-up of each connection."""
    with _Server(logs) as server:
        headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
        per_client = max(1, requests // clients)
        latencies: list[list[float]] = [[] for _ in range(clients)]
        failures: list[str] = []
        ready = threading.Barrier(clients + 1)

        def client(n: int) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                for _ in range(10):  # warm-up: the connection, the server thread, its Redis connection
                    _post(connection, headers)
                ready.wait(timeout=START_TIMEOUT)
                for _ in range(per_client):
                    started = time.perf_counter()
                    status = _post(connection, headers)
                    latencies[n].append((time.perf_counter() - started) * 1000)
                    if status != 201:
                        failures.append(f"answered {status}")
                        return
            except threading.BrokenBarrierError:
                pass  # another client failed first: its failure is the one reported
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                ready.abort()
            finally:
                connection.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        try:
            ready.wait(timeout=START_TIMEOUT)
        except threading.BrokenBarrierError:
            pass
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - start
    if failures:
        raise WebLoadError(f"{len(failures)} client(s) failed, first: {failures[0]}")
    ms = sorted(value for per in latencies for value in per)
    return WebLoad(clients, len(ms), seconds, len(ms) / seconds, ms[len(ms) // 2], ms[int(len(ms) * 0.99)], ms[-1])


def _post(connection: http.client.HTTPConnection, headers: dict) -> int:
    connection.request("POST", "/api/admin/jobs", body=BODY, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status
