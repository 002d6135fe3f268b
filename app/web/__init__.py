"""The web: the Flask app (admin API, pages, health, metrics, the mounted rq-dashboard) and how it is served.

This module is the application factory: it only wires config, shared clients and blueprints.
May import the base of `app`, the store, the runtime and scheduling; never local or the CLI.
"""

from __future__ import annotations

from flask import Flask

from app.config import ensure_admin_token, load_settings, size_limits
from app.connections import redis_from_url
from app.errors import ConfigError
from app.web import admin, alerts_api, auth, dashboard, db, errors, health, metrics, pages, schedules_api
from app.web.json import ApiJSONProvider
from app.web.limits import request_limits


class _App(Flask):
    json_provider_class = ApiJSONProvider
    session_interface = auth.CookieSessions()


def create_app(test_config: dict | None = None) -> Flask:
    """Build the web app; `test_config` overrides settings (tests pass `{"TESTING": True, ...}`).

    Raises:
        ConfigError: no admin token is configured outside dev mode (DEBUG=1 generates one into the run directory).
    """
    app = _App(__name__)
    settings = load_settings()
    app.config.from_mapping(
        SETTINGS=settings,
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        ADMIN_TOKEN=settings.admin_token or (ensure_admin_token(settings) if settings.debug else None),
        MAX_CONTENT_LENGTH=size_limits().max_request_bytes,  # 413 before a route reads the body
    )
    if test_config:
        app.config.update(test_config)
    if not app.config["ADMIN_TOKEN"]:
        raise ConfigError("ADMIN_TOKEN is not set: the admin API needs a token outside dev mode (DEBUG=1)")
    app.config.update(
        SECRET_KEY=auth.secret_key(app.config["ADMIN_TOKEN"]),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="bullrq_session",
    )
    app.extensions["bullrq.redis"] = redis_from_url(app.config["REDIS_URL"])
    db.init_app(app)
    errors.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(schedules_api.bp)
    app.register_blueprint(alerts_api.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(pages.bp)
    dashboard.init_app(app)
    app.wsgi_app = request_limits(app.wsgi_app)
    return app
