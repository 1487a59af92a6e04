"""The HTTP API of PROTOCOL.md (JSON; bearer token or a logged-in session)."""
from __future__ import annotations

import time

from flask import Blueprint, jsonify, request
from flask_login import current_user
from redis.exceptions import RedisError

from web import jobs
from web.auth import user_required
from web.errors import ApiError
from web.maintenance import maintenance_status
from web.roles import VIEW_ALL, check, may_act_on
from web.services import services
from web.uploads import remove_stored, save_uploads

bp = Blueprint("api", __name__)


def limit_arg(default: int = 100, cap: int = 1000) -> int:
    """The ``?limit=`` query argument (1..cap), or ``invalid``."""
    raw = request.args.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError("invalid", "limit must be an integer") from None
    if not 1 <= value <= cap:
        raise ApiError("invalid", f"limit must be between 1 and {cap}")
    return value


def _check_upload_rate(user_id: int) -> None:
    svc = services()
    key = f"skald:uploads:{user_id}:{int(time.time() // 60)}"
    try:
        pipe = svc.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, 120)
        count = pipe.execute()[0]
    except RedisError:
        return  # the limit is a courtesy; Redis trouble shows up elsewhere
    if count > svc.settings.uploads_per_minute:
        raise ApiError("rate_limited",
                       f"at most {svc.settings.uploads_per_minute} uploads per minute; wait a moment")


@bp.post("/api/jobs")
@user_required
def submit_job():
    svc = services()
    status = maintenance_status(svc.redis)
    if status["active"]:
        raise ApiError("maintenance", status["message"] or "Skald is in maintenance; try later")
    _check_upload_rate(current_user.id)
    stored = save_uploads(request.files.getlist("images"), svc.settings)
    try:
        job = jobs.create_and_submit(svc, current_user.id, current_user.name, stored)
    except ApiError:
        remove_stored(stored)
        raise
    return jsonify({"task_id": job.task_id, "job_id": job.id, "total": job.total,
                    "state": "PENDING"}), 202


@bp.get("/api/jobs")
@user_required
def list_jobs():
    all_users = request.args.get("all") in ("1", "true", "yes")
    if all_users:
        check(current_user, VIEW_ALL)
    before = request.args.get("cursor") or None
    if before is not None and not (before.isdigit() and len(before) < 19):
        raise ApiError("invalid", "cursor must be a next_cursor of a previous page")
    search = (request.args.get("q") or "").strip()[:200] or None
    found, next_cursor = jobs.list_jobs(services(), current_user, all_users, limit_arg(),
                                        before=int(before) if before else None, search=search)
    return jsonify({"jobs": found, "next_cursor": next_cursor})


def _job_view(task_id: str):
    svc = services()
    with svc.db() as db:
        job = jobs.find_job(db, task_id, current_user)
        owner = job.owner.name
    return svc, job, owner


@bp.get("/api/jobs/<task_id>")
@user_required
def get_job(task_id: str):
    svc, job, owner = _job_view(task_id)
    return jsonify(jobs.live_snapshot(job, owner, jobs.fetch_record(svc, task_id)))


@bp.post("/api/jobs/<task_id>/cancel")
@user_required
def cancel_job(task_id: str):
    svc, job, owner = _job_view(task_id)
    if not may_act_on(current_user, job.owner_id):
        raise ApiError("forbidden", "only the job's owner or an admin may cancel it")
    jobs.request_cancel(svc, job, owner, by=current_user.name)
    return jsonify({"task_id": task_id, "state": "CANCELLING"}), 202


@bp.get("/healthz")
def healthz():
    svc = services()
    try:
        svc.redis.ping()
        status = maintenance_status(svc.redis)
    except RedisError as exc:
        return jsonify({"ok": False, "redis": False, "error": str(exc)}), 503
    return jsonify({"ok": True, "redis": True, "maintenance": status["active"],
                    "maintenance_message": status["message"]})
