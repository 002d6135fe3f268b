"""rq-dashboard, mounted at /api/admin/queues behind the admin login, reading jobs with the JSON serializer.

It reads Redis through the app's own client (`bullrq.redis`): left alone, rq-dashboard builds a new client, with a
new connection pool, on every request, and knows none of bullrq's timeouts.

rq-dashboard 0.9 puts job fields into its pages unescaped (underscore's `<%= %>`: a stored XSS, open in its
tracker), so every string in its JSON is HTML-escaped on the way out: job data shows as text, never as markup.
"""

from __future__ import annotations

import html
import json

import rq_dashboard
import rq_dashboard.web
from flask import Flask, Response, current_app, request
from rq.serializers import JSONSerializer
from rq_dashboard.web import config as dashboard_config
from rq_dashboard.web import setup_rq_connection

from app.config import redact
from app.web.auth import require_login

URL_PREFIX = "/api/admin/queues"


def init_app(app: Flask) -> None:
    dashboard_config.serializer = JSONSerializer  # its default would unpickle whatever Redis holds
    # only shown (in its navigation bar): the connection is `_app_client`
    app.config.setdefault("RQ_DASHBOARD_REDIS_URL", redact(app.config["REDIS_URL"]))
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
    # the name its connection code calls, at setup and per request (rq-dashboard is pinned: a test on the
    # Sentinel deployment fails if this stops taking effect, since the URL it is given is redacted)
    rq_dashboard.web.from_url = _app_client
    with app.app_context():
        setup_rq_connection(app)

    @app.before_request
    def dashboard_login():
        if request.blueprint == rq_dashboard.blueprint.name:
            return require_login()
        return None

    @app.after_request
    def dashboard_escape(response: Response) -> Response:
        if request.blueprint == rq_dashboard.blueprint.name and response.is_json:
            response.set_data(json.dumps(_escaped(response.get_json())))
        return response


def _app_client(url: str, **_options) -> tuple[None, object]:
    """Stands in for Redis-Sentinel-Url's `connect`: (no sentinel manager, the app's client)."""
    return None, current_app.extensions["bullrq.redis"]


def _escaped(value):
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    if isinstance(value, dict):
        return {key: _escaped(item) for key, item in value.items()}
    return value
