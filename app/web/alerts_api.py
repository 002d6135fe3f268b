"""The admin API of alerts: `GET /api/admin/alerts`, the open ones, those about to open and the recent ones."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from app.alerts import store
from app.web.auth import require_token
from app.web.db import get_db
from app.web.errors import ApiError
from app.web.params import refuse_unknown_query

bp = Blueprint("admin_alerts", __name__, url_prefix="/api/admin")
bp.before_request(require_token)
bp.before_request(refuse_unknown_query)

#: recent alerts listed at most
MAX_RECENT = 500


@bp.get("/alerts")
def alerts():
    """Open and pending alerts, and those cleared in the last 24 hours (at most `limit`, default 50)."""
    raw = request.args.get("limit", "50")
    if not raw.isdigit() or not 0 <= int(raw) <= MAX_RECENT:
        raise ApiError(400, "invalid_request", f"limit must be a whole number from 0 to {MAX_RECENT}")
    return jsonify(store.list_alerts(get_db(), recent_limit=int(raw)))
