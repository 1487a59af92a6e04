"""Who is calling: browser logins (Flask-Login over ``web/sessions.py``) and API tokens.

- ``Authorization: Bearer TOKEN`` authenticates a request by itself. When the
  header is present the session cookie is never consulted, so a bad token is
  ``401`` even beside a valid cookie (and CSRF is skipped only for a token that
  authenticated; see ``web/app.py``).
- Otherwise the session cookie names a login session, checked on every request.
- ``/login`` is rate limited per client IP and per user name with backoff
  (``web/loginlimit.py``); the password hash runs off the event loop
  (``web/passwords.py``).
- ``/account`` shows the caller's role and issues a new API token (shown once).
"""
from __future__ import annotations

import logging
import math
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, make_response, redirect, render_template, request, url_for
from flask_login import LoginManager, current_user, login_user, logout_user
from sqlalchemy import select

from tasks.models import User
from web import sessions
from web.accounts import (
    NAME_RE,
    TOKEN_MAX,
    AccountError,
    Principal,
    announce,
    bump_epoch,
    create_user,
    new_token,
    token_hash,
    user_for_token,
)
from web.errors import ApiError
from web.loginlimit import LoginLimiter, Policy
from web.passwords import verify_password
from web.roles import ACT_ALL, require
from web.services import services

__all__ = ["AccountError", "Principal", "create_user", "bearer_token", "has_bearer",
           "user_required", "admin_required", "login_manager", "init_app"]

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)
login_manager = LoginManager()
user_required = require()          # any signed-in user
admin_required = require(ACT_ALL)  # kept for routes written before roles


def has_bearer() -> bool:
    """Whether the request carries an ``Authorization: Bearer`` header (valid or not)."""
    return request.headers.get("Authorization", "")[:7].lower() == "bearer "


def bearer_token() -> str | None:
    if not has_bearer():
        return None
    return request.headers.get("Authorization", "")[7:].strip() or None


def principal_for_token(token: str) -> Principal | None:
    if not token or len(token) > TOKEN_MAX:
        return None
    with services().db() as db:
        user = user_for_token(db, token)
        return Principal.of(user) if user else None


@login_manager.user_loader
def _load_user(cookie: str) -> Principal | None:
    if has_bearer():  # with a Bearer header, the cookie is never used
        return None
    svc = services()
    with svc.db() as db:
        return sessions.principal_for_cookie(db, cookie, svc.settings.session_max_age)


@login_manager.request_loader
def _load_from_request(_req: Any) -> Principal | None:
    token = bearer_token()
    return principal_for_token(token) if token else None


@login_manager.unauthorized_handler
def _unauthorized():
    if request.path.startswith("/api/"):
        raise ApiError("unauthorized", "log in or send 'Authorization: Bearer TOKEN'")
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _safe_next(target: str | None) -> str:
    """A local path to go to after login, else the start page (never another site,
    never a header-breaking character)."""
    home = url_for("pages.index")
    if not target or len(target) > 2000:
        return home
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target) or "\\" in target:
        return home
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return home
    return target


def _limiter() -> LoginLimiter:
    return current_app.extensions["skald_login_limiter"]


@bp.route("/login", methods=["GET", "POST"])
def login():
    nxt = request.values.get("next")
    if request.method != "POST":
        return render_template("login.html", error=None, next=nxt)
    name = (request.form.get("username") or "").strip()[:200]
    password = request.form.get("password") or ""
    ip = request.remote_addr or "unknown"
    wait = _limiter().retry_after(ip, name)
    if wait > 0:
        return _too_many(wait, nxt)
    svc = services()
    with svc.db() as db:
        user = db.scalar(select(User).where(User.name == name)) if NAME_RE.match(name) else None
        stored = user.password_hash if user else None
    log.info("login attempt for %r from %s", name[:64], ip)
    if not verify_password(stored, password):
        wait = _limiter().failed(ip, name)
        return render_template("login.html", error="Wrong user name or password.", next=nxt), 401
    _limiter().succeeded(ip, name)
    with svc.db() as db:
        principal = sessions.open_session(db, db.get(User, user.id), svc.settings.session_max_age)
        db.commit()
    login_user(principal)
    return redirect(_safe_next(nxt))


def _too_many(wait: float, nxt: str | None):
    seconds = max(1, math.ceil(wait))
    page = render_template("login.html", next=nxt,
                           error=f"Too many failed attempts. Try again in {seconds} s.")
    response = make_response(page, 429)
    response.headers["Retry-After"] = str(seconds)
    return response


@bp.route("/logout", methods=["POST"])
def logout():
    principal = current_user
    if principal.is_authenticated and principal.session:
        svc = services()
        with svc.db() as db:
            sessions.end_session(db, principal.session)
            db.commit()
        announce(svc.redis, principal.id, session=principal.session)
    logout_user()
    return redirect(url_for("auth.login"))


@bp.get("/account")
@user_required
def account():
    return render_template("account.html", token=None, notice=None)


@bp.post("/account/token")
@user_required
def account_token():
    """A new API token for the caller, shown once; the old one and every connection or
    other login it (or any earlier credential) opened stop working."""
    token = new_token()
    _change_credentials(lambda user: setattr(user, "token_hash", token_hash(token)))
    response = make_response(render_template(
        "account.html", token=token,
        notice="Your new API token is below; it is shown only this once. The old one no "
               "longer works."))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/account/logout-others")
@user_required
def account_logout_others():
    """End every other login and every connection of the caller (this login stays)."""
    _change_credentials(lambda _user: None)
    return render_template("account.html", token=None,
                           notice="Every other login and connection of yours was ended.")


def _change_credentials(change) -> None:
    """Apply ``change`` to the caller's user row and bump the epoch; the caller's own
    login session is carried over to the new epoch; every web process is told.
    Only a browser login may (scripts rotate with ``python -m web user token``)."""
    if not current_user.session:
        raise ApiError("forbidden", "the account page acts for a browser login only")
    svc = services()
    with svc.db() as db:
        user = db.get(User, current_user.id)
        change(user)
        epoch = bump_epoch(user)
        sessions.restamp(db, current_user.session, epoch)
        db.commit()
    announce(svc.redis, current_user.id)


def init_app(app: Flask) -> None:
    settings = app.extensions["skald"].settings
    app.extensions["skald_login_limiter"] = LoginLimiter(
        app.extensions["skald"].redis,
        by_ip=Policy(free=settings.login_ip_free, cap=settings.login_backoff_max,
                     window=settings.login_window),
        by_name=Policy(free=settings.login_user_free, cap=settings.login_backoff_max,
                       window=settings.login_window))
    login_manager.init_app(app)
    app.register_blueprint(bp)
