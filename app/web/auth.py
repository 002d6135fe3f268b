"""Admin authentication: a bearer token for programs, a login page and a session cookie for people.

- `Authorization: Bearer <ADMIN_TOKEN>`, compared in constant time.
- `/login` takes the token once and sets a session cookie (HttpOnly, SameSite=Strict, signed with a key derived
  from the token, so changing the token logs everyone out). A state change made with the cookie must come from
  this site (its Origin, or Referer, names this host): a page elsewhere cannot make a browser act for its user.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template_string, request, send_file, session, url_for
from flask.sessions import SecureCookieSessionInterface

from app.web.errors import ApiError

bp = Blueprint("auth", __name__)

#: the site's icon (32 x 32), asked for by every browser before anyone signs in
FAVICON = Path(__file__).parent / "static" / "favicon.ico"

_SAFE = {"GET", "HEAD", "OPTIONS"}

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bullrq · sign in</title>
<style>body{font-family:system-ui,sans-serif;max-width:26rem;margin:4rem auto}input{width:100%;padding:.5rem}
button{margin-top:1rem;padding:.5rem 1rem}.error{color:#b00020}</style></head>
<body><h1>bullrq</h1>
{% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
<form method="post" action="{{ url_for('auth.login', next=next) }}">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<button type="submit">Sign in</button></form></body></html>"""


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, without building a signer for a request that sent no cookie: every API call
    with a bearer token opened its empty session through a new itsdangerous serializer."""

    def open_session(self, app, request):
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def secret_key(token: str) -> bytes:
    """The session signing key: derived from the admin token, never the token itself."""
    return hmac.new(token.encode(), b"bullrq session", hashlib.sha256).digest()


def _token_ok(given: str) -> bool:
    return hmac.compare_digest(given.strip().encode(), current_app.config["ADMIN_TOKEN"].encode())


def _same_site() -> bool:
    source = request.headers.get("Origin") or request.headers.get("Referer") or ""
    return bool(source) and urlsplit(source).netloc == request.host


def require_token() -> None:
    """A `before_request` hook: a valid bearer token, or a signed-in session (same-site for state changes).

    It also refuses text no store can hold (NUL characters) in the query or path with a 400, before any route runs.
    """
    if "\x00" in request.path or any("\x00" in value for value in request.args.values()):
        raise ApiError(400, "invalid_request", "the request contains a NUL character")
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "unauthorized", "send the admin token as 'Authorization: Bearer <token>'")
        if not _token_ok(given):
            raise ApiError(401, "unauthorized", "the admin token is not valid")
        return
    if session.get("admin"):
        if request.method not in _SAFE and not _same_site():
            raise ApiError(403, "cross_site", "a change made with the session cookie must come from this site")
        return
    raise ApiError(401, "unauthorized", "send the admin token as 'Authorization: Bearer <token>', or sign in at /login")


def require_login():
    """A `before_request` hook for pages: people without a session are sent to the login page."""
    if request.headers.get("Authorization") or session.get("admin"):
        return require_token()
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


#: characters a browser drops from a URL (tab, newline) or reads as "/" (backslash), spaces and other controls:
#: `/\t/evil.example` would reach the browser as `//evil.example`, another site
_UNSAFE_IN_TARGET = re.compile(r"[\x00-\x20\x7f\\]")


def _local(target: str | None) -> str:
    """Only redirect within this site after signing in: a path of this site, or the overview."""
    if (target and target.startswith("/") and not target.startswith("//") and not _UNSAFE_IN_TARGET.search(target)
            and not urlsplit(target).netloc):  # fmt: skip
        return target
    return "/admin/"


@bp.get("/")
def index():
    """The site's root leads a person to the pages (the overview, through the sign-in when needed)."""
    return redirect(url_for("pages.overview"))


@bp.get("/favicon.ico")
def favicon():
    """The site's icon: public, as the login page needs it too."""
    return send_file(FAVICON, mimetype="image/vnd.microsoft.icon", max_age=86400)


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in with the admin token: sets the session cookie."""
    target = _local(request.args.get("next"))
    if request.method == "POST":
        if _token_ok(request.form.get("token", "")):
            session.clear()
            session["admin"] = True
            session.permanent = False
            return redirect(target)
        return render_template_string(LOGIN_PAGE, error="That token is not valid.", next=target), 401
    return render_template_string(LOGIN_PAGE, error=None, next=target)


@bp.post("/logout")
def logout():
    """Sign out: the session cookie is cleared."""
    session.clear()
    return redirect(url_for("auth.login"))
