"""The product's own pages (what rq-dashboard lacks): queue pause controls, schedules, history charts, job search.

One page at /admin/; it reads and changes everything through the admin API with the session cookie.
"""

from __future__ import annotations

from flask import Blueprint, render_template

from app.web.auth import require_login

bp = Blueprint("pages", __name__, url_prefix="/admin", template_folder="templates", static_folder="static",
               static_url_path="/static")  # fmt: skip
bp.before_request(require_login)


@bp.get("/")
def overview():
    """Queues, schedules, history and job search on one page."""
    return render_template("admin.html")
