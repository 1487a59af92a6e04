"""``GET /api/tasks/<task_id>/progress``: a task's progress in celery-progress's JSON shape.

celery-progress's JavaScript client (``CeleryProgressBar``) polls its Django view
for ``{"complete", "success", "progress": {"pending", "current", "total",
"percent"[, "description"]}, "result"[, "state"]}``; this answers the same, so
that client works pointed at Skald, for any task of any application and with
Skald's rights: ``?watch_token=TOKEN`` (PROTOCOL.md, "Watching any Celery task")
or a user's credentials (a caption job's owner, viewers and admins). Bad,
expired or foreign tokens are ``404 not_found``; no credentials at all ``401``.

Where the answer comes from, in order (:func:`answer`):

1. the result backend's ending (SUCCESS, FAILURE, REVOKED, RETRY, IGNORED),
   answered exactly as celery-progress's ``Progress.get_info`` answers it;
2. an ending the bridge recorded that the backend does not hold
   (``ignore_result`` tasks, a bridge-decided REVOKED);
3. progress in the backend (``update_state(state="PROGRESS", meta=...)``: its
   meta as stored, as celery-progress shows it; also any custom state whose meta
   has ``current`` and ``total``, which celery-progress calls an error);
4. progress the bridge has from ``task-progress`` events (which celery-progress
   cannot see: it shows such a task at 0 of 100 until it ends);
5. otherwise celery-progress's "unknown" progress (0 of 100, ``pending`` while
   the task has not been received).

``Cache-Control: no-store`` (celery-progress's view is ``never_cache``); a
request from an origin listed in ``CORS_ALLOWED_ORIGINS`` gets
``Access-Control-Allow-Origin``, so the bar may live on another application's page.
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from flask import Blueprint, jsonify, request
from flask_login import current_user

import protocol
from web import access
from web.errors import ApiError
from web.services import services

bp = Blueprint("progress", __name__)

_RETRY_RE = re.compile(r"Retry in \d{1,10}s")
ENDED = frozenset({"SUCCESS", "FAILURE", "REVOKED", "RETRY", "IGNORED"})


@bp.get("/api/tasks/<task_id>/progress")
def task_progress(task_id: str):
    token = request.args.get("watch_token") or None
    if token is None and not current_user.is_authenticated:
        raise ApiError("unauthorized", "log in, send a bearer token, or pass watch_token")
    if token is not None and len(token) > 200:
        raise ApiError("not_found", "no such task")
    svc = services()
    target = access.find(svc, task_id, current_user, token)
    meta = target.meta if target.record is None and target.job is None else access.backend_meta(svc, task_id)
    snap, ending = access.view(svc, target)
    response = jsonify(answer(meta, snap, ending))
    response.headers["Cache-Control"] = "no-store"
    origin = request.headers.get("Origin")
    allowed = svc.settings.cors_allowed_origins
    if origin and (origin in allowed or "*" in allowed):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


def percent(current: Any, total: Any) -> float | int:
    """celery-progress's percent: 2 decimals, computed in Decimal; 0 without a total."""
    try:
        if total > 0:
            return float(round(Decimal(current) / Decimal(total) * Decimal(100), 2))
    except (TypeError, ArithmeticError, ValueError):
        pass
    return 0


def completed() -> dict:
    """celery-progress's progress of an ended task (its fixed 100 of 100), plus the contract's
    ``description``."""
    return {"pending": False, "current": 100, "total": 100, "percent": 100, "description": ""}


def unknown(pending: bool, description: str = "") -> dict:
    return {"pending": pending, "current": 0, "total": 100, "percent": 0, "description": description}


def answer(meta: dict | None, snap: dict | None, ending: dict | None) -> dict:
    """The celery-progress-shaped answer from the backend's ``meta``, Skald's snapshot
    ``snap`` and recorded ``ending`` (each may be None); see the module's docstring."""
    status = (meta or {}).get("status")
    info = (meta or {}).get("result")
    if status in ENDED:
        return _backend_ending(status, info, meta or {})
    if ending is not None and snap is not None and snap.get("state") in protocol.TERMINAL_STATES:
        return _recorded_ending(ending)
    state = (snap or {}).get("state") or "PENDING"
    if status is not None and status not in ("PENDING", "STARTED") and isinstance(info, dict) \
            and _numbers(info):
        progress = dict(info)
        progress.setdefault("pending", False)
        progress.setdefault("percent", percent(info["current"], info["total"]))
        progress.setdefault("description", "")
        return _running(status, progress)
    if status == "STARTED" and state in ("PENDING", "RECEIVED"):
        state = "STARTED"
    step = (snap or {}).get("current_step") or ""
    if snap is not None and (snap.get("total") or snap.get("current")) \
            and snap.get("state") not in (None, "PENDING", "RECEIVED"):
        extra = snap.get("extra") if isinstance(snap.get("extra"), dict) else {}
        progress = {**extra, "pending": False, "current": snap.get("current", 0),
                    "total": snap.get("total", 0),
                    "percent": percent(snap.get("current", 0), snap.get("total", 0)),
                    "description": step}
        return _running(state, progress)
    return _running(state, unknown(state in ("PENDING", "RECEIVED"), step))


def _numbers(info: dict) -> bool:
    return all(isinstance(info.get(k), (int, float)) and not isinstance(info.get(k), bool)
               for k in ("current", "total"))


def _running(state: str, progress: dict) -> dict:
    return {"state": state, "complete": False, "success": None, "progress": progress, "result": None}


def _done(state: str, success: bool | None, result: Any) -> dict:
    return {"state": state, "complete": True, "success": success, "progress": completed(),
            "result": result}


def _backend_ending(status: str, info: Any, meta: dict) -> dict:
    """As celery-progress's ``Progress.get_info`` answers a ready, retried or ignored task."""
    if status == "SUCCESS":
        return _done(status, True, info)
    if status == "FAILURE":
        return _done(status, False, str(info))
    if status == "REVOKED":
        return _done(status, False, "Task " + str(info))
    if status == "RETRY":
        found = _RETRY_RE.search(meta.get("traceback") or "")
        seconds: int | str = int(found.group()[9:-1]) if found else "Unknown"
        return _done(status, False, {"next_retry_seconds": seconds, "message": f"{str(info)[0:50]}..."})
    return _done(status, None, str(info))  # IGNORED


def _recorded_ending(ending: dict) -> dict:
    """From the ending the bridge recorded (the backend holds none)."""
    payload = ending.get("payload") or {}
    state = payload.get("state")
    if state == "SUCCESS":
        results = payload.get("results") or {}
        return _done(state, True, results.get("result") if "result" in results else results)
    if state == "FAILURE":
        return _done(state, False, str((payload.get("error") or {}).get("message", "")))
    return _done("REVOKED", False, "Task terminated" if payload.get("terminated") else "Task revoked")
