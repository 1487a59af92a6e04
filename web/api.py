"""The HTTP API of PROTOCOL.md (JSON; bearer token or a logged-in session)."""
from __future__ import annotations

import csv
import io
import time

from flask import Blueprint, Response, jsonify, request
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
    return jsonify({"jobs": jobs.list_jobs(services(), current_user, all_users, limit_arg())})


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


@bp.get("/api/jobs/<task_id>/captions")
@user_required
def get_captions(task_id: str):
    svc, job, _owner = _job_view(task_id)
    rows = jobs.captions(svc, job.id)
    fmt = request.args.get("format", "json")
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["image", "caption", "captioner", "error"])
        for r in rows:
            writer.writerow([_csv_safe(r["image"]), _csv_safe(r["caption"] or ""),
                             r["captioner"], _csv_safe(r.get("error", ""))])
        return Response(buf.getvalue(), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="captions-{task_id}.csv"'})
    if fmt != "json":
        raise ApiError("invalid", "format must be json or csv")
    return jsonify({"task_id": task_id, "captions": rows})


def _csv_safe(value: str) -> str:
    """Neutralise spreadsheet formulas in user-controlled cells (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


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
