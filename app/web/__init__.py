"""The Flask application factory: it only wires config, shared clients and blueprints."""

from __future__ import annotations

from flask import Flask

from app.config import load_settings
from app.connections import redis_from_url
from app.web import db, health


def create_app(test_config: dict | None = None) -> Flask:
    """Build the web app; `test_config` overrides settings (tests pass `{"TESTING": True, ...}`)."""
    app = Flask(__name__)
    settings = load_settings()
    app.config.from_mapping(SETTINGS=settings, REDIS_URL=settings.redis_url, DATABASE_URL=settings.database_url)
    if test_config:
        app.config.update(test_config)
    app.extensions["bullrq.redis"] = redis_from_url(app.config["REDIS_URL"])
    db.init_app(app)
    app.register_blueprint(health.bp)
    return app
