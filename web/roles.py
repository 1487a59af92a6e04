"""Roles and what they may do (PROTOCOL.md, "Roles"), and the checks routes and events use.

- ``user``: submit jobs; see, watch and act on their own jobs.
- ``viewer``: what a user may, plus read everything an operator reads
  (:data:`VIEW_ALL`: operator pages and APIs, the admin room, any task).
- ``admin``: everything, including every action on anything (:data:`ACT_ALL`).

HTTP routes use :func:`require` (``@require(VIEW_ALL)``, ``@require(ACT_ALL)``, or
``@require()`` for any signed-in user); a Socket.IO handler passes ``needs=`` to
the event wrapper in ``web/sockets.py`` or calls :func:`check`. Without
credentials the answer is ``401 unauthorized`` (a page redirects to the login);
a role that may not act gets ``403 forbidden``; a resource the caller may not see
answers ``404 not_found`` (the caller's business, e.g. ``web/jobs.find_job``).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import abort
from flask_login import current_user

from tasks.models import ROLES
from web.errors import ApiError, wants_json

USER, VIEWER, ADMIN = ROLES
VIEW_ALL = "view_all"   # read every operator page, API and room; watch any task
ACT_ALL = "act_all"     # act on anything: control, cancel/terminate/retry/apply, maintenance

GRANTS: dict[str, frozenset[str]] = {
    USER: frozenset(),
    VIEWER: frozenset({VIEW_ALL}),
    ADMIN: frozenset({VIEW_ALL, ACT_ALL}),
}
REFUSALS = {VIEW_ALL: "operators only (viewer or admin)", ACT_ALL: "admins only"}


def can(user: Any, permission: str) -> bool:
    """Whether ``user`` (a Principal, or anything with ``role``) holds ``permission``."""
    if not getattr(user, "is_authenticated", False):
        return False
    return permission in GRANTS.get(getattr(user, "role", ""), frozenset())


def may_act_on(user: Any, owner_id: int | None) -> bool:
    """Whether ``user`` may change a resource owned by ``owner_id`` (their own, or an admin)."""
    if not getattr(user, "is_authenticated", False):
        return False
    return (owner_id is not None and user.id == owner_id) or can(user, ACT_ALL)


def check(user: Any, permission: str, code: str = "forbidden") -> None:
    """Raise ``ApiError(code)`` unless ``user`` holds ``permission``.

    ``code`` is ``forbidden`` by the contract; ``join_admin_dashboard`` keeps
    answering ``unauthorized`` to a plain user (PROTOCOL.md, Socket.IO table).
    """
    if not can(user, permission):
        raise ApiError(code, REFUSALS.get(permission, "not allowed"))


def require(permission: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator of a Flask view: signed in, and holding ``permission`` when given."""
    def deco(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                from web.auth import login_manager

                return login_manager.unauthorized()
            if permission is not None and not can(current_user, permission):
                if wants_json():
                    raise ApiError("forbidden", REFUSALS.get(permission, "not allowed"))
                abort(403)
            return view(*args, **kwargs)
        return wrapper
    return deco
