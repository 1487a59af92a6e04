"""Login sessions, one row per browser login, and the checks that keep credentials current.

Flask-Login keeps ``<user id>:<secret>`` in the signed session cookie; the
database keeps only the SHA-256 of the secret (``auth_sessions``). Every request
looks its session up in one indexed query joined with the user: the row must
exist, be younger than ``SESSION_MAX_AGE``, and carry the user's current
``auth_epoch``. Logging out deletes the row, so a copy of the cookie taken
earlier is worth nothing afterwards; a bumped epoch ends every login at once.

:func:`still_current` checks many principals in two queries (the periodic sweep
of open Socket.IO connections).
"""
from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tasks.models import AuthSession, User
from web.accounts import Principal

CHUNK = 500              # ids per IN (...) query
SESSIONS_PER_USER = 100  # logins kept per user (bounded table)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def open_session(db: Session, user: User, max_age: float) -> Principal:
    """Record a new login for ``user``; returns its principal (``cookie`` is what the
    session cookie must carry). Expired logins are dropped on the way, and a user
    keeps at most :data:`SESSIONS_PER_USER` (the oldest go first)."""
    now = time.time()
    db.execute(delete(AuthSession).where(AuthSession.created_at < now - max_age))
    secret = secrets.token_urlsafe(32)
    row = AuthSession(id=_hash(secret), user_id=user.id, epoch=user.auth_epoch or 0,
                      created_at=now)
    db.add(row)
    db.flush()
    oldest = select(AuthSession.id).where(AuthSession.user_id == user.id) \
        .order_by(AuthSession.created_at.desc()).offset(SESSIONS_PER_USER)
    db.execute(delete(AuthSession).where(AuthSession.id.in_(oldest.scalar_subquery())))
    return Principal(id=user.id, name=user.name, role=user.role, epoch=row.epoch,
                     session=row.id, cookie=f"{user.id}:{secret}")


def principal_for_cookie(db: Session, cookie: str, max_age: float) -> Principal | None:
    """The principal of a session cookie's ``<user id>:<secret>``, if that login is current."""
    uid, _, secret = (cookie or "").partition(":")
    if not uid.isdigit() or not secret or len(secret) > 128:
        return None
    row = db.execute(select(User, AuthSession.epoch, AuthSession.created_at)
                     .join(AuthSession, AuthSession.user_id == User.id)
                     .where(AuthSession.id == _hash(secret), User.id == int(uid))).first()
    if row is None:
        return None
    user, epoch, created = row
    if epoch != (user.auth_epoch or 0) or time.time() - created >= max_age:
        return None
    return Principal.of(user, session=_hash(secret))


def end_session(db: Session, session: str) -> None:
    """Log one session out (``session``: the stored hash, ``Principal.session``)."""
    db.execute(delete(AuthSession).where(AuthSession.id == session))


def restamp(db: Session, session: str, epoch: int) -> None:
    """Carry one session over to a new epoch (the session that asked for the change)."""
    row = db.get(AuthSession, session)
    if row is not None:
        row.epoch = epoch


def still_current(db: Session, principals: Sequence[Principal], max_age: float) -> list[bool]:
    """For each principal, whether its credentials still hold: the user exists with the
    same role, and either its login session still exists at the user's current epoch
    (a session principal) or the user's epoch is unchanged (an API token)."""
    user_ids = sorted({p.id for p in principals})
    session_ids = sorted({p.session for p in principals if p.session})
    users: dict[int, tuple[int, str]] = {}
    for start in range(0, len(user_ids), CHUNK):
        for uid, epoch, role in db.execute(select(User.id, User.auth_epoch, User.role)
                                           .where(User.id.in_(user_ids[start:start + CHUNK]))):
            users[uid] = (epoch or 0, role)
    logins: dict[str, tuple[int, int, float]] = {}
    for start in range(0, len(session_ids), CHUNK):
        for sid, uid, epoch, created in db.execute(
                select(AuthSession.id, AuthSession.user_id, AuthSession.epoch, AuthSession.created_at)
                .where(AuthSession.id.in_(session_ids[start:start + CHUNK]))):
            logins[sid] = (uid, epoch, created)
    now = time.time()
    out = []
    for p in principals:
        user = users.get(p.id)
        if user is None or user[1] != p.role:
            ok = False
        elif p.session:  # the login must still exist at the user's epoch (it may be restamped)
            login = logins.get(p.session)
            ok = (login is not None and login[0] == p.id and login[1] == user[0]
                  and now - login[2] < max_age)
        else:  # an API token: any credential change since the check ends it
            ok = user[0] == p.epoch
        out.append(ok)
    return out
