"""rq-dashboard, mounted at /api/admin/queues behind the admin login, reading jobs with the JSON serializer."""

from __future__ import annotations

import rq_dashboard
from flask import Flask, request
from rq.serializers import JSONSerializer
from rq_dashboard.web import config as dashboard_config
from rq_dashboard.web import setup_rq_connection

from app.web.auth import require_login

URL_PREFIX = "/api/admin/queues"


def init_app(app: Flask) -> None:
    dashboard_config.serializer = JSONSerializer  # its default would unpickle whatever Redis holds
    app.config.setdefault("RQ_DASHBOARD_REDIS_URL", app.config["REDIS_URL"])
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
    setup_rq_connection(app)

    @app.before_request
    def dashboard_login():
        if request.blueprint == rq_dashboard.blueprint.name:
            return require_login()
        return None
