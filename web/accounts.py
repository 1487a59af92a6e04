"""User accounts: creation, API tokens, roles and credential epochs, and the broadcast
that tells every web process a user's credentials changed.

A user's ``auth_epoch`` is the generation of their credentials: revoking or
rotating the API token, a role change and "log out everywhere" bump it, and
every login session and Socket.IO connection made under an older epoch stops
working (``web/sessions.py`` checks sessions, ``web/connections.py`` connections).
The change is also published on :data:`AUTH_CHANNEL`, so every web process drops
the connections it affects at once instead of at its next periodic check.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from dataclasses import dataclass, field

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.models import ROLES, User
from web.passwords import hash_password

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
AUTH_CHANNEL = "skald:auth"  # {"user_id", "session"?}: re-check that user's connections now
TOKEN_MAX = 256              # longer bearer strings are refused unread


class AccountError(ValueError):
    """A user account operation that cannot be done (name taken, bad name, no such user...)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the web process sees it (no ORM object kept).

    ``epoch`` is the user's ``auth_epoch`` when these credentials were checked;
    ``session`` is the hash of the login session it came from (None: an API token);
    ``cookie`` is set only on a fresh login: what the session cookie must carry.
    """

    id: int
    name: str
    role: str
    epoch: int = 0
    session: str | None = None
    cookie: str | None = field(default=None, repr=False, compare=False)
    is_authenticated: bool = True
    is_active: bool = True
    is_anonymous: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def via(self) -> str:
        return "session" if self.session else "token"

    def get_id(self) -> str:
        """What Flask-Login keeps in the session cookie (see ``web/sessions.py``)."""
        return self.cookie or str(self.id)

    @classmethod
    def of(cls, user: User, session: str | None = None) -> Principal:
        return cls(id=user.id, name=user.name, role=user.role, epoch=user.auth_epoch or 0,
                   session=session)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "sk_" + secrets.token_urlsafe(32)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"a role is one of {', '.join(ROLES)}")
    return role


def create_user(db: Session, name: str, password: str | None = None,
                admin: bool = False, role: str = "user") -> tuple[User, str]:
    """Create a user; returns it and its API token (shown once, stored hashed).
    ``admin=True`` is ``role="admin"``."""
    role = check_role("admin" if admin else role)
    if not NAME_RE.match(name or ""):
        raise AccountError("a user name is 1-64 letters, digits, '.', '_' or '-'")
    if db.scalar(select(User).where(User.name == name)) is not None:
        raise AccountError(f"user {name!r} already exists")
    token = new_token()
    user = User(name=name, role=role, token_hash=token_hash(token), auth_epoch=0,
                password_hash=hash_password(password) if password else None)
    db.add(user)
    db.flush()
    return user, token


def find_user(db: Session, name: str) -> User:
    user = db.scalar(select(User).where(User.name == name))
    if user is None:
        raise AccountError(f"no user {name!r}")
    return user


def bump_epoch(user: User) -> int:
    """End every session and connection made with the user's current credentials."""
    user.auth_epoch = (user.auth_epoch or 0) + 1
    return user.auth_epoch


def rotate_token(db: Session, name: str, revoke_only: bool = False) -> tuple[User, str | None]:
    """Replace (or just revoke) a user's API token; returns the user and the new token.
    The epoch is bumped: what the old token (or any login) opened is closed."""
    user = find_user(db, name)
    token = None if revoke_only else new_token()
    user.token_hash = token_hash(token) if token else None
    bump_epoch(user)
    return user, token


def set_role(db: Session, name: str, role: str) -> tuple[User, bool]:
    """Give ``name`` the ``role``; returns the user and whether it changed (epoch bumped)."""
    role = check_role(role)
    user = find_user(db, name)
    if user.role == role:
        return user, False
    user.role = role
    bump_epoch(user)
    return user, True


def user_for_token(db: Session, token: str) -> User | None:
    if not token or len(token) > TOKEN_MAX:
        return None
    return db.scalar(select(User).where(User.token_hash == token_hash(token)))


def announce(client: redis.Redis, user_id: int, session: str | None = None) -> None:
    """Tell every web process to re-check ``user_id``'s connections now (best effort:
    each process also re-checks every connection every ``AUTH_SWEEP_SECONDS``)."""
    message = {"user_id": user_id, **({"session": session} if session else {})}
    try:
        client.publish(AUTH_CHANNEL, json.dumps(message))
    except redis.RedisError as exc:
        log.warning("could not announce the credential change of user %s: %s "
                    "(connections are re-checked within AUTH_SWEEP_SECONDS)", user_id, exc)
