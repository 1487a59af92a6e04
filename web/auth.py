"""Who is calling: session login (Flask-Login), API tokens, and user accounts."""
from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from urllib.parse import urlsplit

from flask import Blueprint, Flask, redirect, render_template, request, url_for
from flask_login import LoginManager, current_user, login_user, logout_user
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from tasks.models import ROLES, User
from web.errors import ApiError
from web.services import services

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

bp = Blueprint("auth", __name__)
login_manager = LoginManager()


class AccountError(ValueError):
    """A user account operation that cannot be done (name taken, bad name...)."""


@dataclass(frozen=True)
class Principal:
    """The logged-in user as the web process sees it (no ORM object kept)."""

    id: int
    name: str
    is_admin: bool
    is_authenticated: bool = True
    is_active: bool = True
    is_anonymous: bool = False

    def get_id(self) -> str:
        return str(self.id)

    @classmethod
    def of(cls, user: User) -> Principal:
        return cls(id=user.id, name=user.name, is_admin=user.is_admin)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "sk_" + secrets.token_urlsafe(32)


def create_user(db: Session, name: str, password: str | None = None,
                admin: bool = False, role: str = "user") -> tuple[User, str]:
    """Create a user; returns it and its API token (shown once, stored hashed).
    ``admin=True`` is ``role="admin"``."""
    role = "admin" if admin else role
    if role not in ROLES:
        raise AccountError(f"a role is one of {', '.join(ROLES)}")
    if not NAME_RE.match(name or ""):
        raise AccountError("a user name is 1-64 letters, digits, '.', '_' or '-'")
    if db.scalar(select(User).where(User.name == name)) is not None:
        raise AccountError(f"user {name!r} already exists")
    token = new_token()
    user = User(name=name, role=role, token_hash=token_hash(token),
                password_hash=generate_password_hash(password) if password else None)
    db.add(user)
    db.flush()
    return user, token


def rotate_token(db: Session, name: str, revoke_only: bool = False) -> str | None:
    """Replace (or just revoke) a user's API token; returns the new one."""
    user = db.scalar(select(User).where(User.name == name))
    if user is None:
        raise AccountError(f"no user {name!r}")
    token = None if revoke_only else new_token()
    user.token_hash = token_hash(token) if token else None
    return token


def user_for_token(db: Session, token: str) -> User | None:
    if not token or len(token) > 256:
        return None
    return db.scalar(select(User).where(User.token_hash == token_hash(token)))


def user_for_password(db: Session, name: str, password: str) -> User | None:
    user = db.scalar(select(User).where(User.name == name))
    if user is None or not user.password_hash:
        # Spend the same time as a real check so names cannot be probed.
        check_password_hash(_DUMMY_HASH, password or "")
        return None
    return user if check_password_hash(user.password_hash, password or "") else None


_DUMMY_HASH = generate_password_hash("not-a-password")


def principal_for_token(token: str) -> Principal | None:
    with services().db() as db:
        user = user_for_token(db, token)
        return Principal.of(user) if user else None


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


@login_manager.user_loader
def _load_user(user_id: str) -> Principal | None:
    try:
        uid = int(user_id)
    except (TypeError, ValueError):
        return None
    with services().db() as db:
        user = db.get(User, uid)
        return Principal.of(user) if user else None


@login_manager.request_loader
def _load_from_request(req) -> Principal | None:
    token = bearer_token()
    return principal_for_token(token) if token else None


@login_manager.unauthorized_handler
def _unauthorized():
    if request.path.startswith("/api/"):
        raise ApiError("unauthorized", "log in or send 'Authorization: Bearer TOKEN'")
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def user_required(view: Callable) -> Callable:
    @wraps(view)
    def wrapper(*args, **kwargs):
        if not current_user.is_authenticated:
            return login_manager.unauthorized()
        return view(*args, **kwargs)
    return wrapper


def admin_required(view: Callable) -> Callable:
    @wraps(view)
    def wrapper(*args, **kwargs):
        if not current_user.is_authenticated:
            return login_manager.unauthorized()
        if not current_user.is_admin:
            raise ApiError("forbidden", "admins only")
        return view(*args, **kwargs)
    return wrapper


def _safe_next(target: str | None) -> str:
    if not target:
        return url_for("pages.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("pages.index")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    nxt = request.values.get("next")
    if request.method == "POST":
        name = (request.form.get("username") or "").strip()
        password = request.form.get("password") or ""
        with services().db() as db:
            user = user_for_password(db, name, password)
            principal = Principal.of(user) if user else None
        if principal is None:
            return render_template("login.html", error="Wrong user name or password.",
                                   next=nxt), 401
        login_user(principal)
        return redirect(_safe_next(nxt))
    return render_template("login.html", error=None, next=nxt)


@bp.route("/logout", methods=["POST"])
def logout():
    logout_user()
    return redirect(url_for("auth.login"))


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    app.register_blueprint(bp)
