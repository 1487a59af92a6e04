"""The operator view: the /admin page, its admin-only API, maintenance, and /metrics.

Everything here reads what the bridge stored in Redis (``bridge/store/``);
the web process writes only the maintenance flag and cancel requests (the same
``jobs.queue_cancel``, the same path as a watcher's cancel).

Reads (the page, workers, cluster, tasks) need :data:`web.roles.VIEW_ALL` (viewers
and admins), actions :data:`web.roles.ACT_ALL` (admins). Errors follow the
contract: ``401 unauthorized`` without a login, ``403 forbidden`` for a role that
may not, ``400 invalid`` for a bad query or body.
"""
from __future__ import annotations

import math
import re
import time

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from flask_login import current_user
from redis.exceptions import RedisError

import protocol
from bridge import store
from web import audit, jobs, metrics
from web.auth import user_required
from web.errors import ApiError
from web.maintenance import maintenance_status, set_maintenance
from web.roles import ACT_ALL, VIEW_ALL, can, require
from web.services import services

bp = Blueprint("admin", __name__)

MESSAGE_CAP = 500      # longest maintenance message
TASK_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,155}$")  # Celery ids: UUIDs or custom


# -- the page -----------------------------------------------------------------------------
@bp.get("/admin")
@require(VIEW_ALL)
def admin_page():
    return render_template("admin.html", states=protocol.STATES, sorts=protocol.SORTS,
                           can_act=can(current_user, ACT_ALL))


# -- cluster -------------------------------------------------------------------------------
@bp.get("/api/workers")
@require(VIEW_ALL)
def list_workers():
    """Workers as the bridge last stored them, online first."""
    return jsonify({"workers": _redis_read(store.read_workers)})


@bp.get("/api/cluster")
@require(VIEW_ALL)
def cluster_state():
    """What the page needs on load: metrics, history of the charts, recent alerts."""
    state = _redis_read(store.read_cluster)
    svc = services()
    conns = current_app.extensions.get("skald_connections")
    stored = state["metrics"]
    live = store.read_metrics(svc.redis, watchers=metrics.watchers_total(
        svc.redis, current_app.extensions["skald_report_id"], len(conns) if conns else 0))
    return jsonify({"metrics": {**stored, **live}, "history": state["history"],
                    "alerts": state["alerts"], "maintenance": maintenance_status(svc.redis)})


# -- tasks (the list and detail are web/explorer.py) -------------------------------------
@bp.post("/api/tasks/<task_id>/cancel")
@require(ACT_ALL)
def cancel_task(task_id: str):
    """Cancel any task: a caption job as its owner's cancel does; others by task id."""
    svc = services()
    if not TASK_ID_RE.match(task_id):
        raise ApiError("not_found", "no such task")
    job = owner = None
    if jobs.is_uuid(task_id):
        with svc.db() as db:
            try:
                job = jobs.find_job(db, task_id, current_user)
                owner = job.owner.name
            except ApiError:
                job = None
    if job is not None:
        jobs.request_cancel(svc, job, owner, by=current_user.name)
    else:
        record = _record(task_id)
        state = record["snapshot"].get("state")
        if state in protocol.TERMINAL_STATES:
            raise ApiError("conflict", f"the task already ended ({state})")
        jobs.queue_cancel(svc, task_id, current_user.name)
    audit.log(current_user.name, "cancel", task_id, {"caption_job": job is not None}, "queued")
    return jsonify({"task_id": task_id, "state": "CANCELLING"}), 202


def _record(task_id: str) -> dict:
    if not TASK_ID_RE.match(task_id):
        raise ApiError("not_found", "no such task")
    record = _redis_read(lambda _client: services().store.get(task_id))
    if record is None:
        raise ApiError("not_found", "no such task")
    return record


# -- maintenance ---------------------------------------------------------------------------------
@bp.get("/api/maintenance")
@user_required
def get_maintenance():
    return jsonify(_redis_read(maintenance_status))


@bp.post("/api/maintenance")
@require(ACT_ALL)
def post_maintenance():
    """Switch maintenance on or off: ``{"active", "message", "until"}`` -> 200 the new status.

    ``until`` (Unix time, optional) must lie in the future; maintenance then
    ends by itself. Every connected client is told through the message queue.
    """
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError("invalid", "the body must be a JSON object")
    unknown = set(body) - {"active", "message", "until"}
    if unknown:
        raise ApiError("invalid", f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    active = body.get("active")
    if not isinstance(active, bool):
        raise ApiError("invalid", "active must be true or false")
    message = body.get("message") or ""
    if not isinstance(message, str) or len(message) > MESSAGE_CAP:
        raise ApiError("invalid", f"message must be text of at most {MESSAGE_CAP} characters")
    until = body.get("until")
    if until is not None:
        if isinstance(until, bool) or not isinstance(until, (int, float)) or not math.isfinite(until):
            raise ApiError("invalid", "until must be a Unix time in seconds, or null")
        if active and until <= time.time():
            raise ApiError("invalid", "until must lie in the future")
    svc = services()
    try:
        status = set_maintenance(svc.redis, active, message.strip(), until)
    except RedisError as exc:
        raise ApiError("unavailable", "cannot reach Redis; try again") from exc
    current_app.extensions["socketio"].emit(protocol.MAINTENANCE_STATUS, status, namespace="/")
    audit.log(current_user.name, "maintenance_on" if active else "maintenance_off", "cluster",
              {"message": status["message"], "until": until}, "ok")
    current_app.logger.warning("maintenance %s by %s%s", "on" if active else "off",
                               current_user.name, f": {status['message']}" if status["message"] else "")
    return jsonify(status)


# -- Prometheus -------------------------------------------------------------------------------------
@bp.get("/metrics")
def prometheus():
    """Prometheus text format, no auth (scrapers); bounded labels only."""
    registry = current_app.extensions["skald_metrics_registry"]
    return Response(metrics.render(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")


# -- helpers ------------------------------------------------------------------------------------------


def _redis_read(read):
    try:
        return read(services().redis)
    except RedisError as exc:
        raise ApiError("unavailable", "live state is unavailable; try again") from exc


def init_app(app, socketio) -> None:
    """Register the blueprint, the /metrics registry and the watcher-count reporter."""
    svc = app.extensions["skald"]
    app.register_blueprint(bp)
    app.extensions["skald_metrics_registry"] = metrics.cluster_registry(svc.redis)
    report_id = app.extensions["skald_report_id"] = metrics.report_id()
    metrics.start_watcher_reporter(socketio, svc.redis, report_id,
                                   app.extensions["skald_connections"])

