"""The task explorer: ``GET /api/tasks`` (filters, sort, cursor), ``GET /api/tasks/<id>``
(the full kept detail) and the task's page ``/admin/tasks/<id>``.

Reads only: the index and records the bridge keeps (the store's read side,
``bridge/store/``). Viewers and admins (:data:`web.roles.VIEW_ALL`); the page
shows the actions (web/taskactions.py) to admins only.
"""
from __future__ import annotations

import math
import re

from flask import Blueprint, jsonify, render_template, request
from flask_login import current_user
from redis.exceptions import RedisError

import protocol
from bridge.store.explorer import Explorer, Query, decode_cursor
from web.api import limit_arg
from web.control import SIGNALS
from web.errors import ApiError
from web.roles import ACT_ALL, VIEW_ALL, can, require
from web.services import services

bp = Blueprint("explorer", __name__)

TASK_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,155}$")  # Celery ids: UUIDs or custom
FACET_CAP = 200    # longest name or worker filter (the bridge keeps names this long)
QUERY_CAP = 155    # longest free-text query


def _time_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError("invalid", f"{name} must be a Unix time in seconds") from None
    if not math.isfinite(value):
        raise ApiError("invalid", f"{name} must be a Unix time in seconds")
    return value


def _text_arg(name: str, cap: int) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > cap:
        raise ApiError("invalid", f"{name} is at most {cap} characters")
    return raw


def parse_query() -> Query:
    """The explorer's query from the request's arguments, or ``400 invalid``."""
    args = request.args
    state = args.get("state") or None
    if state is not None and state not in protocol.STATES:
        raise ApiError("invalid", f"state must be one of {', '.join(protocol.STATES)}")
    sort = args.get("sort") or "received"
    if sort not in protocol.SORTS:
        raise ApiError("invalid", f"sort must be one of {', '.join(protocol.SORTS)}")
    order = args.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise ApiError("invalid", "order must be asc or desc")
    cursor = None
    if args.get("cursor"):
        try:
            cursor = decode_cursor(args["cursor"][:1000])
        except ValueError:
            raise ApiError("invalid", "cursor is not one this server gave") from None
    q = (_text_arg("q", QUERY_CAP) or "").strip().lower() or None
    return Query(state=state, name=_text_arg("name", FACET_CAP), worker=_text_arg("worker", FACET_CAP),
                 received_after=_time_arg("received_after"),
                 received_before=_time_arg("received_before"), q=q, sort=sort,
                 desc=order == "desc", limit=limit_arg(default=100, cap=1000), cursor=cursor)


@bp.get("/api/tasks")
@require(VIEW_ALL)
def list_tasks():
    """A page of tasks: ``{"tasks", "next_cursor", "examined", "truncated"}``.

    Filters ``state``, ``name``, ``worker``, ``received_after`` / ``received_before``
    (Unix s), ``q`` (id, args, kwargs, result, exception); ``sort`` (received,
    started, updated, runtime, name, state; default received), ``order`` (desc);
    ``limit`` (100, at most 1000); ``cursor`` from the previous page. Each request
    looks at :data:`bridge.store.explorer.EXAMINE_CAP` candidates at most
    (``truncated``: it stopped there; follow ``next_cursor``).
    """
    query = parse_query()
    svc = services()
    try:
        if query.q and query.cursor is None and TASK_ID_RE.match(query.q) and len(query.q) >= 32:
            record = svc.store.get(request.args["q"].strip())
            if record is not None:  # a whole task id: that task, at once
                return jsonify({"tasks": [protocol.record_row(record)], "next_cursor": None,
                                "examined": 1, "truncated": False})
        page = Explorer(svc.redis, svc.store).page(query)
    except RedisError as exc:
        raise ApiError("unavailable", "live state is unavailable; try again") from exc
    return jsonify({"tasks": page.tasks, "next_cursor": page.next_cursor,
                    "examined": page.examined, "truncated": page.truncated})


def find_record(task_id: str) -> dict:
    """The stored record of ``task_id``, or ``404 not_found`` (``503`` without Redis)."""
    if not TASK_ID_RE.match(task_id):
        raise ApiError("not_found", "no such task")
    try:
        record = services().store.get(task_id)
    except RedisError as exc:
        raise ApiError("unavailable", "live state is unavailable; try again") from exc
    if record is None:
        raise ApiError("not_found", "no such task")
    return record


def task_detail(record: dict) -> dict:
    """Everything kept of a task: its row, the detail fields, and the ending's error."""
    ending = record.get("ending") or {}
    error = (ending.get("payload") or {}).get("error")
    detail = record.get("detail") or {}
    out = {**protocol.record_row(record), **detail, "error": error, "ending": ending.get("event")}
    out["received"] = detail.get("received_at") or detail.get("seen_at")
    out["started"] = detail.get("started_at")
    out["succeeded"] = detail.get("succeeded_at")
    # PROTOCOL.md's "failed" time; a caption job's "failed" is its count of unread images
    # (the snapshot field), so its time is only under "failed_at".
    out.setdefault("failed", detail.get("failed_at"))
    out.setdefault("retries", 0)
    for key in ("kwargs", "result", "traceback", "exception", "eta", "expires",
                "parent_id", "root_id", "queue"):
        out.setdefault(key, None)
    return out


@bp.get("/api/tasks/<task_id>")
@require(VIEW_ALL)
def get_task(task_id: str):
    """``{"task": detail}``: args and kwargs (as the worker's events had them, up to 64 KB
    each), result, exception and traceback, retries, eta, expires, parent and root ids,
    queue, and the received / started / succeeded / failed times."""
    return jsonify({"task": task_detail(find_record(task_id))})


@bp.get("/admin/tasks/<task_id>")
@require(VIEW_ALL)
def task_page(task_id: str):
    """The task's own page: its detail, and terminate / retry for admins."""
    task = task_detail(find_record(task_id))
    return render_template("task.html", task=task, signals=SIGNALS,
                           can_act=can(current_user, ACT_ALL),
                           ended=task["state"] in protocol.TERMINAL_STATES)
