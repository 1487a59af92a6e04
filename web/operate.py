"""Operating the cluster (PROTOCOL.md): one worker's page and detail, worker control,
limits per task type, and the broker's queues.

Reads need :data:`web.roles.VIEW_ALL` (viewers and admins), actions
:data:`web.roles.ACT_ALL` (admins; a viewer gets ``403 forbidden``). Every action
that reaches a worker is written to the audit log (web/audit.py) with its
outcome: ``ok``, ``refused: <the worker's error>`` or ``timeout``. Everything that
talks to workers or the broker goes through web/control.py.

- ``GET /api/workers/<hostname>``: what the bridge stored of the worker
  (hostname, online, last_heartbeat, active, processed, loadavg) joined with the
  worker's own answers (pool, queues, registered, stats, conf; secrets masked).
  ``404 not_found`` for a worker nobody knows, ``504 timeout`` for one that does
  not answer (its stored fields come along as ``"worker"``, for the page).
- ``POST /api/workers/<hostname>/control``: ``{"action", ...}`` -> ``200 {"ok": true,
  "reply"}``; ``409 conflict`` when the worker refuses (e.g. autoscale not enabled).
- ``POST /api/task-types/<name>/rate_limit`` and ``/time_limit``: to every worker.
- ``GET /api/queues``: every queue an online worker consumes plus the configured ones.
"""
from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify, render_template, request
from flask_login import current_user
from redis.exceptions import RedisError

from bridge import store
from web import audit, control
from web.errors import ApiError
from web.roles import ACT_ALL, VIEW_ALL, can, require
from web.services import services

bp = Blueprint("operate", __name__)

HOST_RE = re.compile(r"^[^\s/\x00-\x1f\x7f]{1,255}$")
TASK_NAME_RE = re.compile(r"^[A-Za-z0-9_.:<>-]{1,200}$")
STORED_FIELDS = ("hostname", "online", "last_heartbeat", "active", "processed", "loadavg")


# -- helpers --------------------------------------------------------------------------------------
def _stored_workers() -> list[dict[str, Any]]:
    try:
        return store.read_workers(services().redis)
    except RedisError as exc:
        raise ApiError("unavailable", "live state is unavailable; try again") from exc


def _online_count(workers: list[dict[str, Any]]) -> int | None:
    """How many replies a broadcast to all may wait for (None: wait the whole timeout)."""
    return sum(1 for w in workers if w.get("online")) or None


def _stored(hostname: str) -> dict[str, Any] | None:
    if not HOST_RE.match(hostname):
        raise ApiError("not_found", "no such worker")
    return next((w for w in _stored_workers() if w.get("hostname") == hostname), None)


def _retries(stored: dict[str, Any] | None) -> int | None:
    """The contract's one retry for a worker the bridge holds online; none for one it
    never heard of or saw go (an answer is unlikely: the page polls, so be quick)."""
    return None if stored and stored.get("online") else 0


def _fields(hostname: str, stored: dict[str, Any] | None, answered: bool) -> dict[str, Any]:
    """The bridge's fields of a worker; an answering worker the bridge never heard of
    (no events yet) is online with nothing else known."""
    if stored is None:
        return {"hostname": hostname, "online": answered, "last_heartbeat": None,
                "active": None, "processed": None, "loadavg": []}
    out = {name: stored.get(name) for name in STORED_FIELDS}
    out["online"] = bool(stored.get("online")) or answered
    return out


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError("invalid", "the body must be a JSON object")
    return body


# -- the page -----------------------------------------------------------------------------------------
@bp.get("/admin/workers/<hostname>")
@require(VIEW_ALL)
def worker_page(hostname: str):
    if not HOST_RE.match(hostname):
        raise ApiError("not_found", "no such worker")
    return render_template("worker.html", hostname=hostname, can_act=can(current_user, ACT_ALL))


# -- one worker -------------------------------------------------------------------------------------
@bp.get("/api/workers/<hostname>")
@require(VIEW_ALL)
def get_worker(hostname: str):
    """``{"worker": {...}}`` (PROTOCOL.md, "Operating the cluster")."""
    stored = _stored(hostname)
    try:
        info = control.inspect_worker(services().inspector, hostname, retries=_retries(stored))
    except control.NoReply:
        if stored is None:
            raise ApiError("not_found", "no such worker") from None
        body = ApiError("timeout", f"worker {hostname} did not answer within "
                                   f"{control.TIMEOUT:.0f} s").body()
        return jsonify({**body, "worker": _fields(hostname, stored, False)}), 504
    return jsonify({"worker": {**_fields(hostname, stored, True), **info}})


@bp.post("/api/workers/<hostname>/control")
@require(ACT_ALL)
def control_worker(hostname: str):
    """``{"action", ...}`` -> ``200 {"ok": true, "reply"}``; the action is audited."""
    body = request.get_json(silent=True)
    try:
        action, arguments = control.action_arguments(body)
    except ValueError as exc:
        raise ApiError("invalid", str(exc)) from None
    stored = _stored(hostname)
    params = {k: v for k, v in arguments.items() if v is not None}
    try:
        reply = control.control(services().inspector, hostname, action, arguments,
                                retries=_retries(stored))
    except control.NoReply:
        if stored is None:
            raise ApiError("not_found", "no such worker") from None
        audit.log(current_user.name, action, hostname, params, "timeout")
        raise ApiError("timeout", f"worker {hostname} did not answer within "
                                  f"{control.TIMEOUT:.0f} s") from None
    except control.Refused as exc:
        audit.log(current_user.name, action, hostname, params, f"refused: {exc}")
        raise ApiError("conflict", f"the worker refused: {exc}") from None
    audit.log(current_user.name, action, hostname, params, _reply_text(reply))
    return jsonify({"ok": True, "reply": reply})


def _reply_text(reply: Any) -> str:
    if isinstance(reply, dict) and isinstance(reply.get("ok"), str):
        return f"ok: {reply['ok']}"
    return "ok"


# -- limits per task type ---------------------------------------------------------------------------------
def _task_name(name: str, workers: list[dict[str, Any]]) -> None:
    """400 unless an online worker registered ``name``; 504 when no worker answers."""
    if not TASK_NAME_RE.match(name):
        raise ApiError("invalid", "not a task name")
    registered = services().inspector.ask("registered", expect=_online_count(workers))
    if not registered:
        raise ApiError("timeout", "no worker answered")
    names = {str(t).split(" ", 1)[0] for tasks in registered.values() for t in tasks or ()}
    if name not in names:
        raise ApiError("invalid", f"no online worker registered a task named {name}")


def _limit(name: str, command: str, arguments: dict[str, Any], action: str):
    workers = _stored_workers()
    _task_name(name, workers)
    try:
        replies = control.limit_task(services().inspector, command,
                                     {"task_name": name, **arguments}, _online_count(workers))
    except control.NoReply:
        audit.log(current_user.name, action, name, arguments, "timeout")
        raise ApiError("timeout", "no worker answered") from None
    refused = sorted(h for h, r in replies.items() if isinstance(r, dict) and "error" in r)
    audit.log(current_user.name, action, name, arguments,
              f"ok on {len(replies) - len(refused)}" + (f", refused on {', '.join(refused)}"
                                                         if refused else ""))
    return jsonify({"ok": True, "replies": replies})


@bp.post("/api/task-types/<name>/rate_limit")
@require(ACT_ALL)
def rate_limit(name: str):
    """``{"rate_limit": "10/m"}`` (null or "" removes the limit) on every worker."""
    body = _body()
    if set(body) != {"rate_limit"}:
        raise ApiError("invalid", 'the body must be {"rate_limit": "10/m"}')
    try:
        value = control.rate_limit_value(body["rate_limit"])
    except ValueError as exc:
        raise ApiError("invalid", str(exc)) from None
    return _limit(name, "rate_limit", {"rate_limit": value}, "rate_limit")


@bp.post("/api/task-types/<name>/time_limit")
@require(ACT_ALL)
def time_limit(name: str):
    """``{"soft"?, "hard"?}`` seconds on every worker (an absent one is cleared)."""
    try:
        limits = control.time_limit_values(_body())
    except ValueError as exc:
        raise ApiError("invalid", str(exc)) from None
    return _limit(name, "time_limit", limits, "time_limit")


# -- queues -----------------------------------------------------------------------------------------------
def configured_queues() -> list[str]:
    """The default queue plus any configured ``task_queues``."""
    conf = services().celery.conf
    names = [conf.task_default_queue or "celery"]
    for queue in conf.task_queues or ():
        name = getattr(queue, "name", None) or (queue if isinstance(queue, str) else None)
        if name and name not in names:
            names.append(name)
    return names


@bp.get("/api/queues")
@require(VIEW_ALL)
def list_queues():
    """``{"queues": [{"name", "messages", "consumers": [hostnames]}]}`` (messages null when
    the broker cannot be read)."""
    workers = _stored_workers()
    expect = _online_count(workers)
    svc = services()
    consumed = control.consumed_queues(svc.inspector, expect, retries=None if expect else 0)
    names = sorted(set(consumed) | set(configured_queues()))
    lengths = control.queue_lengths(svc.celery, names)
    return jsonify({"queues": [{"name": n, "messages": lengths.get(n), "consumers": consumed.get(n, [])}
                               for n in names]})
