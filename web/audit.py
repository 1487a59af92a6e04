"""The audit log: every operator action, who took it, on what, and how it went.

One writer (:func:`record`, called by each action's route in the same database
transaction as the action's own writes when it has any) and one reader
(``GET /api/audit``, newest first, cursor-paged). The log is bounded: past
:data:`KEEP` entries the oldest are pruned as new ones arrive.
"""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, jsonify, request
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tasks.models import AuditEntry
from web.api import limit_arg
from web.errors import ApiError
from web.roles import VIEW_ALL, require
from web.services import services

bp = Blueprint("audit", __name__)

KEEP = 100_000          # entries kept; the oldest go first
PARAMS_CAP = 4096       # characters of an action's parameters kept in its entry
PRUNE_EVERY = 100       # prune when an entry's id is a multiple of this (cheap, bounded)


def record(db: Session, user: str, action: str, target: str = "",
           params: dict[str, Any] | None = None, result: str = "ok") -> None:
    """Add one entry to ``db`` (committed with the caller's transaction)."""
    text = json.dumps(params or {}, sort_keys=True, default=str)
    if len(text) > PARAMS_CAP:
        text = json.dumps({"truncated": text[:PARAMS_CAP]})
    entry = AuditEntry(user=user, action=action, target=str(target)[:255],
                       params=text, result=str(result)[:2000])
    db.add(entry)
    db.flush()
    if entry.id % PRUNE_EVERY == 0:
        db.execute(delete(AuditEntry).where(AuditEntry.id <= entry.id - KEEP))


def log(user: str, action: str, target: str = "", params: dict[str, Any] | None = None,
        result: str = "ok") -> None:
    """:func:`record` in a transaction of its own, for actions with no database writes."""
    with services().db() as db:
        record(db, user, action, target, params, result)
        db.commit()


def as_dict(entry: AuditEntry) -> dict[str, Any]:
    try:
        params = json.loads(entry.params or "{}")
    except ValueError:
        params = {"raw": entry.params}
    return {"id": entry.id, "at": entry.at, "user": entry.user, "action": entry.action,
            "target": entry.target, "params": params, "result": entry.result}


def page(db: Session, limit: int, cursor: int | None = None,
         action: str | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """Entries newest first; the cursor is the last id seen (stable while new ones arrive)."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if cursor is not None:
        query = query.where(AuditEntry.id < cursor)
    if action:
        query = query.where(AuditEntry.action == action)
    rows = list(db.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return [as_dict(r) for r in rows], (rows[-1].id if more and rows else None)


def count(db: Session) -> int:
    return int(db.scalar(select(func.count(AuditEntry.id))) or 0)


@bp.get("/api/audit")
@require(VIEW_ALL)
def list_audit():
    """``{"entries": [{at, user, action, target, params, result}], "next_cursor"}``."""
    raw = request.args.get("cursor") or None
    cursor = None
    if raw is not None:
        if not raw.isdigit() or len(raw) > 18:
            raise ApiError("invalid", "cursor must be a value from next_cursor")
        cursor = int(raw)
    action = request.args.get("action") or None
    if action is not None and len(action) > 64:
        raise ApiError("invalid", "action is at most 64 characters")
    with services().db() as db:
        entries, next_cursor = page(db, limit_arg(default=50, cap=500), cursor, action)
    return jsonify({"entries": entries,
                    "next_cursor": None if next_cursor is None else str(next_cursor)})
