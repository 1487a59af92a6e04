"""Watch tokens on Skald's side: the secret, what a token allows, token-only connections.

The token format and its checks live in the one-file helper ``skald_watch_token.py``
(stdlib only, for other applications to copy or import); this module gives it
Skald's secret: ``SKALD_WATCH_SECRET``, or, when unset, one derived from the
Flask ``SECRET_KEY`` (``HMAC-SHA256(SECRET_KEY, "skald-watch")``), so a single
deployment needs no extra setting and every web process agrees.

A Socket.IO connection made with ``auth={"watch_token": TOKEN}`` and no user is a
:class:`WatchPrincipal`: it holds no role (``is_authenticated`` False, so
``web/roles`` grants it nothing) and may only use its own token, which names
one task. The token is checked on every event, so a bad, expired or foreign
token is answered ``not_found``; a watch joined before the token expired goes
on to the task's ending.
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from settings import Settings
from skald_watch_token import CANCEL, MAX_TOKEN, WATCH, derive_secret, expires_of, mint, verify

__all__ = ["CANCEL", "WATCH", "WatchPrincipal", "current_secret", "mint", "principal_for",
           "rights", "watch_secret"]


def watch_secret(settings: Settings, secret_key: str | None = None) -> str:
    """``SKALD_WATCH_SECRET``, else derived from ``secret_key`` (default: the one
    ``web.app.secret_key`` resolves: ``SECRET_KEY`` or ``var/secret_key``)."""
    if settings.watch_secret:
        return settings.watch_secret
    if secret_key is None:
        from web.app import secret_key as resolve

        secret_key = resolve(settings)
    return derive_secret(secret_key)


def current_secret() -> str:
    """The watch secret of the running app (computed once per app)."""
    ext = current_app.extensions
    if "skald_watch_secret" not in ext:
        ext["skald_watch_secret"] = watch_secret(ext["skald"].settings, current_app.config["SECRET_KEY"])
    return ext["skald_watch_secret"]


def rights(task_id: str, token: object, secret: str | None = None) -> str | None:
    """:data:`CANCEL`, :data:`WATCH` or None: what ``token`` allows on ``task_id`` now."""
    if not isinstance(token, str) or not token:
        return None
    return verify(token, task_id, secret or current_secret())


@dataclass(frozen=True)
class WatchPrincipal:
    """A Socket.IO connection authenticated by a watch token alone (no user, no role)."""

    token: str
    name: None = None
    role: None = None
    epoch: int = 0
    session: None = None
    is_authenticated: bool = False  # roles grant nothing; the token is checked per event
    is_active: bool = True
    is_anonymous: bool = True
    is_admin: bool = False

    @property
    def id(self) -> str:
        """The key of the per-credential connection cap (``CONNECTIONS_PER_USER`` per token)."""
        return f"watch:{self.token}"

    @property
    def expires(self) -> int | None:
        return expires_of(self.token)


def principal_for(token: object) -> WatchPrincipal | None:
    """The principal of a connection's ``watch_token`` (any string up to 200 characters: its
    checks come with each event, where a bad one is ``not_found``), else None."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
        return None
    return WatchPrincipal(token)
