"""The production HTTP server: gunicorn's arbiter over workers that buffer each request in an event loop (waitress).

`bullrq web` runs it (the Procfile's and docker-compose's web process); `bullrq web --dev` runs Werkzeug's server
instead. Why this shape: gunicorn's gthread worker hands a connection to a thread as soon as a byte arrives, and
that thread then blocks reading the rest; 8 half-sent requests took every thread and `/readyz` stopped answering.
Here each worker process reads and buffers whole requests in one event loop (waitress: headers up to
`max_request_header_size`, bodies up to MAX_REQUEST_BYTES, larger ones spooled to a temporary file), and a thread
only gets a request that is complete. Slow or idle clients cost a socket, not a thread; at WEB_CONNECTION_LIMIT
open connections a worker stops accepting (the kernel backlog holds the rest) and idle ones are closed after
WEB_IDLE_TIMEOUT seconds. Gunicorn keeps what it is good at: several processes on one port (WEB_CONCURRENCY),
restarts, logs, and a graceful SIGTERM (requests in flight finish, up to `graceful_timeout`). Each gunicorn
worker process is also a candidate alert evaluator (app.alerts.evaluator), so alerts are still evaluated while
every scheduler is down.

Errors found before the app runs (a malformed request line or header, a body over the limit) answer in the app's
JSON error shape, never a server's text page.
"""

from __future__ import annotations

import json
import logging
import os
import time

from gunicorn.app.base import BaseApplication
from gunicorn.workers.base import Worker
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

from app.config import env_number, environment, size_limits
from app.errors import ConfigError
from app.logs import TEXT_FORMAT, JsonFormatter

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("app.web.access")

#: seconds without a heartbeat before gunicorn replaces a worker; and the grace given to requests on SIGTERM
TIMEOUT = 60
GRACEFUL_TIMEOUT = 30
#: seconds the event loop waits for a socket event, and between two heartbeats to the arbiter (each a syscall, once
#: per loop turn before: a turn or more per request); SIGTERM is seen within this
LOOP_TIMEOUT = 1.0
#: seconds between two "Task queue depth" warnings of waitress (one per request queued behind busy threads otherwise)
QUEUE_WARNING_INTERVAL = 10.0
#: bytes of a request line and its headers together (431 beyond)
MAX_HEADER_BYTES = 64 * 1024


class OncePerInterval(logging.Filter):
    """Lets one record through per `interval` seconds; the next one passed counts those held back meanwhile.

    For waitress's "Task queue depth is N", which it logs for every request queued behind busy threads, from the event
    loop and holding the lock its threads take tasks with: a line per request, and a slower loop, just when a worker
    is busiest.
    """

    def __init__(self, interval: float):
        super().__init__()
        self.interval, self._next, self._held = interval, 0.0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return False
        if self._held:
            record.msg = f"{record.msg} ({self._held} more such warnings in the last {self.interval:g} s)"
        self._next, self._held = now + self.interval, 0
        return True


def _log_config(log_format: str) -> dict:
    formatter = {"()": JsonFormatter} if log_format == "json" else {"format": TEXT_FORMAT}
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "filters": {"queue_depth": {"()": OncePerInterval, "interval": QUEUE_WARNING_INTERVAL}},
        "handlers": {"main": handler},
        "root": {"level": "INFO", "handlers": ["main"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["main"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["main"], "propagate": False},
            "waitress.queue": {"filters": ["queue_depth"]},
        },
    }


class JsonErrorTask(ErrorTask):
    """waitress's answer to a request it refused before the app (400, 413, 431): our JSON error shape."""

    def execute(self):
        error = self.request.error
        code = error.reason.lower().replace(" ", "_")
        message = error.body.strip().splitlines()[0] if error.body.strip() else error.reason
        body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        access_logger.info('%s "%s" %s %d 0ms', self.channel.addr[0] if self.channel.addr else "-",
                           "(refused before the app)", error.code, len(body))  # fmt: skip


class _Channel(HTTPChannel):
    error_task_class = JsonErrorTask


def access_log(application):
    """WSGI middleware: one line per request, `client "METHOD /path?query HTTP/1.1" status bytes Nms` (the query
    string may hold a user's search text: kept; headers never: the token is one)."""

    def logged(environ, start_response):
        started, seen = time.monotonic(), {}

        def start(status, headers, exc_info=None):
            seen["status"] = status.split(" ", 1)[0]
            seen["length"] = next((v for k, v in headers if k.lower() == "content-length"), "-")
            return start_response(status, headers, exc_info)

        try:
            return application(environ, start)
        finally:
            query = environ.get("QUERY_STRING")
            line = f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}{'?' + query if query else ''} " \
                   f"{environ.get('SERVER_PROTOCOL')}"  # fmt: skip
            access_logger.info('%s "%s" %s %s %dms', environ.get("REMOTE_ADDR", "-"), repr(line)[1:-1],
                               seen.get("status"), seen.get("length"), (time.monotonic() - started) * 1000)

    return logged


class BufferingWorker(Worker):
    """A gunicorn worker that serves its share of the listening sockets with waitress's event loop and threads."""

    def run(self):
        env = environment()
        limits = size_limits(env)
        adjustments = Adjustments(
            sockets=[listener.sock for listener in self.sockets],
            threads=int(env_number(env, "WEB_THREADS", 4, 1, 64, "threads")),
            connection_limit=int(env_number(env, "WEB_CONNECTION_LIMIT", 1000, 10, 100_000, "connections")),
            channel_timeout=int(env_number(env, "WEB_IDLE_TIMEOUT", 30, 1, 3600, "seconds")),
            cleanup_interval=5,
            max_request_body_size=limits.max_request_bytes,
            max_request_header_size=MAX_HEADER_BYTES,
            asyncore_use_poll=True,  # select() stops at 1,024 descriptors
            trusted_proxy=self.cfg.forwarded_allow_ips[0] if self.cfg.forwarded_allow_ips else None,
            trusted_proxy_headers={"x-forwarded-proto"},
            clear_untrusted_proxy_headers=True,
            ident="bullrq",
        )
        socket_map: dict = {}
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(adjustments.threads)
        servers = []
        for sock in adjustments.sockets:
            server = TcpWSGIServer(access_log(self.wsgi), socket_map, _sock=sock, dispatcher=dispatcher,
                                   adj=adjustments, bind_socket=False,
                                   sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))  # fmt: skip
            server.channel_class = _Channel
            servers.append(server)
        beat = 0.0
        while self.alive:
            if time.monotonic() >= beat:
                self.notify()
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
                beat = time.monotonic() + LOOP_TIMEOUT
            wasyncore.loop(timeout=LOOP_TIMEOUT, map=socket_map, use_poll=True, count=1)
        self._drain(servers, socket_map, dispatcher)

    def _drain(self, servers: list[BaseWSGIServer], socket_map: dict, dispatcher: ThreadedTaskDispatcher) -> None:
        """Stop accepting, let requests already read finish (up to the graceful timeout), then stop the threads."""
        for server in servers:
            server.accepting = False
            server.del_channel()  # out of the map: the listening socket stays the arbiter's
        deadline = time.monotonic() + self.cfg.graceful_timeout

        def busy():
            return [c for c in socket_map.values()
                    if isinstance(c, HTTPChannel) and (c.requests or c.total_outbufs_len)]  # fmt: skip

        while busy() and time.monotonic() < deadline:
            self.notify()
            wasyncore.loop(timeout=0.2, map=socket_map, use_poll=True, count=1)
        for channel in list(socket_map.values()):
            if isinstance(channel, HTTPChannel):
                channel.close()
        dispatcher.shutdown(timeout=max(0.0, deadline - time.monotonic()))


class WebServer(BaseApplication):
    """Gunicorn with its settings given here rather than read from a config file or its own command line."""

    def __init__(self, application, host: str, port: int, log_format: str):
        self.application = application
        env = environment()
        proxies = env.get("FORWARDED_ALLOW_IPS", "127.0.0.1").strip()
        if "," in proxies:
            raise ConfigError(f"FORWARDED_ALLOW_IPS={proxies!r}: give one address (the proxy in front), or *")
        size_limits(env)  # a bad limit stops the start here, not in every worker
        self.options = {
            "bind": f"{host}:{port}",
            "workers": int(env_number(env, "WEB_CONCURRENCY", 2, 1, 64, "processes")),
            "worker_class": "app.web.server.BufferingWorker",
            "timeout": TIMEOUT,
            "graceful_timeout": GRACEFUL_TIMEOUT,
            "logconfig_dict": _log_config(log_format),
            "control_socket_disable": True,  # its default path is shared by every instance of the same user
            "forwarded_allow_ips": proxies,
            "post_worker_init": self._start_alerts,
            "worker_exit": self._stop_alerts,
        }
        self._alerts = None
        super().__init__()

    def load_config(self):
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self):
        return self.application

    def _start_alerts(self, worker) -> None:
        """In each gunicorn worker process (threads do not survive the fork): a candidate alert evaluator."""
        from app.alerts.evaluator import start_evaluator

        config = self.application.config
        self._alerts = start_evaluator(config["REDIS_URL"], config["DATABASE_URL"], "web")

    def _stop_alerts(self, server, worker) -> None:
        if self._alerts is not None:
            self._alerts.stop()
