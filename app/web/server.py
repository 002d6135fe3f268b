"""The production HTTP server: gunicorn serving `create_app()`, configured from the environment.

`bullrq web` runs it (the Procfile's and docker-compose's web process); `bullrq web --dev` runs Werkzeug's server
instead. Gunicorn's SIGTERM is a graceful stop: requests in flight finish (up to `graceful_timeout`), then the
workers exit. With LOG_FORMAT=json its error and access logs are JSON lines like every other process's.
Each gunicorn worker process is also a candidate alert evaluator (app.alerts.evaluator), so alerts are still
evaluated while every scheduler is down.
"""

from __future__ import annotations

from gunicorn.app.base import BaseApplication

from app.config import env_number, environment
from app.logs import TEXT_FORMAT, JsonFormatter

#: seconds a request may take before gunicorn replaces its worker; and the grace given to requests on SIGTERM
TIMEOUT = 60
GRACEFUL_TIMEOUT = 30


def _log_config(log_format: str) -> dict:
    formatter = {"()": JsonFormatter} if log_format == "json" else {"format": TEXT_FORMAT}
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"main": handler},
        "root": {"level": "INFO", "handlers": ["main"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["main"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["main"], "propagate": False},
        },
    }


class WebServer(BaseApplication):
    """Gunicorn with its settings given here rather than read from a config file or its own command line."""

    def __init__(self, application, host: str, port: int, log_format: str):
        self.application = application
        env = environment()
        self.options = {
            "bind": f"{host}:{port}",
            "workers": int(env_number(env, "WEB_CONCURRENCY", 2, 1, 64, "processes")),
            "threads": int(env_number(env, "WEB_THREADS", 4, 1, 64, "threads")),
            "worker_class": "gthread",
            "timeout": TIMEOUT,
            "graceful_timeout": GRACEFUL_TIMEOUT,
            "accesslog": "-",
            # the query string may hold a user's search text: keep it, but never headers (the token is one)
            "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
            "logconfig_dict": _log_config(log_format),
            "control_socket_disable": True,  # its default path is shared by every instance of the same user
            "forwarded_allow_ips": env.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
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
